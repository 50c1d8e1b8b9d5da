"""A full disk: the checkpoint write that fails leaves the previous last.ckpt intact and loadable,
and the run ends with one line naming the file (checkpointing/atomic_write.py, runs/failures.py).

Real tmpfs file systems, mounted for the test (root with mount rights, as in CI; skipped elsewhere,
with the reason), under a real `resnet-lit fit`.
"""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fit_helpers import run_fit, small_fit_args

from resnet_lit.runs.csv_logger import _AppendingWriter
from resnet_lit.training.nonfinite import nonfinite_tensors


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator:
    """``mount(size)``: a fresh tmpfs of that size (mount's syntax: 600k, 4m); all unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        try:
            res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no `mount` command here: a full disk is tested on a tmpfs")
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with mount rights): {res.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=False)


def _fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    assert os.statvfs(disk).f_bavail == 0


def _fit_args(run_dir: Path, cifar_root: Path, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    # 128 images, 32 a step: 4 steps an epoch, best-*.ckpt and last.ckpt (213 kB each) at every epoch end
    return small_fit_args(run_dir, root=cifar_root, subset=128, steps=steps, width=0.25,
                          extra=["--trainer.enable_progress_bar", "false", *extra])


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_keeps_the_previous_one(repo_root: Path, cifar_root: Path, tmpfs) -> None:
    # Room for the first epoch's two checkpoints and the logs, not for the next one's temp file.
    disk = tmpfs("600k")
    run_dir = disk / "run"
    res = run_fit(repo_root, _fit_args(run_dir, cifar_root, steps=12))
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"resnet-lit: error: out of space writing {run_dir / 'checkpoints'}/"), last
    assert ".ckpt (No space left on device; " in last and "the files already there are intact" in last, last
    assert last.endswith("Free space, then start the same command again with `--ckpt_path auto` "
                         "(it resumes from the newest checkpoint, if any)."), last
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-000-0000004.ckpt", "last.ckpt"]  # no temp file
    ckpt = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and nonfinite_tensors(ckpt["state_dict"]) == []
    with open(run_dir / "metrics.csv") as f:
        assert {int(r["step"]) for r in csv.DictReader(f)} == set(range(8))  # every step logged before the stop

    # Space freed (the tmpfs grown): the run resumes from that last.ckpt and finishes.
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
    res = run_fit(repo_root, _fit_args(run_dir, cifar_root, steps=12, extra=("--ckpt_path", "auto")))
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 12


def test_full_disk_at_the_start_is_one_line(repo_root: Path, cifar_root: Path, tmpfs) -> None:
    disk = tmpfs("64k")
    _fill(disk)  # config.yaml, the run's first file, cannot be written
    res = run_fit(repo_root, _fit_args(disk / "run", cifar_root, steps=4))
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"resnet-lit: error: out of space writing a file (No space left on device; the run directory {disk / 'run'} "
        "has 0.0 MiB free). Free space, then start the same command again with `--ckpt_path auto` (it resumes "
        "from the newest checkpoint, if any).")


def test_metrics_csv_keeps_its_rows_when_a_rewrite_hits_a_full_disk(tmpfs) -> None:
    disk = tmpfs("64k")
    writer = _AppendingWriter(str(disk))
    step = 0
    # Rows up to just below a page boundary: the rewrite below (one more column) needs one page more
    # than the file holds, so even a rewrite in place, which frees the file's pages first, fails.
    while (size := (disk / "metrics.csv").stat().st_size if step else 0) < 4096 or size % 4096 < 3900:
        writer.log_metrics({"train/loss": 2.302585}, step=step)
        writer.save()
        step += 1
    before = (disk / "metrics.csv").read_text()
    _fill(disk)
    writer.log_metrics({"val/error": 90.0}, step=step)  # a new column: the whole file is rewritten
    with pytest.raises(OSError, match="No space left on device"):
        writer.save()
    assert (disk / "metrics.csv").read_text() == before  # Lightning's own writer leaves it truncated here
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "metrics.csv"]
