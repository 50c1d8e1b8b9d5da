"""Stop a run whose loss is not finite, and never save a checkpoint with weights that are not.

A loss that turns to NaN or infinity (too high a learning rate, a broken batch) poisons the weights
at the next optimiser step; a run that carries on writes NaN weights over ``last.ckpt`` at its next
checkpoint, and then there is nothing good left to resume.

Two checks, both in ``ImageClassifier`` (steps counted as ``trainer.global_step`` and the ``step``
column of metrics.csv: optimiser steps done before the one in question):

- The loss: every training step records, on the device, the first step whose loss was not finite
  (three small operations, no host synchronisation: small nets on a GPU would wait for every step).
  The record is read on the steps the logger writes (``trainer.log_every_n_steps``, where the
  logged loss synchronises anyway), gathered over all ranks so they stop together, and a bad loss
  raises :class:`NonFiniteLossError` there. A run therefore stops at most ``log_every_n_steps - 1``
  steps after the first bad loss (at once with ``--trainer.log_every_n_steps 1``), and the message
  names that first step and its learning rate. Lightning's ``detect_anomaly`` (torch's anomaly
  mode) checks the output of every backward operation instead, at a far higher cost.
- The weights: every checkpoint (``last.ckpt``, ``best-*``, SLURM's ``hpc_ckpt_N``, any other save)
  first checks that every floating tensor of the state dict is finite, and raises
  :class:`NonFiniteLossError` instead of writing. DDP replicates the weights, so every rank decides
  the same without communicating. The check costs one pass over the weights per save.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from resnet_lit.checkpointing.contents import read_training_checkpoint
from resnet_lit.checkpointing.readable import CheckpointFileError
from resnet_lit.checkpointing.resume import LastCheckpoint, find_resume_checkpoint

_NONE = 2**62  # "no bad step yet" in the device record


class NonFiniteLossError(RuntimeError):
    """The run stopped because the loss or the weights are not finite. ``str()`` is the whole message."""


class NonFiniteWatch:
    """The first training step whose loss was not finite, recorded without synchronising the device
    (three small operations a step), and the learning rate of each step since the last check."""

    KEEP_LRS = 10_000  # steps whose learning rate is kept (the check comes every log_every_n_steps)

    def __init__(self) -> None:
        self._first: torch.Tensor | None = None  # int64 on the loss's device; _NONE: every loss finite
        self._lrs: dict[int, float] = {}

    def update(self, loss: torch.Tensor, step: int, lr: float) -> None:
        bad_step = torch.where(torch.isfinite(loss.detach()), _NONE, step)
        self._first = bad_step if self._first is None else torch.minimum(self._first, bad_step)
        self._lrs[step] = lr
        if len(self._lrs) > self.KEEP_LRS:
            del self._lrs[next(iter(self._lrs))]

    def record(self, loss: torch.Tensor, trainer: Any) -> None:
        """``update`` with the trainer's step and learning rate (of the first parameter group)."""
        optimizers = trainer.optimizers if trainer is not None else []
        self.update(loss, trainer.global_step, float(optimizers[0].param_groups[0]["lr"]) if optimizers else math.nan)

    def stop_if_bad(self, trainer: Any) -> None:
        """Raise :class:`NonFiniteLossError` if a loss since the last check was not finite, on any
        rank (all ranks call this on the same steps). Synchronises."""
        bad = self.first_bad(gather_ranks if trainer.world_size > 1 else None)
        if bad is not None:
            step, lr = bad
            when = "" if step == trainer.global_step else f" (found at step {trainer.global_step})"
            raise NonFiniteLossError(stop_message(
                f"the training loss is not finite at step {step}, learning rate {lr:.6g}{when}: stopped before "
                "that step's update", trainer))

    def first_bad(self, gather: Any = None) -> tuple[int, float] | None:
        """(step, lr) of the first loss that was not finite, over all ranks if ``gather``
        (:func:`gather_ranks`) is given; None if every loss was finite. Synchronises."""
        lrs, self._lrs = self._lrs, {}
        if self._first is None:
            return None
        step = int((self._first if gather is None else gather(self._first)).min())
        return None if step == _NONE else (step, lrs.get(step, math.nan))


def gather_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank, stacked (plain ``all_gather``: Lightning's goes through the autograd
    version, which torch now warns about on every call)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.unsqueeze(0)
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return torch.stack(out)


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating tensors of ``state_dict`` that hold a NaN or an infinity (one sync)."""
    names = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state_dict[k]).all() for k in names]).cpu()
    return [k for k, ok in zip(names, finite.tolist()) if not ok]


def last_good_checkpoint(trainer: Any) -> tuple[Path | None, int | None]:
    """The run's newest checkpoint (all of them are finite: see the module docstring) and its step."""
    dirs = [cb.dirpath for cb in getattr(trainer, "checkpoint_callbacks", []) if isinstance(cb, LastCheckpoint)]
    found = find_resume_checkpoint(trainer.default_root_dir, dirs[0]) if dirs and dirs[0] else None
    if found is None:
        return None, None
    try:  # memory-mapped: reads the step, not the weights
        return found, int(read_training_checkpoint(found)["global_step"])
    except (CheckpointFileError, KeyError, OSError):  # the message can do without the step
        return found, None


def stop_message(what: str, trainer: Any) -> str:
    """The line of a :class:`NonFiniteLossError`: what went wrong, what was kept, how to go on."""
    path, step = last_good_checkpoint(trainer)
    if path is None:
        return f"{what}; no checkpoint was written before it."
    at = f" (step {step})" if step is not None else ""
    return (f"{what}; nothing was saved after it. The last good checkpoint is {path}{at}: resuming it "
            "(--ckpt_path last) repeats the same steps; to lower the learning rate, start a new run from its "
            f"weights (--model.init_weights {path} --run_dir NEW_DIR).")


def refuse_nonfinite_checkpoint(checkpoint: dict[str, Any], trainer: Any) -> None:
    """Never a checkpoint with weights that are not finite (over last.ckpt, the one to resume from):
    ``NonFiniteLossError`` naming the step, the tensors and the last good checkpoint instead."""
    bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
    if bad:
        raise NonFiniteLossError(stop_message(
            f"the weights are not finite at step {checkpoint.get('global_step')} ({len(bad)} tensors, "
            f"the first {bad[0]}; the loss is checked every --trainer.log_every_n_steps), so the checkpoint "
            "was not written", trainer))
