"""EvalMetrics: what one validation or test epoch measures, counted exactly over every rank.

Top-1 and top-k accuracy, the mean loss and the number of images evaluated, each summed over the
epoch and, under DDP, over ranks by torchmetrics (``compute`` reduces). A batch slot whose image was
unreadable (``on_bad_image: skip``) has the label ``SKIPPED_LABEL``: the accuracies ignore it, the
loss and the image count leave it out, and it is counted as skipped. A padding row of a short batch
made full size (``PADDED_LABEL``, data/padding.py) is left out the same way and counted nowhere,
so the figures and ``images`` are the same with padding as without. ``validate_args=False`` and
``nan_strategy="disable"``: their checks would synchronise the GPU on every step. The states are not
persistent (not in checkpoints), as torchmetrics' default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from resnet_lit.data.labels import PADDED_LABEL, SKIPPED_LABEL


def ignored_padding(y: torch.Tensor) -> torch.Tensor:
    """``y`` with padding rows marked ``SKIPPED_LABEL``, the ``ignore_index`` the losses and accuracies
    skip (on the device, no synchronisation)."""
    return y.masked_fill(y == PADDED_LABEL, SKIPPED_LABEL)


def accuracy_figures(acc1: Any, acck: Any) -> dict[str, Any]:
    """The columns logged for top-1 and top-k accuracy (fractions in): accuracies and errors, all in
    percent, so that ``acc1 + error == 100`` in every row a reader compares."""
    return {"acc1": 100 * acc1, "acc5": 100 * acck, "error": 100 * (1 - acc1), "error5": 100 * (1 - acck)}


class EvalMetrics(nn.Module):
    def __init__(self, num_classes: int, top_k: int = 5) -> None:
        super().__init__()
        self.acc1, self.acck = (MulticlassAccuracy(num_classes, top_k=k, average="micro", validate_args=False,
                                                   ignore_index=SKIPPED_LABEL) for k in (1, top_k))
        self.loss_sum, self.images, self.skipped = (SumMetric(nan_strategy="disable") for _ in range(3))

    def update(self, scores: torch.Tensor, y: torch.Tensor, losses: torch.Tensor) -> None:
        """``losses``: per image, 0 for a skipped slot or a padding row (``ignore_index=SKIPPED_LABEL``)."""
        skipped, padded = y == SKIPPED_LABEL, y == PADDED_LABEL
        y = ignored_padding(y)
        self.acc1.update(scores, y)
        self.acck.update(scores, y)
        self.loss_sum.update(losses.float().sum())
        self.images.update((~(skipped | padded)).sum())
        self.skipped.update(skipped.sum())

    def compute(self) -> dict[str, torch.Tensor] | None:
        """The epoch's figures over all ranks (errors in percent, as the paper reports them), then reset;
        None when nothing was seen (an epoch end replayed after a resume: no row of made-up errors)."""
        if self.acc1.update_count == 0:
            return None
        parts = (self.acc1, self.acck, self.loss_sum, self.images, self.skipped)
        acc1, acck, loss_sum, images, skipped = (m.compute() for m in parts)
        for m in parts:
            m.reset()
        out = {**accuracy_figures(acc1, acck), "loss": loss_sum / images.clamp_min(1), "images": images.float()}
        if skipped > 0:
            out["skipped_images"] = skipped.float()
        return out


def scores_and_losses(module: Any, x: Any, y: torch.Tensor,
                      label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One evaluation batch through ``module`` (an ``ImageClassifier``): the scores the accuracies
    rank and the loss of each image (0 for a skipped slot or a padding row). One view ([B, C, H, W]):
    logits and cross-entropy with the training's label smoothing; several crops ([B, K, C, H, W]) or
    scales (a list): probabilities averaged over them, as the paper's 10-crop testing, and their log loss."""
    y = ignored_padding(y)
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        scores = module(x)
        return scores, F.cross_entropy(scores, y, reduction="none", ignore_index=SKIPPED_LABEL,
                                       label_smoothing=label_smoothing)
    scores = module.predict_probs(x)
    return scores, F.nll_loss(scores.clamp_min(1e-12).log(), y, reduction="none", ignore_index=SKIPPED_LABEL)


def log_checkpoint_position(module: Any) -> None:
    """``validate`` / ``test`` of a checkpoint: its own epoch and step label the figures (a fresh Trainer
    counts from 0 whatever it restored). Lightning writes a logged ``step`` as the metrics row's step."""
    at = module.evaluated_checkpoint
    if at is not None and module.trainer.state.fn != "fit":
        module.log("epoch", float(at["epoch"]), rank_zero_only=True)
        module.log("step", float(at["global_step"]), rank_zero_only=True)
