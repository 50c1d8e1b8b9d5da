"""Plain multi-process DDP on one machine: 2 CPU processes (gloo) through the CLI and the
configs/trainer/ddp_cpu.yaml overlay, on real CIFAR-10 images."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_two_process_ddp_on_cpu(repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    run_dir, ranks = tmp_path / "run", tmp_path / "ranks"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "LOCAL_RANK", "NODE_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(repo_root / "tests"), env.get("PYTHONPATH", "")]))
    cmd = [
        str(Path(sys.executable).parent / "resnet-lit"), "fit",
        "--config", "configs/cifar10/resnet20.yaml", "--config", "configs/trainer/cpu.yaml",
        "--config", "configs/trainer/ddp_cpu.yaml",
        "--data.root", str(cifar_root), "--data.subset", "256", "--data.batch_size", "32",
        "--model.width", "0.25", "--trainer.max_steps", "8", "--run_dir", str(run_dir),
        "--trainer.callbacks+=" + json.dumps({"class_path": "scale_helpers.RecordRanks", "init_args": {"folder": str(ranks)}}),
    ]
    res = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
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
