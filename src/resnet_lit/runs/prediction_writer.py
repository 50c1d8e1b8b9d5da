"""Write `resnet-lit predict` results to a CSV: one row per image, its top-k classes by name.

    file,class1,prob1,class2,prob2,...,class5,prob5
    /data/dogs/a.jpg,n02099601,0.912345,n02088364,0.041234,...

Rows are written batch by batch (nothing accumulates in memory on a large folder) into
`predictions.csv.partial`, renamed to `predictions.csv` when every image is done: a run that stops
half-way leaves a file that says so and keeps an earlier complete CSV. With several processes (DDP)
each rank writes its own file, `predictions.rank<R>.csv`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

log = logging.getLogger("resnet_lit")


def class_names_for(pl_module: pl.LightningModule, trainer: pl.Trainer | None, num_classes: int) -> list[str]:
    """Names in label order: the model's `class_names` hyperparameter (what it was trained on), else the
    DataModule's `classes`, else the indices as strings."""
    names = getattr(pl_module, "hparams", {}).get("class_names")
    if not names and trainer is not None:
        names = getattr(getattr(trainer, "datamodule", None), "classes", None)
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    if names:
        log.warning("ignoring %d class names for a %d-class model; writing indices", len(names), num_classes)
    return [str(i) for i in range(num_classes)]


class PredictionWriter(BasePredictionWriter):
    """CSV of the top-`top_k` classes and probabilities for every image of `predict_step` outputs
    `{"paths": [str, ...], "probs": Tensor[B, num_classes]}`.

    Args:
        output: CSV path; None writes `<trainer.default_root_dir>/predictions.csv` (the run directory).
        top_k: classes per row (at most the number of classes).
    """

    def __init__(self, output: str | None = None, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.output, self.top_k = output, top_k
        self.path: Path | None = None  # the CSV, once complete
        self.partial: Path | None = None  # where rows go until then
        self._names: list[str] | None = None
        self._rows = 0

    def _file(self, trainer: pl.Trainer) -> Path:
        path = Path(self.output) if self.output else Path(trainer.default_root_dir) / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path = self._file(trainer)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._names, self._rows = None, 0
        self.partial.write_text("")  # a fresh file per predict run

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, dict) or "paths" not in prediction or "probs" not in prediction:
            raise TypeError("PredictionWriter needs predict_step to return {'paths', 'probs'}, "
                            f"got {type(prediction).__name__}")
        assert self.partial is not None
        probs: torch.Tensor = prediction["probs"].detach().float().cpu()
        paths = list(prediction["paths"])
        if len(paths) != probs.shape[0]:
            raise ValueError(f"predict_step returned {len(paths)} paths but {probs.shape[0]} rows of probabilities")
        k = min(self.top_k, probs.shape[1])
        if self._names is None:
            self._names = class_names_for(pl_module, trainer, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        # A path of None: an unreadable image that on_bad_image="skip" stood a neighbour in for; no row.
        rows = [(path, ps, idx) for path, ps, idx in zip(paths, top_p.tolist(), top_i.tolist()) if path is not None]
        with self.partial.open("a", newline="") as f:
            writer = csv.writer(f)
            if f.tell() == 0:
                writer.writerow(["file"] + [c for j in range(1, k + 1) for c in (f"class{j}", f"prob{j}")])
            for path, ps, idx in rows:
                writer.writerow([str(path)] + [v for p, i in zip(ps, idx) for v in (self._names[i], f"{p:.6f}")])
        self._rows += len(rows)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.partial is not None and self.path is not None
        self.partial.replace(self.path)
        log.info("wrote %d predictions to %s", self._rows, self.path)
        if trainer.is_global_zero:
            print(f"predictions: {self.path} ({self._rows} images)")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.partial is not None and self.partial.exists():
            log.warning("predict stopped: the %d rows written so far are in %s", self._rows, self.partial)
