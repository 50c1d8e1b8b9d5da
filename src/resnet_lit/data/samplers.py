"""Per-rank index shards that DDP needs and Lightning leaves alone.

Training: every epoch one permutation of all indices, seeded by ``seed + epoch``, is cut to a
multiple of the world size and dealt out round-robin, so the ranks' shards are disjoint, together
cover the set (up to ``world_size - 1`` left-over indices) and are equally long (DDP needs every
rank to run the same number of steps). Evaluation: rank ``r`` takes indices ``r, r + W, r + 2W ...``
in order, with no padding, so every sample is counted exactly once (the shards differ by at most
one sample; ``torch.utils.data.DistributedSampler`` instead repeats samples to even them out).

``ShardSampler`` subclasses ``DistributedSampler`` only so that Lightning's
``use_distributed_sampler=True`` (the default) sees a distributed sampler already in place and
does not wrap it (``_requires_distributed_sampler`` in
``lightning/pytorch/trainer/connectors/data_connector.py``). Lightning still calls its
``set_epoch`` at the start of every epoch (``_set_sampler_epoch`` in the fit loop).

Resuming mid-epoch: ``ResumableLoader`` counts the batches it has handed out this epoch and gives
that count to Lightning (>= 2.3), which stores it in the checkpoint (``loops.fit_loop.state_dict.
combined_loader``) and hands it back on resume; the sampler then starts that many batches into
the same epoch's permutation, so a resumed run trains on exactly the batches it had not seen.

Repeated augmentation (``repeats`` = k > 1, Hoffer et al. 2020; DeiT's RASampler, timm's
RepeatAugSampler): every index of the epoch's permutation appears k times in a row before the
deal, so its k copies go to k consecutive ranks (on a single rank: neighbouring places, mostly
one batch), each augmented on its own. ``repeat_epoch="all_repeats"`` keeps all n * k (each image
exactly k times an epoch, the epoch k times longer); ``"dataset_size"`` keeps the first n of them,
as DeiT, timm and torchvision do (an epoch as long as without repeats, about n / k distinct images;
they also round n down to a multiple of 256, which this does not). The order is still a function
of (seed, epoch), so mid-epoch resume stays exact with repeats on.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, DistributedSampler

RepeatEpoch = Literal["all_repeats", "dataset_size"]


def epoch_length(n: int, repeats: int = 1, repeat_epoch: RepeatEpoch = "all_repeats") -> int:
    """Indices in one epoch's order before the deal: n, or n * repeats (``all_repeats``)."""
    if repeats < 1:
        raise ValueError(f"repeated_augmentation must be >= 1 (1: off), got {repeats}")
    if repeat_epoch not in ("all_repeats", "dataset_size"):
        raise ValueError(f"repeated_augmentation_epoch {repeat_epoch!r}: use all_repeats or dataset_size")
    return n * repeats if repeat_epoch == "all_repeats" else n


def shard_indices(
    n: int, rank: int, world_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, even: bool = True,
    repeats: int = 1, repeat_epoch: RepeatEpoch = "all_repeats",
) -> torch.Tensor:
    """Indices of ``range(n)`` that rank ``rank`` of ``world_size`` reads this epoch (int64 tensor).

    ``even=True`` (training) drops the ``n % world_size`` left-over indices so all ranks get
    ``n // world_size``; ``even=False`` (evaluation) keeps them, so shards differ by at most one.
    ``repeats`` > 1 (training): each index k times in a row, ``repeat_epoch`` says how many are kept.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if repeats > 1:
        order = order.repeat_interleave(repeats)[: epoch_length(n, repeats, repeat_epoch)]
    if even:
        order = order[: len(order) - len(order) % world_size]
    return order[rank::world_size]


class ShardSampler(DistributedSampler):
    """This rank's shard of ``range(n)``: single indices, or index batches when ``batch_size`` is set.

    With ``batch_size`` the sampler yields lists of indices, for a dataset whose ``__getitem__``
    takes a whole list (in-memory CIFAR) and a ``DataLoader(batch_size=None)``. ``drop_last``
    drops the last short batch (static shapes for ``torch.compile``). ``repeats`` and
    ``repeat_epoch``: repeated augmentation (training shards only; see the module docstring).
    """

    def __init__(
        self,
        n: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        batch_size: int | None = None,
        drop_last: bool = False,
        repeats: int = 1,
        repeat_epoch: RepeatEpoch = "all_repeats",
    ) -> None:
        # Deliberately not calling DistributedSampler.__init__: it wants a dataset and a process
        # group; we only need the isinstance check to keep Lightning from wrapping us.
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n = n
        self.rank = rank
        self.num_replicas = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.batch_size = batch_size
        self.drop_last = drop_last
        epoch_length(n, repeats, repeat_epoch)  # checks both
        if repeats > 1 and not shuffle:
            raise ValueError("repeated augmentation is for training shards (shuffle=True) only")
        self.repeats, self.repeat_epoch = repeats, repeat_epoch
        self.start = 0  # items (or batches) the next iteration skips; set by ResumableLoader, used once

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        # Shuffled (training) shards are even; ordered (evaluation) shards keep every sample.
        return shard_indices(
            self.n, self.rank, self.num_replicas, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
            even=self.shuffle, repeats=self.repeats, repeat_epoch=self.repeat_epoch,
        )

    def __iter__(self) -> Iterator:
        skip, self.start = self.start, 0
        idx = self.indices()
        if self.batch_size is None:
            yield from idx[skip:].tolist()
            return
        for start in range(skip * self.batch_size, len(idx), self.batch_size):
            batch = idx[start : start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch.tolist()

    def __len__(self) -> int:
        # Arithmetic, not len(self.indices()): no permutation just to count.
        w = self.num_replicas
        if self.shuffle:
            per_rank = epoch_length(self.n, self.repeats, self.repeat_epoch) // w
        else:
            per_rank = max(0, -(-(self.n - self.rank) // w))
        if self.batch_size is None:
            return per_rank
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)


class SeededShardSampler(ShardSampler):
    """A training ``ShardSampler`` that yields ``(index, seed)``; the seed is a function of (seed, epoch, rank,
    place in the epoch), and the data set (``folder.ImageFiles``, ``shards.ShardImages``) draws that image's
    random crop and flip from it alone: the same whichever worker decodes it, whatever the loader had
    prefetched when a checkpoint was written, and however many batches a resumed run skips. Without it the
    crops follow the workers' RNG streams (or, with ``num_workers: 0``, the main process's, already advanced
    by the prefetched batch when the checkpoint is written), and a resumed run's crops differ from the
    uninterrupted run's (tests/test_shards.py, mid-epoch resume, folder and shards)."""

    def __iter__(self) -> Iterator:
        first = self.start  # items skipped (ShardSampler.__iter__ resets it)
        if self.batch_size is not None:
            raise ValueError("SeededShardSampler yields single indices (batch_size=None)")
        for place, i in enumerate(super().__iter__(), start=first):
            yield i, zlib.crc32(f"{self.seed}/{self.epoch}/{self.rank}/{place}".encode())


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a ``ShardSampler`` that knows how far into the epoch it is.

    ``state_dict()`` -> ``{"epoch", "batches"}``: batches handed out in the sampler's current epoch
    (counted here, not in the sampler, which worker processes read ahead of training). Lightning
    calls it when it saves a checkpoint and calls ``load_state_dict`` before the resumed epoch;
    the next iteration then skips that many batches if it is the same epoch, and none otherwise
    (a checkpoint taken after an epoch's last batch resumes at the start of the next epoch).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ShardSampler):
            raise TypeError(f"ResumableLoader needs a ShardSampler, got {type(self.sampler).__name__}")
        self._epoch = 0
        self._batches = 0
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}

    def __iter__(self) -> Iterator:
        # A generator: this body runs at the first next(), after Lightning's set_epoch, which
        # Lightning calls only after it has created the epoch's iterator.
        sampler = self.sampler
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == sampler.epoch else 0
        sampler.start = skip if sampler.batch_size is not None else skip * (self.batch_size or 1)
        self._epoch, self._batches = sampler.epoch, skip
        for batch in super().__iter__():
            self._batches += 1
            yield batch
