"""Static evaluation shapes: the last, short validation / test / predict batch padded to full size.

An evaluation set rarely divides by the batch size (CIFAR's 10,000 test images in batches of 128
leave 16), and on several ranks each rank's shard ends in its own short batch. Each new batch size
is a new input shape: ``torch.compile`` compiles again (first a graph with a dynamic batch
dimension, slower than the static one), and CUDA graphs (``mode: reduce-overhead``) record again,
at every validation. Padding the short batch to ``eval_batch_size`` keeps one shape for the whole
run, at the cost of computing the padded rows of one batch per evaluation.

Padded rows are zero images (finite after normalisation, so no NaN can reach a metric). Their
label is ``PADDED_LABEL``, distinct from ``SKIPPED_LABEL`` (an unreadable image, counted as
skipped): the metrics, the loss and the image count leave padded rows out and count them nowhere
(``training/eval_metrics.py``), so ``val/images`` stays exact on any number of ranks. In predict
the padded rows' paths are ``None``, the mark ``PredictionWriter`` already drops a row by (as for a
skipped image).
"""

from __future__ import annotations

from typing import Any

import torch

from .labels import PADDED_LABEL


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with ``rows`` zero rows appended along dim 0 (any trailing shape: [B, C, H, W], [B, K, C, H, W])."""
    return torch.cat((x, x.new_zeros((rows, *x.shape[1:]))))


def pad_eval_batch(batch: Any, size: int) -> Any:
    """An ``(x, target)`` evaluation batch of fewer than ``size`` images padded to ``size``; others as
    they are. ``x``: a tensor [B, ...] or a list of them (multi-scale views); ``target``: labels [B]
    (padded with ``PADDED_LABEL``) or paths (predict, padded with ``None``)."""
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
        return batch
    x, target = batch
    views = list(x) if isinstance(x, (list, tuple)) else [x]
    if not views or not all(isinstance(v, torch.Tensor) for v in views):
        return batch
    rows = size - views[0].shape[0]
    if rows <= 0:
        return batch
    padded = [_pad_rows(v, rows) for v in views]
    x = padded if isinstance(x, (list, tuple)) else padded[0]
    if isinstance(target, torch.Tensor):
        target = torch.cat((target, target.new_full((rows,), PADDED_LABEL)))
    else:  # predict: paths
        target = [*target, *([None] * rows)]
    return x, target
