"""Fine-tuning helpers: freeze the first stages of a ResNet, build optimiser parameter groups, and
keep frozen batch norms out of ``sync_batchnorm``.

Plain functions on the backbone (`ImageClassifier.model`), so they work on any of our nets
(and on torchvision's ResNets, which share the names `conv1, bn1, layer1..layer4, fc`).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, get_args

import torch
from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn

log = logging.getLogger("resnet_lit")

Freeze = Literal["none", "stem", "stage1", "stage2", "stage3", "stage4", "backbone"]  # --model.freeze
FREEZE_CHOICES: tuple[str, ...] = get_args(Freeze)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode whatever `.train()` is called with.

    Lightning (and anyone) calls `model.train()` at the start of every training epoch; a plain
    frozen BN would then update its running statistics again. Same parameters, buffers and
    state-dict keys as `nn.BatchNorm2d` (unlike torchvision.ops.FrozenBatchNorm2d, which drops
    `num_batches_tracked`), so checkpoints of frozen and unfrozen models are interchangeable.
    """

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        return super().train(False)


class SyncUnfrozenBatchNorm(TorchSyncBatchNorm):
    """Lightning's ``sync_batchnorm`` plugin for every batch norm but the frozen ones.

    Lightning's own (``SyncBatchNorm.convert_sync_batchnorm``) replaces every batch norm, a
    ``FrozenBatchNorm2d`` too, with a new ``SyncBatchNorm``: the next ``.train()`` puts it in training
    mode and its running statistics move (and DDP on CPUs refuses any ``SyncBatchNorm``). A frozen
    batch norm has nothing to synchronise, so it stays as it is. ``ImageClassifier.setup`` puts this
    plugin in the place of Lightning's when a run both freezes and sets ``sync_batchnorm``.
    """

    def apply(self, model: nn.Module) -> nn.Module:
        if isinstance(model, FrozenBatchNorm2d):
            return model
        if isinstance(model, nn.modules.batchnorm._BatchNorm):
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        for name, child in model.named_children():
            model.add_module(name, self.apply(child))
        return model


def _frozen_prefixes(model: nn.Module, freeze: str) -> list[str]:
    """Names of the top-level children that `freeze` covers."""
    stages = list(getattr(model, "stage_names",
                          None) or [n for n, _ in model.named_children() if n.startswith("layer")])
    valid = ("none", "stem", *(f"stage{i + 1}" for i in range(len(stages))), "backbone")
    if freeze not in valid:
        raise ValueError(
            f"freeze={freeze!r} is not valid for this {len(stages)}-stage net; use one of {', '.join(valid)}"
        )
    if freeze == "none":
        return []
    stem = [n for n, _ in model.named_children() if n not in stages and n != "fc"]
    if freeze == "backbone":
        return stem + stages
    if freeze == "stem":
        return stem
    return stem + stages[: int(freeze.removeprefix("stage"))]


def apply_freeze(model: nn.Module, freeze: str = "none") -> list[str]:
    """Freeze the stem and stages up to `freeze` ("none" | "stem" | "stage1".."stage4" | "backbone",
    the last meaning everything except `fc`); returns the frozen parameter names.

    Frozen parameters get `requires_grad=False`, and every BatchNorm2d inside the frozen part becomes
    a `FrozenBatchNorm2d` in eval mode: its running statistics and affine parameters never change,
    even after `.train()`. State-dict keys are unchanged. Call it after loading the initial weights
    and before the optimiser is built; `none` changes nothing.
    """
    prefixes = _frozen_prefixes(model, freeze)
    frozen: list[str] = []
    for prefix in prefixes:
        part = model.get_submodule(prefix)
        for name, p in part.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
        for m in part.modules():
            if type(m) is nn.BatchNorm2d:  # same object, narrower behaviour: hooks, compile and keys survive
                m.__class__ = FrozenBatchNorm2d
            if isinstance(m, FrozenBatchNorm2d):
                m.eval()
    if prefixes:
        log.info("freeze=%s: %d parameter tensors frozen (%s), their batch norms in eval mode",
                 freeze, len(frozen), ", ".join(prefixes))
    return frozen


def _is_head(name: str, head_prefixes: tuple[str, ...]) -> bool:
    return name.startswith(head_prefixes)


def param_groups(
    model: nn.Module,
    lr: float,
    backbone_lr_scale: float = 1.0,
    weight_decay: float = 0.0,
    no_decay_bn_bias: bool = False,
    head_prefixes: tuple[str, ...] = ("fc.",),
) -> list[dict[str, Any]]:
    """Optimiser parameter groups for `model` (parameters with `requires_grad=False` are left out).

    The head (`fc`) trains at `lr`, the backbone at `lr * backbone_lr_scale` (fine-tuning keeps
    pretrained features by moving them more slowly). With `no_decay_bn_bias`, BN weights/biases and
    all biases get weight decay 0 (Goyal et al. 2017), the rest `weight_decay`. Each group carries
    `name` and `lr_scale` (its lr / `lr`), so code that rescales lr later can keep the ratio.
    Empty groups are dropped.
    """
    if backbone_lr_scale < 0:
        raise ValueError(f"backbone_lr_scale must be >= 0, got {backbone_lr_scale}")
    no_decay: set[str] = set()
    if no_decay_bn_bias:
        for mod_name, m in model.named_modules():
            for p_name, _ in m.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if isinstance(m, nn.modules.batchnorm._NormBase) or p_name == "bias":
                    no_decay.add(full)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if _is_head(name, head_prefixes) else "backbone"
        groups.setdefault((part, name not in no_decay), []).append(p)
    out = []
    for part in ("backbone", "head"):
        scale = backbone_lr_scale if part == "backbone" else 1.0
        for decay in (True, False):
            params = groups.get((part, decay))
            if params:
                out.append({
                    "name": f"{part}{'' if decay else '_no_decay'}", "params": params, "lr": lr * scale,
                    "lr_scale": scale, "weight_decay": weight_decay if decay else 0.0,
                })  # fmt: skip
    if not out:
        raise ValueError("no trainable parameters: everything is frozen (check freeze / backbone_lr_scale)")
    return out


def weights_from_rank_zero(model: nn.Module, trainer: Any) -> None:
    """Every rank takes rank 0's weights and buffers. DDP sent them once, when it wrapped the model;
    weights loaded after that (``init_weights`` in ``on_fit_start``) differ between ranks wherever they
    were drawn (a classifier re-initialised for another class count draws from each rank's own generator)."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            torch.distributed.broadcast(tensor, src=0)
