"""What resnet-lit adds to a Lightning checkpoint, and where it reads it back.

Lightning saves weights, optimiser, schedule, loop counters and callback states. resnet-lit adds:

* ``checkpoint["resnet_lit"]``: which resnet-lit wrote it (``version``) in which layout (``format``,
  ``FORMAT`` below: a reader refuses a newer format with one line rather than misread it), and
  what the weights are (``arch_spec``, ``class_names``), for loaders
  that never build the LightningModule (``export``, ``init_weights``), and, in a checkpoint taken
  inside an epoch, the epoch's training-accuracy counts (``train_counts``, from ``TrainAccuracy``),
  and the run's ``trainer.max_steps``/``max_epochs`` (``trainer``: a resume lists a change);
* ``checkpoint["wandb_run_id"]``: a resumed run logs on into the same wandb run;
* each rank's random generators (``RNGState``, a callback state keyed ``"RNGState"``: this
  process's states, and every rank's under ``"ranks"``);
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
import torch.distributed as dist
from lightning.fabric.utilities.seed import pl_worker_init_function, reset_seed
from lightning.pytorch.callbacks import Callback

from resnet_lit._version import __version__
from resnet_lit.checkpointing.readable import CheckpointFileError, safe_torch_load

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


# The trainer settings a resume may change on purpose, recorded to list them when it does (resume_plan.py).
TRAINER_LIMITS = ("max_steps", "max_epochs")


def add_trainer_limits(checkpoint: dict[str, Any], trainer: pl.Trainer) -> None:
    """Record how long the run was set to train, in the record ``add_model_record`` wrote."""
    checkpoint.setdefault(RECORD_KEY, {})["trainer"] = {key: getattr(trainer, key) for key in TRAINER_LIMITS}


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


def training_checkpoint_or_none(obj: Any, path: str | Path | None = None) -> dict[str, Any] | None:
    """``obj`` if it is a Lightning training checkpoint (weights and loop state) that this resnet-lit
    reads, None if it is something else (a state dict, weights); ``CheckpointFileError`` if a newer
    resnet-lit wrote it. The one test of "a training checkpoint we can read", wherever one is read."""
    if not (isinstance(obj, Mapping) and "state_dict" in obj and "pytorch-lightning_version" in obj):
        return None
    check_format(obj, path)
    return obj  # type: ignore[return-value]


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The training checkpoint at ``path`` (tensors and plain data only, memory-mapped), or a
    ``CheckpointFileError`` whose one line names the file and what to do: empty, cut short, unsafe
    (``UnsafeCheckpointError``), newer than this resnet-lit, or weights rather than a training state."""
    checkpoint = training_checkpoint_or_none(safe_torch_load(path), path)
    if checkpoint is None:
        raise NotATrainingCheckpoint(
            f"{path} holds weights, not a training checkpoint (no Lightning state_dict and loop state): "
            f"to start from these weights, pass --model.init_weights {path} instead.")
    return checkpoint


class NotATrainingCheckpoint(CheckpointFileError):
    """A weights file given where a run's checkpoint (weights, optimiser, loop state) is needed."""


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
    """Each rank's random generators: seeded from (seed, global rank), checkpointed and restored per rank.

    The CIFAR crops and flips, PCA lighting, MixUp / CutMix and stochastic depth draw from the global
    generators (torch's CPU and CUDA, Python's ``random``, numpy). ``seed_everything`` gives every
    process the same seed, so under DDP each rank would draw the same crops, flips, lambda and masks
    as every other. Once the process group exists (``setup``), each rank is re-seeded from (seed,
    global rank) with Lightning's own mix of seed and rank (``pl_worker_init_function``, what its
    DataLoader workers get; ``torch.manual_seed`` seeds the CUDA generators too). A one-process run
    keeps the ``seed_everything`` stream as it is.

    Lightning checkpoints weights, optimiser, schedule and loop counters but not the generators; a
    resumed process would start their streams again. ``state_dict`` holds this process's states
    (torch CPU, Python, numpy, and the CUDA generator of this process's own device) and, under DDP,
    every rank's under ``"ranks"`` (gathered at each save: Lightning writes rank 0's checkpoint only),
    indexed by global rank. ``load_state_dict`` restores the entry of this process's global rank, the
    CUDA state into its own device only. A resume on another number of ranks: a rank the checkpoint
    holds a state for restores it; a rank it holds none for (the job grew, or the checkpoint kept one
    state: a one-process run's, or resnet-lit 0.1's) keeps its fresh (seed, rank) seeding, a stream
    no rank of a run that never shrank has drawn from. Data order changes with the number of
    ranks anyway, so such a resume is not exact; a resume on the same ranks is, on each rank.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # After the process group exists (Lightning's DDP has just re-seeded every rank alike), before
        # a checkpoint's states are restored: a resumed run then draws on from where it stopped.
        if trainer.world_size > 1:
            reset_seed()  # torch.initial_seed() is the seed again, whatever drew since
            pl_worker_init_function(0, trainer.global_rank)

    def state_dict(self) -> dict[str, Any]:
        state = _generator_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank saves (Lightning calls this on all of them), so every rank takes part.
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, state)
            state["ranks"] = ranks
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        saved = state_dict.get("ranks") or [state_dict]  # one state: the process's, or rank 0's
        if rank < len(saved):
            _set_generator_states(saved[rank])


def _generator_states() -> dict[str, Any]:
    # Tensors, ints and tuples only, so the checkpoint still loads with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_device"] = torch.cuda.get_rng_state()  # this process's device only
    return state


def _set_generator_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif "cuda" in state:  # resnet-lit 0.1: every visible device's state; this process's device is its own
        device = torch.cuda.current_device()
        if device < len(state["cuda"]):
            torch.cuda.set_rng_state(state["cuda"][device])


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
