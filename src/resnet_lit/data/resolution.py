"""Training resolution by epoch: FFCV's progressive resizing, carried to the DataLoader workers.

``ProgressiveResize`` is the schedule (FFCV's ``get_resolution`` in ffcv-imagenet's
train_imagenet.py): ``start_size`` up to and including ``start_epoch``, ``end_size`` from
``end_epoch`` on, and in between the straight line rounded to a multiple of ``step`` pixels.

The size has to reach the worker processes, which hold their own copy of the dataset (persistent
workers live across epochs, so setting an attribute in the main process would not reach them).
``SizedShardSampler`` therefore sends it with every index: it yields ``((index, seed), size)`` (the
per-image seed of ``SeededShardSampler``, so crops stay exact on resume) with the size of its
current epoch (which Lightning sets with ``set_epoch`` before each epoch's iterator), and
``AtSize`` sets the crop transform's ``size`` in whichever process reads the item, then reads it.
Each item knows its size, so no batch mixes two sizes and nothing is shared between processes.

Every new size is a new input shape: ``torch.compile`` compiles the model again (once per size,
then it reuses each graph), and CUDA graphs record again; ``cudnn.benchmark`` tunes again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch.utils.data import Dataset

from .samplers import SeededShardSampler


@dataclass(frozen=True)
class ProgressiveResize:
    """Training image side by epoch (FFCV-style progressive resizing).

    Args:
        start_size: side in pixels up to and including ``start_epoch`` (FFCV ResNet-50: 160).
        end_size: side from ``end_epoch`` on (FFCV ResNet-50: 192).
        start_epoch: last epoch (0-based) at ``start_size``.
        end_epoch: first epoch at ``end_size``; in between, linear, rounded to ``step``.
        step: the sizes in between are multiples of this (FFCV: 32).
    """

    start_size: int = 160
    end_size: int = 192
    start_epoch: int = 0
    end_epoch: int = 0
    step: int = 32

    def __post_init__(self) -> None:
        if min(self.start_size, self.end_size, self.step) < 1:
            raise ValueError(f"progressive_resize: sizes and step must be >= 1, got {self}")
        if self.end_epoch < self.start_epoch:
            raise ValueError(f"progressive_resize: end_epoch ({self.end_epoch}) must be >= start_epoch "
                             f"({self.start_epoch})")

    def size_at(self, epoch: int) -> int:
        """The training side in pixels for 0-based ``epoch``."""
        if epoch <= self.start_epoch:
            return self.start_size
        if epoch >= self.end_epoch:
            return self.end_size
        t = (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        size = self.start_size + t * (self.end_size - self.start_size)
        return max(self.step, int(round(size / self.step)) * self.step)

    def sizes(self, max_epochs: int) -> list[int]:
        """``size_at`` for epochs 0 .. max_epochs - 1 (what a run will train at: one compile each)."""
        return [self.size_at(e) for e in range(max_epochs)]


class SizedShardSampler(SeededShardSampler):
    """A ``SeededShardSampler`` whose items are ``((index, seed), size)``, ``size = size_at(epoch)``
    (single indices only: the ImageNet loader batches in the DataLoader)."""

    def __init__(self, n: int, *, schedule: ProgressiveResize, **kwargs) -> None:
        if kwargs.get("batch_size") is not None:
            raise ValueError("SizedShardSampler yields single indices: use it without batch_size")
        super().__init__(n, **kwargs)
        self.schedule = schedule

    def __iter__(self) -> Iterator[tuple[tuple[int, int], int]]:
        size = self.schedule.size_at(self.epoch)
        for i in super().__iter__():
            yield i, size


class AtSize(Dataset):
    """``dataset[(item, size)]``: ``dataset.transform.size = size``, then ``dataset[item]``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[tuple[int, int], int]):
        item, size = item
        self.dataset.transform.size = size
        return self.dataset[item]
