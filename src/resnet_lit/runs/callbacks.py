"""Callbacks the CLI adds to every run: throughput and a progress report (a rich bar or plain lines).

The checkpoint callbacks (``last.ckpt``, random generators, loop state) live in ``resnet_lit.checkpointing``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only

from resnet_lit.lightning_private import logger_step, should_update_logs


def _batch_size(batch: Any) -> int:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(x.shape[0]) if hasattr(x, "shape") else 0


class Throughput(Callback):
    """Logs ``train/images_per_s`` (all ranks together) every ``every_n_steps`` steps.

    Wall time between batch starts, averaged over a window: the GPU queue makes the host wait for
    the device within a few steps, so no synchronisation is needed on the hot path.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self._t0: float | None = None
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._images = None, 0  # epoch boundaries include validation: restart the window

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
            return
        self._images += _batch_size(batch) * trainer.world_size
        if self._images and trainer.global_step % self.every_n_steps == 0:
            elapsed = time.perf_counter() - self._t0
            pl_module.log("train/images_per_s", self._images / elapsed, on_step=True, on_epoch=False,
                          rank_zero_only=True)
            self._t0, self._images = time.perf_counter(), 0


class LearningRate(Callback):
    """Logs the learning rate: one ``lr`` column while every parameter group has the same one (a
    from-scratch run), ``lr/<group>`` columns when they differ (a fine-tune with
    ``backbone_lr_scale``). Lightning's LearningRateMonitor writes one column per group always
    (``lr-SGD/backbone`` and ``lr-SGD/head`` with equal values); the arguments are its own, so
    configs that set ``lr_monitor.*`` keep working.
    """

    def __init__(self, logging_interval: Literal["step", "epoch"] | None = "step", log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.logging_interval != "epoch" and should_update_logs(trainer):
            self._log(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.logging_interval != "step":
            self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        if not trainer.loggers or not trainer.optimizers:
            return
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        keys = [("lr", "lr")]
        if self.log_momentum:
            keys.append(("momentum", "betas" if "betas" in groups[0] else "momentum"))
        if self.log_weight_decay:
            keys.append(("weight_decay", "weight_decay"))
        metrics: dict[str, float] = {}
        for column, key in keys:
            values = [float(g[key][0] if key == "betas" else g.get(key, 0.0)) for g in groups]
            if len(set(values)) == 1:
                metrics[column] = values[0]
            else:
                metrics.update({f"{column}/{g.get('name', i)}": v for i, (g, v) in enumerate(zip(groups, values))})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=logger_step(trainer))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _StepsLeft:
    """Steps of ``max_steps`` and the time left at this run's own pace (since it started or resumed)."""

    def __init__(self) -> None:
        self._start: tuple[float, int] | None = None

    def start(self, trainer: pl.Trainer) -> None:
        self._start = (time.perf_counter(), trainer.global_step)

    def text(self, trainer: pl.Trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        if not total or total < 0:
            return f"epoch {trainer.current_epoch} step {step}"
        text = f"step {step}/{total}"
        if self._start is not None and step > self._start[1]:
            per_step = (time.perf_counter() - self._start[0]) / (step - self._start[1])
            text += f" ({_clock(per_step * (total - step))} left)"
        return text


class StepRichProgressBar(RichProgressBar):
    """Lightning's rich bar, described by steps for step-based recipes: "step 1200/64000 (0:41:10
    left)" instead of "Epoch 3/-2" (max_epochs is -1 when max_steps ends the run)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # RichProgressBar's own arguments
        self._left = _StepsLeft()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._left.start(trainer)

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's text
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return f"epoch {current_epoch} {self._left.text(trainer)}"
        return super()._get_train_description(current_epoch)

    def _describe(self, trainer: pl.Trainer) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._describe(trainer)


class LineProgress(ProgressBar):
    """Plain progress for logs that are not a terminal (SLURM, nohup, CI): a line every
    ``every_n_steps`` optimiser steps or ``every_n_seconds`` seconds, whichever comes first (step,
    lr, the logged training metrics, time left), and one per validation; no carriage returns."""

    def __init__(self, every_n_steps: int = 100, every_n_seconds: float = 60.0) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self._enabled = True
        self._t0 = self._last = time.perf_counter()
        self._left = _StepsLeft()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @rank_zero_only
    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

    def _metrics(self, trainer: pl.Trainer, prefix: str) -> str:
        items = [(k, v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)]
        return " ".join(f"{k}={float(v):.4g}" for k, v in sorted(items))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._left.start(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        now = time.perf_counter()
        if trainer.global_step % self.every_n_steps and now - self._last < self.every_n_seconds:
            return
        self._last = now
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        self._print(f"epoch {trainer.current_epoch} {self._left.text(trainer)} lr={lr:.4g} "
                    f"{self._metrics(trainer, 'train/')} [{now - self._t0:.0f}s]")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._print(f"epoch {trainer.current_epoch} step {trainer.global_step} {self._metrics(trainer, 'val/')}")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print(self._metrics(trainer, "test/"))


def progress_bar() -> ProgressBar:
    """A rich bar in a terminal, plain lines elsewhere (SLURM logs, CI, pipes)."""
    if sys.stdout.isatty():
        try:
            return StepRichProgressBar()
        except ModuleNotFoundError:  # rich is a dependency, but the progress bar is not worth a crash
            pass
    return LineProgress()

