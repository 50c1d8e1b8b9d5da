"""The training loss: cross-entropy (the paper's, optionally label-smoothed) or binary cross-entropy
(timm's "ResNet strikes back", Wightman et al. 2021, arXiv:2110.00476), on hard or soft targets.

Targets are either class indices [B] (int) or class probabilities [B, C] (float, each row summing to
one: what MixUp / CutMix give). ``label_smoothing`` mixes either with the uniform distribution,
``(1 - s) * y + s / C``, as ``nn.CrossEntropyLoss`` does for both kinds; a row whose label is
``SKIPPED_LABEL`` (an unreadable image left in its slot) adds nothing to the loss.

Binary cross-entropy treats each class as its own yes/no question against the (smoothed) target
probability, and, as timm's ``BinaryCrossEntropy``, averages over images and classes: its value is
about 1/C of a cross-entropy's, which the RSB recipes' learning rates assume.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from resnet_lit.data.labels import SKIPPED_LABEL

LossKind = Literal["ce", "bce"]


class BinaryCrossEntropy(nn.Module):
    """Mean sigmoid cross-entropy of logits [B, C] against one-hot or soft targets, label-smoothed."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # in float32 under bf16/fp16 autocast too: soft targets keep their digits
        num_classes = logits.shape[-1]
        if y.ndim == 1:  # class indices; a skipped slot's row is masked out below
            keep = y != SKIPPED_LABEL
            target = F.one_hot(y.clamp_min(0), num_classes).float()
        else:
            keep, target = None, y.float()
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        if keep is None:
            return F.binary_cross_entropy_with_logits(logits, target)
        losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
        return (losses * keep).sum() / keep.sum().clamp_min(1)  # no host sync: skipped rows weigh 0

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


# kind -> loss class; both take label_smoothing and accept index or probability targets
LOSSES: dict[str, type[nn.Module]] = {"ce": nn.CrossEntropyLoss, "bce": BinaryCrossEntropy}


def build_loss(kind: LossKind, label_smoothing: float = 0.0) -> nn.Module:
    """The training criterion ``kind`` (``ce`` or ``bce``), label-smoothed by ``label_smoothing``."""
    if kind not in LOSSES:
        raise ValueError(f"loss {kind!r} is not known; use one of {', '.join(LOSSES)}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return LOSSES[kind](label_smoothing=label_smoothing)
