"""A CSVLogger whose metrics.csv survives a resume into the same run directory.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts ("Previous log files in
this directory will be deleted"), so a run resumed after a preemption (``--ckpt_path auto`` /
``last``) would lose every row before the checkpoint. This writer keeps the file and appends.
Rows the interrupted process logged *after* its checkpoint are replayed by the resumed one; they
are dropped when the resumed process logs its first row (old rows with a step at or after that
row's step), so each step and each epoch appears once.

The file is rewritten as a whole when a metric appears for the first time (a new column) and when a
resumed run drops the replayed rows; those rewrites go through a temp file and a rename
(``checkpointing.atomic_write.atomic_open``), so a full disk at that moment leaves the old rows
instead of an empty file. Plain appends are Lightning's.
"""

from __future__ import annotations

from typing import Any

from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.utilities import rank_zero_only

from resnet_lit.checkpointing.atomic_write import atomic_open
from resnet_lit.lightning_private import KeepingExperimentWriter, WriterChoosingCSVLogger


class _AppendingWriter(KeepingExperimentWriter):
    def save(self) -> None:
        if self.resumed_rows is not None and self.metrics:
            first = min(int(m["step"]) for m in self.metrics if m.get("step") is not None)
            keep = [r for r in self.resumed_rows if r.get("step") in (None, "") or int(r["step"]) < first]
            self.write_all(self.metrics_keys, keep)
            self.resumed_rows = None
        super().save()

    def open_for_rewrite(self, path: str) -> Any:  # a full disk mid-rewrite leaves the old rows
        if isinstance(self.fs, LocalFileSystem):
            return atomic_open(path, "w", newline="")
        return super().open_for_rewrite(path)


class ResumableCSVLogger(WriterChoosingCSVLogger):
    """``CSVLogger`` that appends to an existing metrics.csv instead of deleting it (see module doc).

    Every logged row is written at once (Lightning's writer keeps up to 100 steps in memory): a
    process killed without warning loses no row it logged before its last checkpoint.
    """

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self.experiment.save()

    def make_writer(self, log_dir: str) -> _AppendingWriter:
        return _AppendingWriter(log_dir=log_dir)
