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
