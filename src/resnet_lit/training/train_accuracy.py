"""TrainAccuracy: the training epoch's top-1 and top-5 hits, counted on the hot path, and their
place in a checkpoint.

Hits are summed on the device and images counted on the host, instead of two torchmetrics updates
a step (an eighth of their host time on a CPU, docs/benchmarks.md). The counts are not a buffer:
DDP would broadcast rank 0's counts every step. A checkpoint taken inside an epoch carries them
(``state_dict``), so a run resumed mid-epoch logs the whole epoch's figure, as ``RNGState`` carries
the random generators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class TrainAccuracy:
    """Running top-1 / top-``top_k`` hits and images seen, on this rank, since the epoch started."""

    def __init__(self, top_k: int = 5) -> None:
        self.top_k = top_k
        self.hits: torch.Tensor | None = None  # [hits1, hits5] on the device of the logits
        self.seen = 0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        hits = logits.topk(self.top_k, dim=1).indices == y.unsqueeze(1)  # [B, k], best first
        counts = torch.stack((hits[:, 0].sum(), hits.any(dim=1).sum()))
        if self.hits is None:
            self.hits = torch.zeros(2, dtype=torch.long, device=counts.device)
        elif self.hits.device != counts.device:  # counts restored from a checkpoint on the CPU
            self.hits = self.hits.to(counts.device)
        self.hits += counts
        self.seen += y.shape[0]

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
