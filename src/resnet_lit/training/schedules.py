"""The learning-rate schedule: its settings, the arithmetic behind it, and ``configure_training``,
which builds the optimiser (training/optimizers.py) and the schedule for ``configure_optimizers``.

The settings are plain data and the arithmetic pure functions, so a schedule can be checked at any
iteration without a Trainer (``lr_factor(31_999, ...)``) and a checkpoint carries its recipe as plain
values. ``build_scheduler`` turns them into torch objects, from numbers read off the Trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from resnet_lit.lightning_private import load_train_data
from resnet_lit.training.optimizers import OptimizerConfig, build_optimizer, scaled_lr

__all__ = [
    "ScheduleConfig", "global_batch_size", "global_batch_of", "steps_per_epoch", "lr_factor", "build_scheduler",
    "configure_training", "check_warmup",
]


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule.

    Args:
        kind: ``step`` (divide by 1/``gamma`` at each milestone: the paper's), ``plateau``
            (divide when ``val/error`` stops improving for ``patience`` epochs: the paper's
            ImageNet wording), ``cosine`` (to zero at the end of training) or ``constant``.
        milestones: where ``step`` divides, in ``unit``s: [32000, 48000] iterations for CIFAR,
            [30, 60] epochs for ImageNet.
        unit: ``step`` (optimiser steps, as the paper's CIFAR schedule) or ``epoch``.
        gamma: factor applied at each milestone or plateau.
        warmup_steps: optimiser steps of warm-up before the schedule proper (ResNet-110/1202: 400).
        warmup_epochs: the warm-up in epochs instead (timm RSB: 5, FFCV: 2): the same share of
            training at any global batch. Give one of the two.
        warmup_mode: ``constant`` (train at ``warmup_factor`` x lr, then jump: the paper's) or
            ``linear`` (ramp from ``warmup_factor`` x lr to lr).
        warmup_factor: fraction of the lr used during warm-up (0.1: 0.01 for lr 0.1).
        patience: epochs without improvement before ``plateau`` divides.
        steps_at_batch: the global batch this config's step counts are stated for (the paper's
            CIFAR schedule: 128). At another global batch G every step count is read as the same
            number of images: ``trainer.max_steps``, ``milestones`` in steps, ``warmup_steps`` and
            the EMA's cadence and decay are multiplied by ``steps_at_batch / G`` (``training/scale.py``),
            so the file trains the same epochs on 1 GPU and on 256. ``null``: step counts are taken
            as they are, whatever the global batch (a recipe stated in epochs needs nothing).
    """

    kind: Literal["step", "plateau", "cosine", "constant"] = "step"
    milestones: list[int] = field(default_factory=lambda: [30, 60])
    unit: Literal["step", "epoch"] = "epoch"
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_mode: Literal["constant", "linear"] = "constant"
    warmup_factor: float = 0.1
    patience: int = 5
    steps_at_batch: int | None = None

    def __post_init__(self) -> None:
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"schedule.milestones must be increasing, got {self.milestones}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"schedule.gamma must be in (0, 1], got {self.gamma}")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_epochs < 0:
            raise ValueError(f"schedule.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_steps and self.warmup_epochs:
            raise ValueError(f"schedule.warmup_steps {self.warmup_steps} and schedule.warmup_epochs "
                             f"{self.warmup_epochs}: give one of the two (set the other to 0)")
        if self.steps_at_batch is not None and self.steps_at_batch < 1:
            raise ValueError(f"schedule.steps_at_batch must be >= 1 or null, got {self.steps_at_batch}")

    @property
    def needs_total_steps(self) -> bool:
        return self.kind == "cosine"

    @property
    def needs_steps_per_epoch(self) -> bool:
        return (self.kind == "step" and self.unit == "epoch") or self.warmup_epochs > 0

    @property
    def has_warmup(self) -> bool:
        return self.kind != "plateau" and (self.warmup_steps > 0 or self.warmup_epochs > 0)

    def step_factor(self, global_batch: int | None) -> float:
        """What one stated step is worth in optimiser steps at ``global_batch``: ``steps_at_batch /
        global_batch``, or 1 without ``steps_at_batch`` (or without a known global batch)."""
        if self.steps_at_batch is None or global_batch is None:
            return 1.0
        return self.steps_at_batch / global_batch

    def steps(self, stated: float, global_batch: int | None) -> int:
        """A stated step count at ``global_batch`` (the same images; at least 1 where it was)."""
        if not stated:
            return 0
        return max(1, round(stated * self.step_factor(global_batch)))

    def warmup_steps_at(self, global_batch: int | None, steps_per_epoch: int | None) -> int:
        """The warm-up in optimiser steps at this scale."""
        if self.warmup_epochs:
            return max(1, round(self.warmup_epochs * _need(steps_per_epoch, "steps_per_epoch")))
        return self.steps(self.warmup_steps, global_batch)

    def milestones_at(self, global_batch: int | None, steps_per_epoch: int | None) -> list[int]:
        """The milestones in optimiser steps at this scale (``step`` schedules)."""
        if self.unit == "epoch":
            per_epoch = _need(steps_per_epoch, "steps_per_epoch")
            return [round(m * per_epoch) for m in self.milestones]
        return [self.steps(m, global_batch) for m in self.milestones]


def global_batch_size(per_device: int, devices: int = 1, num_nodes: int = 1, accumulate: int = 1) -> int:
    """Images per optimiser step across the whole job."""
    return per_device * devices * num_nodes * accumulate


def steps_per_epoch(batches_per_epoch: int | float, accumulate: int = 1) -> int:
    """Optimiser steps in one epoch of ``batches_per_epoch`` training batches: Lightning steps every
    ``accumulate`` batches and once more at an epoch's end on a partial accumulation."""
    if batches_per_epoch == float("inf"):
        raise ValueError("schedule.unit 'epoch' needs a training loader with a length; use schedule.unit 'step'")
    return max(1, math.ceil(int(batches_per_epoch) / accumulate))


def lr_factor(step: int, schedule: ScheduleConfig, total_steps: int | None = None,
              steps_per_epoch: int | None = None, global_batch: int | None = None) -> float:
    """Multiplier of the (scaled) base lr after ``step`` optimiser steps.

    ``total_steps`` is needed by ``cosine``; ``steps_per_epoch`` by milestones and warm-up in epochs;
    ``global_batch`` converts step counts stated at ``schedule.steps_at_batch``.
    ``plateau`` is handled by ``ReduceLROnPlateau``: only its warm-up lives here.
    """
    warmup = schedule.warmup_steps_at(global_batch, steps_per_epoch)
    if step < warmup:
        if schedule.warmup_mode == "constant":
            return schedule.warmup_factor
        return schedule.warmup_factor + (1 - schedule.warmup_factor) * step / warmup
    if schedule.kind in ("constant", "plateau"):
        return 1.0
    if schedule.kind == "step":
        passed = sum(step >= m for m in schedule.milestones_at(global_batch, steps_per_epoch))
        return schedule.gamma**passed
    if schedule.kind == "cosine":
        total = _need(total_steps, "total_steps")
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule.kind {schedule.kind!r}: use step, plateau, cosine or constant")


def _need(value: int | None, name: str) -> int:
    if value is None:
        raise ValueError(f"this schedule needs {name}")
    return value


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: ScheduleConfig,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
    global_batch: int | None = None,
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: the optimiser and its schedule, stepped every optimiser
    step (``plateau``: every epoch, on ``val/error``)."""
    if schedule.kind == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=schedule.gamma, patience=schedule.patience
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": "val/error", "interval": "epoch"}}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule, total_steps, steps_per_epoch, global_batch)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

def configure_training(model: nn.Module, cfg: OptimizerConfig, schedule: ScheduleConfig, trainer: Any) -> Any:
    """What ``configure_optimizers`` returns: the optimiser over ``model``'s parameter groups (frozen ones
    left out, the backbone at ``backbone_lr_scale``) at the lr scaled to the global batch, and the schedule.
    Prints the global batch and the lr it uses."""
    from lightning.pytorch.utilities import rank_zero_info

    from resnet_lit.training.finetune import param_groups

    per_device = _per_device_batch(trainer)
    batch = global_batch_of(trainer)
    check_warmup(cfg, schedule, batch)
    lr = scaled_lr(cfg.lr, cfg.reference_batch, batch, cfg.scaling)
    ratio = {"linear": f" x {batch}/{cfg.reference_batch}", "sqrt": f" x sqrt({batch}/{cfg.reference_batch})",
             "none": " (scaling none)"}[cfg.scaling]
    rank_zero_info(
        f"global batch {batch} = {per_device} per device x {trainer.num_devices} device(s) x "
        f"{trainer.num_nodes} node(s) x {trainer.accumulate_grad_batches} accumulation; "
        f"lr {lr:.6g} = {cfg.lr:g}{ratio}"
    )
    groups = param_groups(model, lr, cfg.backbone_lr_scale, cfg.weight_decay, cfg.no_decay_bn_bias)
    optimizer = build_optimizer(cfg, groups, lr, next(model.parameters()).device)
    if schedule.kind == "plateau" and (schedule.warmup_steps or schedule.warmup_epochs):
        rank_zero_info("schedule.warmup_steps / warmup_epochs are ignored by the plateau schedule")
    total = int(trainer.estimated_stepping_batches) if schedule.needs_total_steps else None
    per_epoch = None
    if schedule.needs_steps_per_epoch:  # from the loader's length: max_steps may end the run early
        if trainer.train_dataloader is None:  # a run bounded by max_steps alone
            load_train_data(trainer)
        per_epoch = steps_per_epoch(trainer.num_training_batches, trainer.accumulate_grad_batches)
    return build_scheduler(optimizer, schedule, total, per_epoch, batch)


# Goyal et al. 2017 (section 2.2): a jump straight to the linearly scaled lr diverges early in
# training once the global batch is several times the reference; a gradual warm-up fixes it.
NO_WARMUP_MAX_RATIO = 8


def check_warmup(cfg: OptimizerConfig, schedule: ScheduleConfig, global_batch: int) -> None:
    """Refuse a global batch over ``NO_WARMUP_MAX_RATIO`` x the lr's reference batch when the lr is
    scaled up to it without a gradual warm-up (one line saying what to add)."""
    ratio = global_batch / cfg.reference_batch
    if cfg.scaling == "none" or ratio <= NO_WARMUP_MAX_RATIO or schedule.kind == "plateau":
        return
    if schedule.has_warmup and schedule.warmup_mode == "linear":
        return
    lr = scaled_lr(cfg.lr, cfg.reference_batch, global_batch, cfg.scaling)
    what = "a constant warm-up jumps to it" if schedule.has_warmup else "no warm-up"
    raise ValueError(
        f"global batch {global_batch} is {ratio:g}x optimizer.reference_batch {cfg.reference_batch}: lr {lr:.4g} "
        f"({cfg.scaling} scaling) with {what} diverges early (Goyal et al. 2017). Add a gradual warm-up: "
        "--model.schedule.warmup_epochs 5 --model.schedule.warmup_mode linear (or lower the global batch)."
    )


def global_batch_of(trainer: Any) -> int:
    """The global batch of ``trainer``'s fit: per-device batch x devices x nodes x accumulation."""
    return global_batch_size(_per_device_batch(trainer), trainer.num_devices, trainer.num_nodes,
                             trainer.accumulate_grad_batches)


def _per_device_batch(trainer: Any) -> int:
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and getattr(datamodule, "batch_size", None):
        return int(datamodule.batch_size)
    loader = trainer.train_dataloader if trainer.train_dataloader is not None else None
    size = getattr(loader, "batch_size", None)
    if size:
        return int(size)
    raise ValueError("cannot tell the per-device batch size: give the DataModule a `batch_size` attribute")
