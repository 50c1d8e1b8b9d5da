"""TrainAccuracy: the training epoch's top-1 and top-5 hits, counted on the hot path, and their
place in a checkpoint.

Hits are summed on the device and images counted on the host, instead of two torchmetrics updates
a step (an eighth of their host time on a CPU, docs/benchmarks.md). The counts are not a buffer:
DDP would broadcast rank 0's counts every step. A checkpoint taken inside an epoch carries them
(``state_dict``), so a run resumed mid-epoch logs the whole epoch's figure, as ``RNGState`` carries
the random generators.

Soft targets (MixUp / CutMix: float [B, C], class probabilities) count a hit when the image's top-1
(or any of its top-k) logit is the target's most probable class, ``y.argmax(1)``: for a mixed image
that is the class with the larger share (the lower class index on a tie), so on mixed batches the figure
measures how often the net finds the dominant class, not an accuracy on clean images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from resnet_lit.lightning_private import epoch_batches_done_and_validating


def hit_counts(logits: torch.Tensor, y: torch.Tensor, top_k: int) -> torch.Tensor:
    """[top-1 hits, top-``top_k`` hits] of a batch, int64 on the device of ``logits``; ``y``: class
    indices [B] or class probabilities [B, C] (counted against their argmax)."""
    if y.ndim == 2:
        y = y.argmax(1)
    hits = logits.topk(top_k, dim=1).indices == y.unsqueeze(1)  # [B, k], best first
    return torch.stack((hits[:, 0].sum(), hits.any(dim=1).sum()))


class TrainAccuracy:
    """Running top-1 / top-``top_k`` hits and images seen, on this rank, since the epoch started."""

    def __init__(self, top_k: int = 5) -> None:
        self.top_k = top_k
        self.hits: torch.Tensor | None = None  # [hits1, hits5] on the device of the logits
        self.seen = 0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """``y``: class indices [B], or class probabilities [B, C] (counted against their argmax)."""
        self.add(hit_counts(logits, y, self.top_k), y.shape[0])

    def add(self, counts: torch.Tensor, images: int) -> None:
        """Add ``hit_counts`` of a batch of ``images`` images (the compiled step counts them on the device)."""
        if self.hits is None:
            self.hits = torch.zeros(2, dtype=torch.long, device=counts.device)
        elif self.hits.device != counts.device:  # counts restored from a checkpoint on the CPU
            self.hits = self.hits.to(counts.device)
        self.hits += counts
        self.seen += images

    def reset(self) -> None:
        self.hits, self.seen = None, 0

    def compute(self, reduce: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                reset: bool = True) -> tuple[float, float] | None:
        """Top-1 and top-k accuracy over every rank (``reduce`` sums a tensor over ranks; every rank
        calls it, even one with no batches), then reset unless ``reset=False`` (the running figure
        logged within an epoch); None when no rank saw an image."""
        local = torch.zeros(3, dtype=torch.long, device=device)
        if self.hits is not None:
            local[:2] = self.hits.to(device)
        local[2] = self.seen
        hits1, hits5, seen = reduce(local).tolist()
        if reset:
            self.reset()
        if seen == 0:
            return None
        return hits1 / seen, hits5 / seen

    def state_dict(self) -> dict[str, int]:
        hits = self.hits.tolist() if self.hits is not None else [0, 0]
        return {"hits1": hits[0], "hits5": hits[1], "seen": self.seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.hits = torch.tensor([state_dict["hits1"], state_dict["hits5"]], dtype=torch.long)
        self.seen = int(state_dict["seen"])

    def for_checkpoint(self, trainer: Any, epoch: int) -> dict[str, int] | None:
        """The epoch's counts so far for a checkpoint, so that a mid-epoch resume logs the whole
        epoch's figure. None after an epoch end (logged and reset by then), and none in the
        validation after an epoch's last batch: resumed from there, Lightning replays only
        ``on_train_epoch_end``, and a train/error row then would be the epoch's second."""
        if not self.seen or (trainer is not None and epoch_batches_done_and_validating(trainer)):
            return None
        return {"epoch": epoch, **self.state_dict()}

    def restore(self, counts: dict[str, Any] | None, global_rank: int) -> None:
        """Carry on with the counts of a mid-epoch checkpoint. They are rank 0's (only rank 0 writes
        the checkpoint), so the other ranks start from zero and the epoch's figure covers rank 0's
        whole share and every rank's rest: no image twice."""
        if counts and global_rank == 0:
            self.load_state_dict(counts)
