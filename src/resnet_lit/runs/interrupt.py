"""Ctrl-C, SIGTERM and SLURM's requeue signal during ``fit``: stop at a batch boundary, save
``last.ckpt``, say how to resume (and under SLURM, requeue).

``StopOnSignal`` replaces Lightning's own handlers for these signals, because those act inside the
handler: Lightning's SLURM handler saves ``hpc_ckpt_N.ckpt`` and runs ``scontrol requeue`` there,
and its SIGTERM handler broadcasts a flag there. A handler runs between any two bytecodes: a save
ends in a barrier that can pair with another rank's gradient all-reduce (Lightning issue 21406),
and a forked DataLoader worker that inherited the handler saves its own stale copy of the model
(global step 0) and requeues the job. Here:

* The handler only records the signal, and does nothing at all in a forked copy of the training
  process (the DataLoader workers also ignore these signals outright: ``data.base``).
* The ranks agree at a batch boundary: every optimiser step on one process (no collective); under
  DDP one all-reduce of each rank's signal every ``check_every_n_steps`` steps (the logging
  interval by default, where the loss is read anyway) and after each validation. So the lead time
  of a scheduler's signal must cover that many steps plus one checkpoint write.
* Once they agree, every rank stops after the same batch: Lightning's fit loop raises
  ``SIGTERMException`` and every callback's ``on_exception`` runs, where the ``last.ckpt`` callback
  (``LastCheckpoint``) saves the state after the last completed batch, loader position and random
  generators included: the same state that a periodic checkpoint holds, which resumes bit for bit.
  A signal during validation stops after it (a checkpoint taken mid-validation would lose the
  metrics of the batches already evaluated).
* SIGINT takes the same path (Python would raise ``KeyboardInterrupt`` wherever the process is,
  usually inside a forward or backward). A second Ctrl-C exits at once, with status 130 and without
  a checkpoint (the previous ``last.ckpt`` stays intact: writes are atomic).
* SLURM's requeue signal (SIGUSR1, ``#SBATCH --signal``): after the save, rank 0 runs
  ``scontrol requeue`` unless ``requeue`` is false. ``scripts/slurm/train.sbatch`` sets it false and
  requeues from the batch script on the host, where ``scontrol`` exists (most containers have none);
  without one here the run says so in one line.
* One line on stderr says what was saved and how to resume (``--ckpt_path auto``), and the process
  exits with 128 + the signal's number (130, 143, 138), so a restart policy, a retry loop or the
  batch script sees why it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resnet_lit.checkpointing.resume import LastCheckpoint
from resnet_lit.lightning_private import (
    cluster_environment,
    save_checkpoint_unless_saved_this_step,
    set_stop_after_batch,
    skip_per_step_sigterm_broadcast,
    when_signal_handlers_registered,
)
from resnet_lit.runs.exit_codes import stopped_by

_stopped_by: list[int] = []  # the signal the ranks agreed to stop on (read by exit_status)


def exit_status() -> int:
    """128 + the signal that stopped the fit (SIGTERM when none was seen here: Lightning's path)."""
    return stopped_by(_stopped_by[0] if _stopped_by else signal.SIGTERM)


def ignore_termination_while_exiting() -> None:
    """The process exits after a stop on a signal: a SIGTERM or requeue signal now (srun ending the step
    because another rank exited first) must not replace the stop's exit status (138 requeues the job)."""
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGUSR1"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)


def _tell(trainer: pl.Trainer | None, text: str, error: bool = False) -> None:
    # os.write, not print: this also runs in signal handlers, which may interrupt a print to stderr
    if trainer is None or trainer.is_global_zero:
        os.write(sys.stderr.fileno(), f"resnet-lit: {'error: ' if error else ''}{text}\n".encode())


class StopOnSignal(Callback):
    """Save ``last.ckpt`` and exit with a resume hint on SIGINT, SIGTERM or SLURM's requeue signal (see the
    module docstring).

    Args:
        requeue: under SLURM, on its requeue signal, rank 0 runs ``scontrol requeue`` after the save.
            False where the batch script requeues (``scripts/slurm/train.sbatch``).
        check_every_n_steps: under DDP the ranks agree whether to stop every this many optimiser steps
            (one all-reduce of an integer); None: ``trainer.log_every_n_steps``. One process checks
            every step, at no cost.
    """

    def __init__(self, requeue: bool = True, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"stop_on_signal.check_every_n_steps must be >= 1 (or null), got {check_every_n_steps}")
        self.requeue = requeue
        self.check_every_n_steps = check_every_n_steps
        self._fitting: pl.Trainer | None = None
        self._pid = 0  # the training process; forked copies of it (DataLoader workers) leave signals to it
        self._previous: dict[int, Any] = {}
        self._signals: tuple[int, ...] = ()  # handled, in rising priority when ranks received different ones
        self._received: list[int] = []  # by this process, in order
        self._checked_step = -1
        self._start_step = 0
        self._exiting = False  # stopped on a signal: the process saves and exits

    # ----------------------------------------------------------------- handlers
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self._fitting, self._pid, self._checked_step, self._exiting = trainer, os.getpid(), -1, False
        self._received.clear()
        _stopped_by.clear()
        environment = cluster_environment(trainer)
        requeue_signal = (environment.requeue_signal if isinstance(environment, SLURMEnvironment)
                          and environment.auto_requeue else None)
        self._signals = (signal.SIGINT, signal.SIGTERM, *([requeue_signal] if requeue_signal else []))
        for signum in self._signals:
            self._previous[signum] = signal.getsignal(signum)
        # Installed before Lightning's connector registers its own (after the setup hooks), so it adds
        # no SLURM handler, and again right after, replacing its SIGTERM handler.
        self._install()
        when_signal_handlers_registered(trainer, self._install)
        skip_per_step_sigterm_broadcast(trainer)  # the ranks agree in _agree instead

    def _install(self) -> None:
        if self._fitting is not None and threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the training process acts on it
            return
        if self._exiting and signum != signal.SIGINT:
            # The ranks save and exit. One that exits first makes srun (--kill-on-bad-exit) SIGTERM the
            # others, whose exit status would then say 143 instead of the stop's (138 requeues the job).
            return
        trainer = self._fitting
        if trainer is None:  # not fitting (any more): behave as before this fit
            _pass_on(signum, frame, self._previous.get(signum))
            return
        if signum == signal.SIGINT and signal.SIGINT in self._received:
            _tell(trainer, "second interrupt: exiting now, without a checkpoint "
                           "(the last one saved is intact; resume with `--ckpt_path auto`).")
            os._exit(stopped_by(signal.SIGINT))
        if signum not in self._received:
            self._received.append(signum)
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            _tell(trainer, f"{name}: stopping {self._when(trainer)} to save a checkpoint (Ctrl-C again to exit now).")
        elif signum != signal.SIGTERM:
            _tell(trainer, f"{name} (SLURM: preemption or time limit): stopping {self._when(trainer)} "
                           "to save a checkpoint.")

    def _every(self, trainer: pl.Trainer) -> int:
        return max(1, self.check_every_n_steps or trainer.log_every_n_steps or 1)

    def _when(self, trainer: pl.Trainer) -> str:
        every = self._every(trainer)
        if trainer.world_size == 1 or every == 1:
            return "after this batch"
        return f"when the ranks next agree (every {every} steps)"

    # ----------------------------------------------------------------- agreeing to stop
    def _agree(self, trainer: pl.Trainer) -> None:
        """Every rank learns the highest-priority signal any rank received (one all-reduce under DDP)
        and, if there is one, stops after this batch."""
        mine = max((self._signals.index(s) + 1 for s in self._received if s in self._signals), default=0)
        agreed = mine
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            value = torch.tensor([mine], dtype=torch.int32, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
            agreed = int(value.item())
        if agreed and not 0 < trainer.max_steps <= trainer.global_step:  # done anyway: end as usual
            _stopped_by[:] = [self._signals[agreed - 1]]
            set_stop_after_batch(trainer, True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._fitting is None or step == self._checked_step:  # no step taken (gradient accumulation)
            return
        if trainer.world_size > 1 and step % self._every(trainer):
            return
        self._checked_step = step
        self._agree(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting is not None and not trainer.sanity_checking:  # every rank ends a validation together
            self._agree(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore()

    def _restore(self) -> None:
        self._fitting = None
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    # ----------------------------------------------------------------- the stop
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self._fitting = None  # a signal from here on gets the behaviour from before the fit
        self._exiting = bool(_stopped_by)
        signum = _stopped_by[0] if _stopped_by else signal.SIGTERM
        name = signal.Signals(signum).name
        last = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)), None)
        step = trainer.global_step
        if step == self._start_step or last is None:
            where = f"from {trainer.ckpt_path}" if trainer.ckpt_path else "from the start"
            _tell(trainer, f"{name}: stopped at step {step}, before any step of this run: nothing new to save. "
                           f"The same command starts again {where}.")
        else:
            save_checkpoint_unless_saved_this_step(last, trainer)
            path = Path(last.dirpath or ".") / f"{last.filename}{last.FILE_EXTENSION}"
            _tell(trainer, f"{name}: stopped at step {step} (epoch {trainer.current_epoch}); saved {path}. "
                           "Resume: the same command with `--ckpt_path auto` (or `--ckpt_path last`).")
        if signum not in (signal.SIGINT, signal.SIGTERM) and self.requeue and trainer.is_global_zero:
            _requeue_slurm_job(trainer)


def _requeue_slurm_job(trainer: pl.Trainer) -> None:
    """``scontrol requeue`` this job; one line when that cannot be done here."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID", "")
    if not job:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        _tell(trainer, f"cannot requeue SLURM job {job}: no `scontrol` command on this machine's PATH (inside a "
                       "container? most images have none). Requeue from the batch script on the host, as "
                       "scripts/slurm/train.sbatch does (--signal=B:USR1@90, --stop_on_signal.requeue false), "
                       f"or run `scontrol requeue {job}` yourself.", error=True)
        return
    except subprocess.TimeoutExpired:
        _tell(trainer, f"`scontrol requeue {job}` did not answer within 60 s: requeue the job yourself.", error=True)
        return
    if result.returncode == 0:
        _tell(trainer, f"requeued SLURM job {job}.")
    else:
        why = (result.stderr or result.stdout).strip().splitlines()
        _tell(trainer, f"`scontrol requeue {job}` failed with status {result.returncode}"
                       f"{': ' + why[-1] if why else ''}.", error=True)


def _pass_on(signum: int, frame: FrameType | None, previous: Any) -> None:
    """What the signal did before this fit installed its handler."""
    if callable(previous):
        previous(signum, frame)
    elif previous in (None, signal.SIG_DFL):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
