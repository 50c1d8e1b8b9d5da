"""Which checkpoint a (re)started run resumes from: ``--ckpt_path auto``.

A SLURM job submitted with ``--requeue`` runs the same command line every time it starts, so
the command must work both on the very first start (nothing to resume: Lightning's
``ckpt_path="hpc"`` raises there, Lightning-AI/pytorch-lightning#20347, and ``"last"`` fails in our CLI)
and after a preemption (SLURM's requeue signal: ``runs.interrupt`` saved ``checkpoints/last.ckpt``)
or a node failure (resume from the newest ``checkpoints/last.ckpt``). ``auto`` picks the newest of
that and an ``hpc_ckpt_N.ckpt`` in the run directory (Lightning's own SLURM handler wrote those,
as older resnet-lit versions let it), or none.
Picking it ourselves, rather than leaving ``ckpt_path=None`` to Lightning's implicit SLURM
resume, also lets the CLI read the wandb run id from the checkpoint it resumes.

``LastCheckpoint`` writes the ``checkpoints/last.ckpt`` that ``--ckpt_path last`` and ``auto`` find:
after every validation, every N steps or minutes if asked, on SIGINT/SIGTERM (``runs.interrupt``)
and when training stops. Outside SLURM ``auto`` finds it just the same, so a container restart
policy, a torchrun restart or a shell retry loop runs one unchanged command.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint

from resnet_lit.lightning_private import (
    at_epoch_last_batch,
    load_restored_loader_states,
    save_checkpoint_unless_saved_this_step,
)

AUTO = "auto"
_HPC = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


def hpc_checkpoints(run_dir: str | Path) -> list[Path]:
    """``hpc_ckpt_N.ckpt`` files Lightning's SLURM handler saved in ``run_dir``, by N ascending."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _HPC.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def find_resume_checkpoint(run_dir: str | Path, checkpoint_dir: str | Path) -> Path | None:
    """The newest of the run's last hpc checkpoint and ``checkpoint_dir/last.ckpt``; None if neither exists.

    Newest by modification time: the run only ever writes these two kinds, each save is a later
    point of the same training, and a resumed run keeps writing into the same directory.
    """
    candidates = hpc_checkpoints(run_dir)[-1:]
    last = Path(checkpoint_dir) / "last.ckpt"
    if last.is_file():
        candidates.append(last)
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path, checkpoint_dir: str | Path) -> str | None:
    """Turn the CLI's ``--ckpt_path`` into a file path (or None) before Lightning sees it.

    - ``"auto"``: :func:`find_resume_checkpoint` (None on a first start: train from scratch).
    - ``None`` on SLURM with an hpc checkpoint present: the same choice Lightning would make
      implicitly (it resumes ``hpc_ckpt_N`` when ``ckpt_path`` is None), made explicit so the
      newer ``last.ckpt`` wins when there is one and the wandb id can be read from the file.
    - anything else: unchanged.
    """
    if ckpt_path == AUTO:
        found = find_resume_checkpoint(run_dir, checkpoint_dir)
        return str(found) if found else None
    if ckpt_path is None and SLURMEnvironment.detect() and hpc_checkpoints(run_dir):
        return str(find_resume_checkpoint(run_dir, checkpoint_dir))
    return ckpt_path


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the newest state, after every validation and when training stops, and optionally
    every ``every_n_train_steps`` optimiser steps or every ``train_time_interval`` ("h:m:s") of training.

    Lightning 2.6 refreshes a ``save_last=True`` checkpoint only when the monitored one improves,
    and a run stopped by ``max_steps`` mid-epoch would keep an older file: this one is what
    ``--ckpt_path last`` and a requeued job resume from, so it must be the newest state.
    ``ModelCheckpoint`` takes only one of its step, time and epoch triggers; here the periodic ones
    come on top of the epoch's. A periodic save is taken at a batch's end, the point that resumes
    exactly (loader position included); none on an epoch's last batch, whose state is saved after
    its validation anyway. The file is replaced atomically (``AtomicCheckpointIO``), so training
    stalls only for the write. Under DDP rank 0's clock decides the time trigger for all ranks, checked
    on logging steps (``trainer.log_every_n_steps``): no collective on the other steps.
    Its checkpoint state is keyed by its class name and these settings (``state_key``): keep both.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None,
                 train_time_interval: timedelta | None = None) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"last_checkpoint.every_n_train_steps must be >= 1 (or null), got {every_n_train_steps}")
        if train_time_interval is not None and train_time_interval.total_seconds() <= 0:
            raise ValueError(f"last_checkpoint.train_time_interval must be positive (h:m:s), got {train_time_interval}")
        self.every_n_steps = every_n_train_steps
        self.time_interval = train_time_interval
        self._last_periodic = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_periodic = time.monotonic()
        load_restored_loader_states(trainer)  # before the epoch's first batch is drawn

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # no step/time trigger of its own
        if self.every_n_steps is None and self.time_interval is None:
            return
        due = bool(self.every_n_steps and trainer.global_step % self.every_n_steps == 0)  # alike on every rank
        # The clocks differ between ranks, so rank 0's decides (one broadcast): on logging steps only,
        # not every step (a collective per step at 256 ranks); the interval is checked that often.
        if self.time_interval is not None and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            late = time.monotonic() - self._last_periodic >= self.time_interval.total_seconds()
            due = due or bool(trainer.strategy.broadcast(late))
        stopping = 0 < trainer.max_steps <= trainer.global_step  # on_train_end saves it
        if due and not stopping and not at_epoch_last_batch(trainer) and not trainer.sanity_checking:
            save_checkpoint_unless_saved_this_step(self, trainer)
            self._last_periodic = time.monotonic()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        save_checkpoint_unless_saved_this_step(self, trainer)
