"""What resnet-lit adds to a Lightning checkpoint, and where it reads it back.

Lightning saves weights, optimiser, schedule, loop counters and callback states. resnet-lit adds:

* ``checkpoint["resnet_lit"]``: which resnet-lit wrote it (``version``) in which layout (``format``,
  ``FORMAT`` below: a reader refuses a newer format with one line rather than misread it), and
  what the weights are (``arch_spec``, ``class_names``), for loaders
  that never build the LightningModule (``export``, ``init_weights``), and, in a checkpoint taken
  inside an epoch, the epoch's training-accuracy counts (``train_counts``, from ``TrainAccuracy``);
* ``checkpoint["wandb_run_id"]``: a resumed run logs on into the same wandb run;
* the global random generators (``RNGState``, a callback state keyed ``"RNGState"``);
* the fit loop's counters of a checkpoint taken at an epoch's end, written in the form Lightning
  resumes exactly (``EpochEndLoopState``).

Everything is plain data (tensors, numbers, strings, lists, dicts): checkpoints load with
``torch.load(weights_only=True)``. Callback states are keyed by class name: keep the names.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from resnet_lit import __version__
from resnet_lit.checkpointing.readable import CheckpointFileError

RECORD_KEY = "resnet_lit"
WANDB_KEY = "wandb_run_id"
# The layout of what resnet-lit writes into a checkpoint (this module). Raise it when a change would make
# an older resnet-lit misread a new checkpoint; readers then refuse checkpoints of a newer format.
# Checkpoints written before the number (resnet-lit 0.1.0) have this layout: format 1.
FORMAT = 1


def add_model_record(
    checkpoint: dict[str, Any], arch_spec: dict[str, Any], class_names: list[str] | None,
    train_counts: dict[str, int] | None = None,
) -> None:
    """Write what the weights are (and, inside an epoch, the epoch's training counts so far)."""
    checkpoint[RECORD_KEY] = {"version": __version__, "format": FORMAT, "arch_spec": dict(arch_spec),
                              "class_names": class_names}
    if train_counts is not None:
        checkpoint[RECORD_KEY]["train_counts"] = train_counts


def check_format(checkpoint: Mapping[str, Any], path: str | Path | None = None) -> None:
    """``CheckpointFileError`` if a newer resnet-lit wrote ``checkpoint`` in a format this one cannot read."""
    record = checkpoint.get(RECORD_KEY)
    if not isinstance(record, Mapping):
        return  # no resnet-lit record: another program's Lightning checkpoint, read as such
    written = record.get("format", 1)
    if isinstance(written, int) and not isinstance(written, bool) and written <= FORMAT:
        return
    name = f"{path}" if path is not None else "this checkpoint"
    raise CheckpointFileError(
        f"{name} was written by resnet-lit {record.get('version', '?')} in checkpoint format {written!r}; "
        f"this resnet-lit {__version__} reads formats up to {FORMAT}. Upgrade resnet-lit to read it "
        "(pip install -U resnet-lit)."
    )


def train_counts_of(checkpoint: dict[str, Any]) -> dict[str, int] | None:
    """``{"epoch", "hits1", "hits5", "seen"}`` when the checkpoint was taken inside an epoch."""
    counts = checkpoint.get(RECORD_KEY, {}).get("train_counts")
    return counts if counts and counts.get("seen") else None


def add_wandb_run_id(checkpoint: dict[str, Any], trainer: pl.Trainer) -> None:
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and logger.version:
            checkpoint[WANDB_KEY] = logger.version
            return


def wandb_run_id_of(checkpoint: dict[str, Any]) -> str | None:
    return checkpoint.get(WANDB_KEY)


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

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
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
