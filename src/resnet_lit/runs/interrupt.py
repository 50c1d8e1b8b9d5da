"""Ctrl-C (SIGINT) and SIGTERM during ``fit``: finish the batch, save ``last.ckpt``, say how to resume.

Lightning already stops gracefully on SIGTERM: its signal connector sets ``trainer.received_sigterm``,
the training loop raises ``SIGTERMException`` once the batch under way is done (under DDP rank 0's
flag is broadcast at the start of every batch, so all ranks stop at the same one), and every
callback's ``on_exception`` runs. ``StopOnSignal`` adds what a resumable run needs:

* SIGINT takes the same path (Python would raise ``KeyboardInterrupt`` wherever the process is,
  usually inside a forward or backward, which no checkpoint can resume exactly). A second Ctrl-C
  exits at once, with status 130 and without a checkpoint (the previous ``last.ckpt`` stays
  intact: writes are atomic).
* A signal during validation stops after it (a checkpoint taken mid-validation would lose the
  metrics of the batches already evaluated).
* In ``on_exception`` the ``last.ckpt`` callback (``LastCheckpoint``) saves the state after the
  last completed batch, loader position and random generators included: the same state that a
  periodic ``--last_checkpoint.every_n_train_steps`` checkpoint holds, which resumes bit for bit.
* One line on stderr says what was saved and how to resume (``--ckpt_path auto``), and the
  process exits with 128 + the signal's number (130, 143), so a restart policy or a retry loop
  sees a failure and starts the same command again.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resnet_lit.checkpointing.resume import LastCheckpoint
from resnet_lit.lightning_private import (
    save_checkpoint_unless_saved_this_step,
    set_stop_after_batch,
    stop_after_batch_requested,
)

_HANDLED = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # signals received by the running fit, in order (read by exit_status)


def exit_status() -> int:
    """128 + the first signal that stopped the fit (SIGTERM when none was seen here: Lightning's path)."""
    return 128 + int(_received[0] if _received else signal.SIGTERM)


def _tell(trainer: pl.Trainer | None, text: str) -> None:
    # os.write, not print: this also runs in signal handlers, which may interrupt a print to stderr
    if trainer is None or trainer.is_global_zero:
        os.write(sys.stderr.fileno(), f"resnet-lit: {text}\n".encode())


class StopOnSignal(Callback):
    """Save ``last.ckpt`` and exit with a resume hint on SIGINT or SIGTERM (see the module docstring)."""

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._previous: dict[int, Any] = {}
        self._pending = False  # a signal arrived during validation: stop when it ends
        self._start_step = 0

    # ----------------------------------------------------------------- handlers
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self._trainer, self._pending = trainer, False
        _received.clear()
        # Installed before Lightning's connector (it registers after the setup hooks), which keeps
        # this SIGTERM handler and calls it after its own.
        for signum in _HANDLED:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        trainer = self._trainer
        if trainer is None:  # not fitting (any more): behave as before this fit
            _pass_on(signum, frame, self._previous.get(signum))
            return
        if signum == signal.SIGINT and signal.SIGINT in _received:
            _tell(trainer, "second interrupt: exiting now, without a checkpoint "
                           "(the last one saved is intact; resume with `--ckpt_path auto`).")
            os._exit(128 + signal.SIGINT)
        _received.append(signum)
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            # Lightning stops on its SIGTERM flag; under DDP rank 0's flag reaches every rank at the
            # next batch (a flag set on another rank alone would stop that rank out of step).
            if trainer.world_size == 1 or trainer.global_rank == 0:
                set_stop_after_batch(trainer, True)
            _tell(trainer, f"{name}: stopping after this batch to save a checkpoint (Ctrl-C again to exit now).")
        if trainer.validating or trainer.sanity_checking:
            self._pending = self._pending or stop_after_batch_requested(trainer)
            set_stop_after_batch(trainer, False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:
            self._pending = False
            set_stop_after_batch(trainer, True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore()

    def _restore(self) -> None:
        self._trainer = None
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    # ----------------------------------------------------------------- the stop
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self._trainer = None  # a signal from here on gets the behaviour from before the fit
        name = signal.Signals(_received[0]).name if _received else "SIGTERM"
        last = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)), None)
        step = trainer.global_step
        if step == self._start_step or last is None:
            where = f"from {trainer.ckpt_path}" if trainer.ckpt_path else "from the start"
            _tell(trainer, f"{name}: stopped at step {step}, before any step of this run: nothing new to save. "
                           f"The same command starts again {where}.")
            return
        save_checkpoint_unless_saved_this_step(last, trainer)
        path = Path(last.dirpath or ".") / f"{last.filename}{last.FILE_EXTENSION}"
        _tell(trainer, f"{name}: stopped at step {step} (epoch {trainer.current_epoch}); saved {path}. "
                       "Resume: the same command with `--ckpt_path auto` (or `--ckpt_path last`).")


def _pass_on(signum: int, frame: FrameType | None, previous: Any) -> None:
    """What the signal did before this fit installed its handler."""
    if callable(previous):
        previous(signum, frame)
    elif previous in (None, signal.SIG_DFL):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
