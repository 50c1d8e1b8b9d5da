"""Every private Lightning name resnet-lit uses, in one place.

Lightning's public API does not cover a few things resnet-lit needs: whether the logger writes this
step, where the fit loop stands inside an epoch (and its keys in a checkpoint), saving a
``ModelCheckpoint`` without a monitor when training stops, a CSV writer that keeps metrics.csv,
asking the fit loop to stop after the batch under way (as it does on SIGTERM) when Ctrl-C comes,
the plugin ``sync_batchnorm`` applies.
Code elsewhere reaches them through the functions here, or names them in ``PRIVATE_NAMES``;
``tests/test_lightning_private.py`` checks every name there on the installed Lightning, so an
upgrade that removes one fails by name instead of breaking resume silently. ``pyproject.toml``
bounds ``lightning`` below the next minor version beyond the tested one.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

# Where each name is read from: a Trainer, a ModelCheckpoint, a CSVLogger and its ExperimentWriter,
# or the fit loop's part of a checkpoint ("fit_loop_state", keys joined by "/").
PRIVATE_NAMES = (
    # ImageClassifier.training_step logs train/loss only on steps the logger writes
    "Trainer._logger_connector.should_update_logs",
    # runs.callbacks.LearningRate logs at the step Lightning's own loggers use
    "Trainer.fit_loop.epoch_loop._batches_that_stepped",
    # ImageClassifier's compile_step counts its optimiser steps (manual optimisation) as LightningOptimizer.step does
    "Trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress",
    # ImageClassifier.on_save_checkpoint: in the validation after an epoch's last batch?
    "Trainer.fit_loop.epoch_loop.batch_progress.is_last_batch",
    "Trainer.fit_loop.epoch_loop.batch_progress.current.ready",
    # checkpointing.contents.EpochEndLoopState rewrites the fit loop's counters in a checkpoint
    "fit_loop_state/epoch_progress/current/processed",
    "fit_loop_state/epoch_progress/total/completed",
    "fit_loop_state/epoch_loop.batch_progress/is_last_batch",
    "fit_loop_state/epoch_loop.batch_progress/current/completed",
    "fit_loop_state/epoch_loop.state_dict/_batches_that_stepped",
    # checkpointing.resume.LastCheckpoint saves last.ckpt when training stops
    "ModelCheckpoint._save_none_monitor_checkpoint",
    "ModelCheckpoint._monitor_candidates",
    "ModelCheckpoint._last_global_step_saved",
    # runs.interrupt.StopOnSignal: SIGINT takes Lightning's SIGTERM path (stop after the batch); its own
    # handlers replace Lightning's right after Lightning registers them; SLURM's requeue signal
    "Trainer._signal_connector.received_sigterm",
    "Trainer._signal_connector.register_signal_handlers",
    "Trainer._accelerator_connector.cluster_environment",
    # checkpointing.resume.LastCheckpoint gives a resumed run's train loader its position (see below)
    "Trainer.fit_loop._load_combined_loader_states",
    # ImageClassifier.setup: sync_batchnorm's plugin, replaced so that frozen batch norms stay frozen
    "DDPStrategy._layer_sync",
    # runs.interrupt.StopOnSignal: the ranks agree on a stop at a cadence; Lightning's per-step broadcast goes
    "Trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor",
    # runs.callbacks.StepRichProgressBar describes the bar by steps (overrides this method)
    "RichProgressBar._get_train_description",
    # ... and prints its validation / test line through the bar's own console (above the live bar)
    "RichProgressBar._console",
    # runs.callbacks: one line per validate / test instead of the loop's results table as well
    "Trainer.validate_loop.verbose",
    "Trainer.test_loop.verbose",
    # runs.csv_logger.ResumableCSVLogger keeps and appends to metrics.csv
    "CSVLogger._experiment",
    "CSVLogger._fs",
    "ExperimentWriter._check_log_dir_exists",
    "ExperimentWriter._rewrite_with_new_header",
    "ExperimentWriter._fs",
    # runs.cli.ResNetCLI: the command line's model arguments stand; the checkpoint is compared, not copied in
    "LightningCLI._parse_ckpt_path",
    # ImageClassifier's hooks outside a Trainer (load_from_checkpoint, tests): its trainer or None
    "LightningModule._trainer",
    # training.schedules.configure_training: the train loader's length when max_steps alone bounds the run
    "Trainer.fit_loop.setup_data",
    # runs.cli: wandb.init without Lightning's anonymous=None, which wandb warns about on every run
    "WandbLogger._wandb_init",
)


def should_update_logs(trainer: Any) -> bool:
    """Whether the logger writes this step (``log_every_n_steps``); True when that cannot be told."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def quiet_results_table(trainer: Any) -> None:
    """No results table from ``validate`` / ``test`` (``verbose``, an attribute of Lightning's private
    evaluation loop): the progress callbacks print the figures in one line instead."""
    for loop in (trainer.validate_loop, trainer.test_loop):
        loop.verbose = False


def count_optimizer_step(trainer: Any) -> None:
    """Count an optimiser step made outside ``LightningOptimizer.step`` (manual optimisation): what its
    ``_on_before_step`` / ``_on_after_step`` do, so ``global_step`` and everything keyed on it follow."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def epoch_batches_done_and_validating(trainer: Any) -> bool:
    """In the validation that follows an epoch's last training batch (False without a trainer)."""
    if trainer is None or not trainer.validating:
        return False
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return bool(progress.is_last_batch or progress.current.ready >= trainer.num_training_batches)


def at_epoch_last_batch(trainer: Any) -> bool:
    """In ``on_train_batch_end`` of the epoch's last batch (validation and the epoch's end follow)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return bool(progress.is_last_batch or progress.current.ready >= trainer.num_training_batches)


def save_checkpoint_unless_saved_this_step(callback: Any, trainer: Any) -> None:
    """A ``ModelCheckpoint`` without a monitor saves now, unless it already saved at this global step."""
    if trainer.global_step != callback._last_global_step_saved and not trainer.fast_dev_run:
        callback._save_none_monitor_checkpoint(trainer, callback._monitor_candidates(trainer))


def logger_step(trainer: Any) -> int:
    """The step Lightning's loggers write metrics at (optimiser steps, as ``self.log`` uses)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def set_stop_after_batch(trainer: Any, stop: bool) -> None:
    """Set (or clear) the flag Lightning's SIGTERM handler sets: the fit loop raises ``SIGTERMException``
    after the batch under way (``trainer.received_sigterm`` is its read-only public face)."""
    trainer._signal_connector.received_sigterm = stop


def layer_sync(trainer: Any) -> Any:
    """The plugin the strategy applies to the model for ``sync_batchnorm`` (a ``LayerSync``); None
    without one, or with a strategy for one device."""
    return getattr(trainer.strategy, "_layer_sync", None)


def set_layer_sync(trainer: Any, plugin: Any) -> None:
    """Have the strategy apply ``plugin`` (a ``LayerSync``) instead, when it sets up (after ``setup``)."""
    trainer.strategy._layer_sync = plugin


def load_restored_loader_states(trainer: Any) -> None:
    """Hand the checkpoint's train-loader states (position in the epoch) to the loaders, if they are still
    waiting. Lightning does it when the fit loop sets up its data, after the restore; but a
    ``configure_optimizers`` that reads ``estimated_stepping_batches`` or ``num_training_batches`` (a
    schedule in epochs) has set the data up before the restore, and Lightning 2.6 then never does it:
    the resumed run starts its epoch again from the first batch."""
    trainer.fit_loop._load_combined_loader_states()


def when_signal_handlers_registered(trainer: Any, then: Any) -> None:
    """Call ``then()`` each time right after the Trainer installs its signal handlers (in ``Trainer._run``,
    after the setup hooks and the restore, before the loops start)."""
    connector = trainer._signal_connector
    register = type(connector).register_signal_handlers

    def register_then_call() -> None:
        register(connector)
        then()

    connector.register_signal_handlers = register_then_call


def cluster_environment(trainer: Any) -> Any:
    """The Trainer's cluster environment (``SLURMEnvironment`` under SLURM), whatever the strategy."""
    return trainer._accelerator_connector.cluster_environment


def skip_per_step_sigterm_broadcast(trainer: Any) -> None:
    """Lightning 2.6 broadcasts its SIGTERM flag from rank 0 and reads it back (``.item()``, a host sync)
    before every training batch when there is more than one rank. ``runs.interrupt.StopOnSignal``
    replaces that handler and has the ranks agree at a bounded cadence, so the per-step collective
    only costs time (one round trip per step on every rank): it is turned off for this fit."""
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None



def trainer_of(module: Any) -> Any:
    """The Trainer a LightningModule is attached to, or None (``module.trainer`` raises without one)."""
    return module._trainer


def drop_wandb_anonymous(logger: Any) -> None:
    """Lightning's WandbLogger passes ``anonymous=None`` to ``wandb.init`` unless told otherwise, and
    wandb warns on every run that the setting has no effect: leave it out when it says nothing."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)


def load_train_data(trainer: Any) -> None:
    """Set up the fit's training loader now (as ``estimated_stepping_batches`` does, except when
    ``max_epochs`` is -1), so that ``num_training_batches`` is known in ``configure_optimizers``."""
    trainer.fit_loop.setup_data()


class DescribedRichProgressBar(RichProgressBar):
    """Lightning's rich bar with its text from ``describe_training(current_epoch)`` (Lightning's own text
    unless a subclass says otherwise: runs.callbacks.StepRichProgressBar) and a ``console_print`` that
    writes a line above the bar."""

    def describe_training(self, current_epoch: int) -> str:
        return super()._get_train_description(current_epoch)

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's text
        return self.describe_training(current_epoch)

    def console_print(self, text: str) -> bool:
        """Print ``text`` through the bar's console; False when there is none yet."""
        if self._console is None:
            return False
        self._console.print(text, markup=False, highlight=False)
        return True


class KeepingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps an existing metrics.csv (its rows in ``resumed_rows``) instead
    of deleting it, and rewrites the whole file through ``write_all`` when a column is added, opening
    it with ``open_for_rewrite`` (runs.csv_logger says why and opens it atomically)."""

    def __init__(self, log_dir: str) -> None:
        self.resumed_rows: list[dict[str, str]] | None = None
        super().__init__(log_dir)

    @property
    def fs(self) -> Any:
        return self._fs

    def _check_log_dir_exists(self) -> None:  # called by __init__: keep the file, remember its rows
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.DictReader(f)
                self.resumed_rows = list(reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:  # Lightning's rewrites in place
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        self.write_all(fieldnames, rows)

    def open_for_rewrite(self, path: str) -> Any:
        return self._fs.open(path, "w", newline="")

    def write_all(self, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
        with self.open_for_rewrite(self.metrics_file_path) as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class WriterChoosingCSVLogger(CSVLogger):
    """Lightning's CSVLogger with its writer from ``make_writer(log_dir)`` (Lightning's own unless a
    subclass says otherwise: runs.csv_logger.ResumableCSVLogger)."""

    def make_writer(self, log_dir: str) -> ExperimentWriter:
        return ExperimentWriter(log_dir=log_dir)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = self.make_writer(self.log_dir)
        return self._experiment


class CommandLineOverCheckpoint(LightningCLI):
    """LightningCLI where ``--ckpt_path`` does not overwrite the configuration's model arguments with
    the checkpoint's hyperparameters (LightningCLI's ``_parse_ckpt_path``, which drops the command's
    own flags without a word). checkpointing/resume_plan.py compares the two instead."""

    def _parse_ckpt_path(self) -> None:
        return None
