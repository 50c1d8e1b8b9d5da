"""Plain multi-process DDP on one machine: 2 CPU processes (gloo) through the CLI and the
configs/trainer/ddp_cpu.yaml overlay, on real CIFAR-10 images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from fit_helpers import RECIPE, run_fit, small_fit_args

pytestmark = pytest.mark.slow


def test_two_process_ddp_on_cpu(repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    run_dir, ranks = tmp_path / "run", tmp_path / "ranks"
    record_ranks = {"class_path": "scale_helpers.RecordRanks", "init_args": {"folder": str(ranks)}}
    args = small_fit_args(run_dir, root=cifar_root, subset=256, steps=8, width=0.25,
                          configs=(*RECIPE, "configs/trainer/ddp_cpu.yaml"),
                          extra=["--trainer.callbacks+=" + json.dumps(record_ranks)])
    res = run_fit(repo_root, args)
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(p.read_text().split()[:3] for p in ranks.glob("rank*.txt")) == [
        ["RANK=0", "NODE_RANK=0", "WORLD_SIZE=2"], ["RANK=1", "NODE_RANK=0", "WORLD_SIZE=2"],
    ]
    out = res.stdout + res.stderr
    # The recipe's lr is per 128 images; 2 processes x 32 = 64 images a step.
    assert "global batch 64 = 32 per device x 2 device(s) x 1 node(s) x 1 accumulation; lr 0.05 = 0.1 x 64/128" in out
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8  # 256 images / 2 ranks / 32 = 4 steps an epoch, 2 epochs
    assert ckpt["epoch"] == 1 and (run_dir / "metrics.csv").is_file()
    # The logged training error is over both ranks' images: each rank counted its own 128 an
    # epoch, and the epoch-end figure is the sum of the two shares.
    counts = {}  # epoch -> [hits1, seen] summed over ranks
    for rank in (0, 1):
        lines = (ranks / f"counts{rank}.txt").read_text().split("\n")
        for epoch, hits1, _, seen in (map(int, line.split()) for line in lines if line):
            assert seen == 128, f"rank {rank} epoch {epoch}: {seen} images"
            total = counts.setdefault(epoch, [0, 0])
            total[0], total[1] = total[0] + hits1, total[1] + seen
    with open(run_dir / "metrics.csv") as f:
        logged = {int(r["epoch"]): float(r["train/error"]) for r in csv.DictReader(f) if r.get("train/error")}
    assert sorted(logged) == sorted(counts) == [0, 1]
    for epoch, (hits1, seen) in counts.items():
        assert logged[epoch] == pytest.approx(100 * (1 - hits1 / seen), abs=1e-4)


def test_no_collective_on_a_training_step_that_does_not_log(repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    """2 gloo ranks, logging every 4 steps, last.ckpt on a time interval: besides DDP's gradient
    all-reduce, a step that neither logs nor ends an epoch calls no torch.distributed collective (Lightning
    2.6 broadcasts its SIGTERM flag before every batch, and the time trigger broadcast every step)."""
    run_dir, folder = tmp_path / "run", tmp_path / "counts"
    count = {"class_path": "scale_helpers.CountCollectives", "init_args": {"folder": str(folder)}}
    args = small_fit_args(run_dir, root=cifar_root, subset=512, steps=16, width=0.25,
                          configs=(*RECIPE, "configs/trainer/ddp_cpu.yaml"),
                          extra=["--trainer.callbacks+=" + json.dumps(count), "--trainer.log_every_n_steps", "4",
                                 "--last_checkpoint.train_time_interval", "0:00:01"])
    res = run_fit(repo_root, args)
    assert res.returncode == 0, res.stderr[-4000:]
    for rank in (0, 1):
        per_step = {int(k): v for k, v in json.loads((folder / f"collectives{rank}.json").read_text()).items()}
        assert set(range(1, 17)) <= set(per_step)  # 512 images / 2 ranks / 32: 8 steps an epoch, 2 epochs
        # k: from batch k's optimiser step to batch k + 1's. Batch 4j logs in its training step (k = 4j - 1)
        # and the ranks agree on a stop after it (k = 4j); epochs end at k = 8, 16.
        quiet = {step: calls for step, calls in per_step.items() if step % 4 in (1, 2)}
        assert len(quiet) == 8 and all(calls == [] for calls in quiet.values()), quiet
        assert all("all_reduce" in per_step[step] for step in (4, 12)), per_step  # the stop agreement
