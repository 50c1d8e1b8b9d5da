"""Callbacks the CLI adds to every run: throughput and a progress report (a rich bar or plain lines).

The checkpoint callbacks (``last.ckpt``, random generators, loop state) live in ``resnet_lit.checkpointing``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.utilities import rank_zero_only

from resnet_lit.lightning_private import DescribedRichProgressBar, logger_step, quiet_results_table, should_update_logs


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


# Training figures logged once an epoch (train/error and friends, at the epoch's end): a step line
# would repeat them for a whole epoch, so they get a line of their own when the epoch ends.
_EPOCH_FIGURES = ("train/acc1", "train/acc5", "train/error", "train/error5")
# the rate measured here replaces the logged one on the console (the same figure, another window)
_NOT_SHOWN = ("train/images_per_s",)


def _total_steps(trainer: pl.Trainer) -> int | None:
    """Optimiser steps the whole run makes (max_steps, or max_epochs x steps per epoch); None if unbounded."""
    try:
        total = float(trainer.estimated_stepping_batches)
    except (RuntimeError, TypeError, ValueError):  # a loader without a length under max_epochs
        return None
    return int(total) if math.isfinite(total) and total > 0 else None


def _total_epochs(trainer: pl.Trainer, total_steps: int | None) -> int | None:
    per_epoch = trainer.num_training_batches
    epochs = None
    if total_steps and isinstance(per_epoch, int) and per_epoch > 0:
        epochs = math.ceil(total_steps / math.ceil(per_epoch / trainer.accumulate_grad_batches))
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        epochs = min(epochs, trainer.max_epochs) if epochs else trainer.max_epochs
    return epochs


class _Position:
    """Where a run stands and how fast it goes: "step 120/3900 epoch 1/10 812 images/s 0:04:39 left".

    Epochs are counted from 1 here (the first epoch is "epoch 1/10"); metrics.csv keeps Lightning's
    index from 0. The pace is this process's own, from the end of its first step (which pays for
    compiling, caches and starting workers, and would skew every estimate after it).
    """

    RATE_WINDOW_S = 2.0  # images/s over at least this long (the rich bar asks after every batch)

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None
        self._window: tuple[float, int] = (0.0, 0)  # (start, images since)
        self._rate: float | None = None
        self._totals: tuple[int | None, int | None] = (None, None)

    def start(self, trainer: pl.Trainer) -> None:
        self._first, self._rate = None, None
        total = _total_steps(trainer)
        self._totals = (total, _total_epochs(trainer, total))

    def after_batch(self, trainer: pl.Trainer, batch: Any) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first, self._window = (now, trainer.global_step), (now, 0)
            return
        self._window = (self._window[0], self._window[1] + _batch_size(batch) * trainer.world_size)

    def restart_window(self) -> None:
        """After a validation: its time is no training throughput."""
        self._window = (time.perf_counter(), 0)

    def where(self, trainer: pl.Trainer) -> str:
        step, (total, epochs) = trainer.global_step, self._totals
        return " ".join((f"step {step}/{total}" if total else f"step {step}",
                         f"epoch {trainer.current_epoch + 1}/{epochs}" if epochs else
                         f"epoch {trainer.current_epoch + 1}"))

    def text(self, trainer: pl.Trainer) -> str:
        now, step = time.perf_counter(), trainer.global_step
        total = self._totals[0]
        parts = [self.where(trainer)]
        began, images = self._window
        if images and (self._rate is None or now - began >= self.RATE_WINDOW_S):
            self._rate, self._window = images / (now - began), (now, 0)
        if self._rate is not None:
            parts.append(f"{self._rate:,.0f} images/s")
        if total and self._first is not None and step > self._first[1]:
            per_step = (now - self._first[0]) / (step - self._first[1])
            parts.append(f"{_clock(per_step * max(total - step, 0))} left")
        return " ".join(parts)


def _figures(trainer: pl.Trainer, prefix: str, leave_out: tuple[str, ...] = ()) -> str:
    items = [(k, v) for k, v in trainer.callback_metrics.items()
             if k.startswith(prefix) and k not in leave_out and k not in _NOT_SHOWN]
    return " ".join(f"{k}={float(v):.4g}" for k, v in sorted(items))


def _evaluated(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
    """What validate / test measured: the checkpoint's own epoch and step as it records them, as
    metrics.csv and checkpoint names write them (a fresh Trainer counts 0 whatever it restored), or
    the weights when there is no checkpoint."""
    at = getattr(pl_module, "evaluated_checkpoint", None)
    if at is not None:
        return f"the checkpoint epoch={at['epoch']} step={at['global_step']}:"
    return "the given weights:"


class _EvaluationLine:
    """One line per validation and per test, instead of Lightning's results table beside it (which
    printed test results twice: our line and the table)."""

    _print: Callable[[str], None]  # the subclass's way to write a line (bar console or plain print)
    _at: _Position

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)  # type: ignore[misc]  (the progress bar's own)
        quiet_results_table(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_test_start(trainer, pl_module)  # type: ignore[misc]
        quiet_results_table(trainer)

    def _evaluation_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        figures = _figures(trainer, f"{stage}/")
        if trainer.state.fn == "fit":
            self._print(f"validation at {self._at.where(trainer)}: {figures}")
        else:
            self._print(f"{'validation' if stage == 'val' else stage} of {_evaluated(trainer, pl_module)} {figures}")


class StepRichProgressBar(_EvaluationLine, DescribedRichProgressBar):
    """Lightning's rich bar, described by the whole run: "step 1200/64000 epoch 4/164 3,052 images/s
    0:41:10 left" (Lightning's reads "Epoch 3/-2" when max_steps ends the run)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # RichProgressBar's own arguments
        self._at = _Position()

    def _print(self, text: str) -> None:
        if self.is_enabled and self.trainer.is_global_zero and not self.console_print(text):
            print(text, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._at.start(trainer)

    def describe_training(self, current_epoch: int) -> str:
        return self._at.text(self.trainer)

    def _describe(self, trainer: pl.Trainer) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._at.text(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._at.after_batch(trainer, batch)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._describe(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self._evaluation_line(trainer, pl_module, "val")
            self._at.restart_window()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_test_end(trainer, pl_module)
        self._evaluation_line(trainer, pl_module, "test")


class LineProgress(_EvaluationLine, ProgressBar):
    """Plain progress for logs that are not a terminal (SLURM, nohup, CI): a line after the first
    step, then every ``every_n_steps`` optimiser steps or ``every_n_seconds`` seconds, whichever comes
    first (step and epoch of their totals, images/s, time left, lr, the training figures with the step
    they were logged at when that is an earlier one), a line per epoch end and per validation; no
    carriage returns, no escape codes."""

    def __init__(self, every_n_steps: int = 100, every_n_seconds: float = 60.0) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self._enabled = True
        self._t0 = self._last = time.perf_counter()
        self._at = _Position()
        self._logged_at: int | None = None  # the step whose training figures callback_metrics holds
        self._printed_first = False
        self._epoch_ended: tuple[int, int] | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @rank_zero_only
    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._at.start(trainer)
        self._printed_first = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._at.after_batch(trainer, batch)
        if should_update_logs(trainer):  # the module logged this batch's figures (no device read here)
            self._logged_at = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        now = time.perf_counter()
        due = trainer.global_step % self.every_n_steps == 0 or now - self._last >= self.every_n_seconds
        if self._printed_first and not due:
            return
        self._printed_first, self._last = True, now  # the first line right after the first step
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        figures = _figures(trainer, "train/", leave_out=_EPOCH_FIGURES)
        if figures and self._logged_at is not None and self._logged_at != trainer.global_step:
            figures += f" (at step {self._logged_at})"  # logged every log_every_n_steps: say which step's
        self._print(f"{self._at.text(trainer)} lr={lr:.4g} {figures} [{now - self._t0:.0f}s]".replace("  ", " "))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning calls this before the module's own hook, which logs the epoch's figures: they are
        # printed when the next epoch starts or training ends
        self._epoch_ended = (trainer.current_epoch, trainer.global_step)

    def _print_epoch_figures(self, trainer: pl.Trainer) -> None:
        if self._epoch_ended is None:
            return
        (epoch, step), self._epoch_ended = self._epoch_ended, None
        figures = _figures(trainer, "train/", leave_out=tuple(k for k in trainer.callback_metrics
                                                              if k not in _EPOCH_FIGURES))
        if figures:
            self._print(f"epoch {epoch + 1} ended at step {step}: {figures}")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_epoch_figures(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_epoch_figures(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._evaluation_line(trainer, pl_module, "val")
            self._at.restart_window()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluation_line(trainer, pl_module, "test")


def progress_bar() -> ProgressBar:
    """A rich bar in a terminal, plain lines elsewhere (SLURM logs, CI, pipes)."""
    if sys.stdout.isatty():
        try:
            return StepRichProgressBar()
        except ModuleNotFoundError:  # rich is a dependency, but the progress bar is not worth a crash
            pass
    return LineProgress()
