"""ImageClassifier: the LightningModule that trains, evaluates and predicts with any model of
``resnet_lit.models``.

Every constructor argument is plain data and saved as a hyperparameter, so
``ImageClassifier.load_from_checkpoint(path)`` rebuilds the network in a fresh process with no
other argument. The backbone is ``self.model``; it is compiled in place (``nn.Module.compile``),
so state-dict keys are the same with ``compile`` on or off.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn

from resnet_lit.checkpointing.contents import (
    add_model_record,
    add_trainer_limits,
    add_wandb_run_id,
    check_format,
    train_counts_of,
)
from resnet_lit.checkpointing.weights import load_init_weights
from resnet_lit.lightning_private import layer_sync, set_layer_sync, should_update_logs, trainer_of
from resnet_lit.models import create_model
from resnet_lit.training.compiling import call_eagerly, compile_in_place
from resnet_lit.training.ema import EMAConfig, EMAWeights, ema_at_scale
from resnet_lit.training.eval_metrics import EvalMetrics, accuracy_figures, log_checkpoint_position, scores_and_losses
from resnet_lit.training.finetune import Freeze, SyncUnfrozenBatchNorm, apply_freeze, weights_from_rank_zero
from resnet_lit.training.fused_step import FusedStep, check_fit, lr_as_float
from resnet_lit.training.losses import LossKind, build_loss
from resnet_lit.training.nonfinite import NonFiniteWatch, refuse_nonfinite_checkpoint
from resnet_lit.training.optimizers import OptimizerConfig
from resnet_lit.training.schedules import ScheduleConfig, configure_training, global_batch_of
from resnet_lit.training.train_accuracy import TrainAccuracy


class ImageClassifier(pl.LightningModule):
    """Image classification with a residual network.

    Args:
        arch: a ``resnet_lit.models.list_models()`` name, e.g. ``resnet50`` or ``resnet56``.
        num_classes: classifier outputs; the CLI links it from the DataModule.
        shortcut: ``A`` (zero-padded identity), ``B`` (projection where the shape changes) or
            ``C`` (projection everywhere); ``None`` keeps the family's default (B ImageNet, A CIFAR).
        stride_in_1x1: the paper's v1 bottleneck (stride in the first 1x1); default v1.5 (in the 3x3).
        zero_init_residual: start each residual branch at zero (the last BN's gamma).
        width: channel multiplier of every stage.
        in_chans: input channels.
        class_names: class names in label order (linked from the DataModule, kept in checkpoints
            so ``predict`` names classes without the training data).
        init_weights: weights to start from (a resnet-lit checkpoint, a state dict, a safetensors
            file or torchvision/timm weights), read when ``fit`` starts. Not a resume: ``--ckpt_path``
            resumes a run. ``resnet-lit validate/test/predict`` without ``--ckpt_path`` evaluate them.
        freeze: ``none``, ``stem``, ``stageK`` (the stem and stages 1..K) or ``backbone`` (all but the
            classifier); docs/finetune.md.
        optimizer: see ``OptimizerConfig``; lr is per ``reference_batch`` images.
        schedule: see ``ScheduleConfig``.
        label_smoothing: label smoothing of the training loss (0 in the paper); validation and test
            losses are cross-entropy with it whatever ``loss`` is.
        loss: ``ce`` (cross-entropy, the paper's) or ``bce`` (binary cross-entropy averaged over classes,
            timm's "ResNet strikes back"). Both take class indices [B] or soft targets [B, C]
            (MixUp / CutMix); training/losses.py.
        drop_path_rate: stochastic depth: each residual branch is dropped per image in training with a
            probability rising linearly over depth to this rate; 0 (the paper's) = none.
        ema: an exponential moving average of the weights (``{decay: 0.9998}``; see ``EMAConfig``);
            validation, test, predict and export then use the averaged weights (training/ema.py).
            ``None`` (the paper's) = none.
        compile: ``False``, ``True`` or keyword arguments of ``nn.Module.compile`` (``mode``,
            ``fullgraph``, ``dynamic``) for the backbone.
        channels_last: keep weights and inputs in NHWC (faster convolutions on tensor cores).
        compile_eval: with ``compile``, also run validation, test and predict through the compiled
            backbone (the default); ``False`` evaluates eagerly (training/compiling.py).
        compile_step: with ``compile``, compile the whole training step as one function (augmentation,
            forward, loss, backward, optimiser update; same ``compile`` options) under manual
            optimisation: one graph per step, one CUDA graph with ``mode: reduce-overhead``. Refuses
            gradient accumulation, clipping, the plateau schedule and several processes
            (training/fused_step.py). ``False`` (the default): the backbone alone is compiled.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 1000,
        shortcut: Literal["A", "B", "C"] | None = None,
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        width: float = 1.0,
        in_chans: int = 3,
        class_names: list[str] | None = None,
        init_weights: str | None = None,
        freeze: Freeze = "none",
        optimizer: OptimizerConfig = OptimizerConfig(),
        schedule: ScheduleConfig = ScheduleConfig(),
        label_smoothing: float = 0.0,
        loss: LossKind = "ce",
        drop_path_rate: float = 0.0,
        ema: EMAConfig | None = None,
        compile: bool | dict[str, Any] = False,
        channels_last: bool = False,
        compile_eval: bool = True,
        compile_step: bool = False,
    ) -> None:
        super().__init__()
        # Checkpoints hold plain dicts (weights_only loading), the module works with dataclasses.
        optimizer = OptimizerConfig(**optimizer) if isinstance(optimizer, dict) else optimizer
        schedule = ScheduleConfig(**schedule) if isinstance(schedule, dict) else schedule
        ema = EMAConfig(**ema) if isinstance(ema, dict) else ema
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        hparams = dict(locals())  # the constructor's arguments (and self, __class__: dropped below)
        hparams.update(optimizer=asdict(optimizer), schedule=asdict(schedule), ema=asdict(ema) if ema else None)
        self.save_hyperparameters({k: v for k, v in hparams.items() if k not in ("self", "__class__")})
        self.optim_cfg, self.schedule_cfg, self.ema_cfg = optimizer, schedule, ema
        self.model = create_model(
            arch, num_classes=num_classes, shortcut=shortcut, stride_in_1x1=stride_in_1x1,
            zero_init_residual=zero_init_residual, width=width, in_chans=in_chans, drop_path_rate=drop_path_rate,
        )
        self.criterion = build_loss(loss, label_smoothing)  # index or soft targets (training/losses.py)
        self._top5 = min(5, num_classes)
        # validation and test: accuracies, loss and image counts, exact over ranks and skipped images
        self.metrics = nn.ModuleDict({stage: EvalMetrics(num_classes, self._top5) for stage in ("val", "test")})
        self.train_accuracy = TrainAccuracy(self._top5)  # counted on the hot path, not by torchmetrics
        self._nonfinite = NonFiniteWatch()  # a loss that is not finite stops the run (training/nonfinite.py)
        self._compiled = False
        if compile_step and compile is False:
            raise ValueError("model.compile_step needs model.compile: true, or its options ({mode: reduce-overhead})")
        self.automatic_optimization = not compile_step  # the compiled step makes the update itself
        self._fused: FusedStep | None = None
        self.augments_training_batches = False  # see on_train_start
        self.evaluated_checkpoint: dict[str, int] | None = None  # its epoch and step label validate / test

    # ----------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        if self.hparams.freeze != "none":
            apply_freeze(self.model, self.hparams.freeze)
            if trainer_of(self) is not None and type(layer_sync(self.trainer)) is TorchSyncBatchNorm:
                set_layer_sync(self.trainer, SyncUnfrozenBatchNorm())  # sync_batchnorm: frozen ones stay frozen
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if not self._compiled:
            self._compiled = compile_in_place(self.model, self.hparams.compile)

    def on_fit_start(self) -> None:
        # After a resume's restore (trainer.ckpt_path is known only now): a resumed run keeps its
        # own weights and never reads init_weights again, which may be gone by then.
        if self.hparams.init_weights and self.trainer.ckpt_path is None:
            self.load_init_weights()
            weights_from_rank_zero(self.model, self.trainer)

    def load_init_weights(self, num_classes_change: str = "reinit") -> None:
        """``init_weights`` into the backbone, in place; InitWeightsError if they cannot be. The CLI
        also calls this for validate / test / predict without a checkpoint, with
        ``num_classes_change="error"``: a classifier re-initialised at random measures nothing."""
        load_init_weights(self.model, self.hparams.init_weights, num_classes_change)

    # --------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled and not self.training and not self.hparams.compile_eval:
            return call_eagerly(self.model, x)
        return self.model(x)

    def predict_probs(self, x: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Class probabilities, averaged over crops ([B, K, C, H, W]) or scales (a list)."""
        if isinstance(x, (list, tuple)):
            return torch.stack([self.predict_probs(t) for t in x]).mean(0)
        if x.ndim == 5:
            b, k = x.shape[:2]
            return self(x.flatten(0, 1)).float().softmax(-1).view(b, k, -1).mean(1)
        return self(x).float().softmax(-1)

    # -------------------------------------------------------------------------------- training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._fused is not None:
            return self._fused.training_step(self, batch)
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_accuracy.update(logits.detach(), y)
        self._nonfinite.record(loss, self.trainer)  # on the device: no sync
        if should_update_logs(self.trainer):  # self.log costs a fraction of a small net's GPU step
            self._nonfinite.stop_if_bad(self.trainer)  # before this step's update; the logged loss syncs anyway
            self._log_training_figures(loss)
        return loss

    def _log_training_figures(self, loss: torch.Tensor) -> None:
        """The loss and the epoch's error so far (train/error is the epoch's own): a curve for short runs too."""
        self.log("train/loss", loss, prog_bar=True)
        rates = self.train_accuracy.compute(self._sum_over_ranks, self.device, reset=False)
        if rates is not None:
            self.log("train/error_running", 100 * (1 - rates[0]), rank_zero_only=True)

    def on_train_start(self) -> None:
        if self.hparams.compile_step:  # here, not in setup: a resume has restored the optimiser's state by now
            self._fused = FusedStep.of(self)
            self.augments_training_batches = self._fused.prepare is not None  # read by the DataModule's hook

    def on_train_epoch_start(self) -> None:  # skipped on a mid-epoch resume: on_load_checkpoint's counts stay
        self.train_accuracy.reset()

    def on_train_epoch_end(self) -> None:
        rates = self.train_accuracy.compute(self._sum_over_ranks, self.device)
        if rates is not None:  # None: nothing seen (an epoch end replayed after a resume), no made-up row
            for name, value in accuracy_figures(*rates).items():
                self.log(f"train/{name}", value, prog_bar=name == "error", rank_zero_only=True)

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:  # what TrainAccuracy.compute sums with
        return self.trainer.strategy.reduce(t, reduce_op="sum")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:  # batch: images, their paths
        return {"paths": list(batch[1]), "probs": self.predict_probs(batch[0])}

    def _eval_step(self, batch: Any, stage: str) -> None:
        scores, losses = scores_and_losses(self, *batch, self.criterion.label_smoothing)
        self.metrics[stage].update(scores, batch[1], losses)

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        if values is not None:
            for name, value in values.items():
                self.log(f"{stage}/{name}", value, prog_bar=name == "error", rank_zero_only=True)
            log_checkpoint_position(self)

    # ------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        return configure_training(self.model, self.optim_cfg, self.schedule_cfg, self.trainer)

    def configure_callbacks(self) -> list[pl.Callback]:
        # the EMA of the weights (training/ema.py), for fit only: a checkpoint's state_dict already
        # holds the averaged weights that validate / test / predict read
        fitting = trainer_of(self) is not None and self.trainer.state.fn == "fit"
        if fitting and self.hparams.compile_step:  # before Lightning's own checks of manual optimisation
            check_fit(self.trainer, self.schedule_cfg.kind)
        if self.ema_cfg is None or not fitting:
            return []
        # stated at the schedule's steps_at_batch: the same horizon in images at this global batch
        return [EMAWeights(ema_at_scale(self.ema_cfg, self.schedule_cfg.step_factor(global_batch_of(self.trainer))))]

    # ----------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        refuse_nonfinite_checkpoint(checkpoint, trainer_of(self))
        for state in checkpoint.get("optimizer_states", []):  # compile_step's tensor lr: saved as a float
            lr_as_float(state)
        counts = self.train_accuracy.for_checkpoint(trainer_of(self), self.current_epoch)  # mid-epoch only
        add_model_record(checkpoint, self.model.arch_spec, self.hparams.class_names, counts)
        if trainer_of(self) is not None:
            add_wandb_run_id(checkpoint, self.trainer)
            add_trainer_limits(checkpoint, self.trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_format(checkpoint)  # a newer resnet-lit's checkpoint: one clear line, before any key is read
        self.evaluated_checkpoint = {key: int(checkpoint.get(key, 0)) for key in ("epoch", "global_step")}
        self.train_accuracy.restore(train_counts_of(checkpoint), self.global_rank)  # a mid-epoch resume

