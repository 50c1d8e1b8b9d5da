"""A CSVLogger whose metrics.csv survives a resume into the same run directory.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts ("Previous log files in
this directory will be deleted"), so a run resumed after a preemption (``--ckpt_path auto`` /
``last``) would lose every row before the checkpoint. This writer keeps the file and appends.
Rows the interrupted process logged *after* its checkpoint are replayed by the resumed one; they
are dropped when the resumed process logs its first row (old rows with a step at or after that
row's step), so each step and each epoch appears once.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        self._resumed_rows: list[dict[str, str]] | None = None
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by __init__: keep the file, remember its rows
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.DictReader(f)
                self._resumed_rows = list(reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def save(self) -> None:
        if self._resumed_rows is not None and self.metrics:
            first = min(int(m["step"]) for m in self.metrics if m.get("step") is not None)
            keep = [r for r in self._resumed_rows if r.get("step") in (None, "") or int(r["step"]) < first]
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(keep)
            self._resumed_rows = None
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing metrics.csv instead of deleting it (see module doc).

    Every logged row is written at once (Lightning's writer keeps up to 100 steps in memory): a
    process killed without warning loses no row it logged before its last checkpoint.
    """

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self.experiment.save()

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
