"""Which checkpoint a (re)started run resumes from: ``--ckpt_path auto``.

A SLURM job submitted with ``--requeue`` runs the same command line every time it starts, so
the command must work both on the very first start (nothing to resume: Lightning's
``ckpt_path="hpc"`` raises there, Lightning-AI/pytorch-lightning#20347, and ``"last"`` fails in our CLI)
and after a preemption (resume from the ``hpc_ckpt_N.ckpt`` that the SIGUSR1 handler wrote in
the run directory) or a node failure (no hpc checkpoint was written: resume from
``checkpoints/last.ckpt``). ``auto`` picks the newest of those, or none.
Picking it ourselves, rather than leaving ``ckpt_path=None`` to Lightning's implicit SLURM
resume, also lets the CLI read the wandb run id from the checkpoint it resumes.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback

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


class RNGState(Callback):
    """Checkpoint the random number generators, so a resumed run draws what an uninterrupted one would.

    Lightning checkpoints weights, optimiser, schedule and loop counters but not the global RNGs;
    a resumed process is re-seeded with ``seed_everything`` and would replay the random crops and
    flips of epoch 0 (the CIFAR augmentation draws from the global torch generator). With this
    callback the restored state continues the stream where the checkpoint was taken.
    Under DDP the checkpoint holds rank 0's state and every rank loads it: Lightning seeds all
    ranks alike and they draw the same amounts, so their streams are identical anyway.
    """

    def state_dict(self) -> dict[str, Any]:
        # Tensors, ints and tuples only, so the checkpoint still loads with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)


class EpochEndLoopState(Callback):
    """Record an epoch-end checkpoint in the one form Lightning resumes exactly in step-based runs.

    With ``max_steps`` set (every resnet-lit recipe), Lightning treats every resume as a restart
    inside an epoch (``_FitLoop.restarting`` is always True for iteration-based training). It
    resumes exactly from a checkpoint taken in validation after an epoch's last batch: it finishes
    that batch (one more logging step), then runs the epoch-end hooks and moves to the next epoch.
    Checkpoints written later in the epoch's end, in ``on_train_epoch_end`` (where
    ``ModelCheckpoint`` saves when validation runs once an epoch) or ``on_train_end``, already
    count the epoch as processed; resumed as they are, the run counts the epoch twice: the
    sampler shuffles with the next epoch's seed, and the logging step jumps by one. So this
    callback writes those checkpoints as if taken in that validation: epoch not yet processed,
    logging step one back. The resumed run replays ``on_train_epoch_end`` (the module logs nothing
    there when no batch was seen). A run stopped by ``max_steps`` inside an epoch is recorded as
    inside that epoch, so a longer run resumes there (at the right batch, see ``ResumableLoader``).
    Epoch-based runs (``max_steps=-1``) resume exactly without this and are left alone.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        loop = checkpoint.get("loops", {}).get("fit_loop")
        if trainer.max_steps == -1 or not loop or "epoch_progress" not in loop:
            return
        epochs = loop["epoch_progress"]
        if epochs["current"]["processed"] != epochs["current"]["started"]:
            return  # taken inside the epoch (batch end, validation): Lightning resumes it
        for counts in (epochs["current"], epochs["total"]):
            counts["processed"] -= 1
            counts["completed"] = counts["processed"]
        batches = loop["epoch_loop.batch_progress"]
        epoch_done = batches["is_last_batch"] or batches["current"]["completed"] >= trainer.num_training_batches
        if epoch_done:  # the resumed run finishes the last batch again, stepping the logger once
            loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
