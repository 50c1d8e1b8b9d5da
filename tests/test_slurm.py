"""scripts/slurm/train.sbatch on a real (local, two-node) SLURM cluster: DDP over two "nodes"
on CPU with gloo, and preemption by SIGUSR1 -> hpc checkpoint -> requeue -> automatic resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fit_helpers import small_fit_args
from slurm_cluster import (
    SlurmCluster,
    _free_ports,
    ensure_slurm_installed,
    slurm_unavailable_reason,
    start_cluster,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 12  # 256 images / 2 ranks / 32 per device = 4 steps an epoch: 3 epochs


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """slurmctld + slurmd n1 + slurmd n2 under a temp dir; installs SLURM first if root with apt."""
    ensure_slurm_installed()
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()


def _submit(cluster: SlurmCluster, repo_root: Path, cifar_root: Path, work: Path, *extra_fit: str,
            callbacks: list[dict], wait: bool) -> tuple[int, Path]:
    """sbatch the real template on 2 nodes x 1 task (CPU), returning (job id, run dir)."""
    run_dir = work / "run"
    env = cluster.env
    env.update(
        PYTHONPATH=os.pathsep.join([str(repo_root / "tests"), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",  # the simulated node names n1/n2 do not resolve
        MASTER_PORT=str(_free_ports(1)[0]),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    )
    fit_args = small_fit_args(run_dir, root=cifar_root, subset=256, steps=STEPS, width=0.25, configs=(), extra=[
        "--trainer.deterministic", "true", *[f"--trainer.callbacks+={json.dumps(cb)}" for cb in callbacks], *extra_fit,
    ])
    cmd = [
        "sbatch", "--parsable", "--job-name=rl-test", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
        "--gpus-per-node=0", "--time=10", f"--output={work}/%x-%j.out", f"--chdir={repo_root}",
        *(["--wait"] if wait else []),
        str(repo_root / "scripts/slurm/train.sbatch"),
        "configs/cifar10/resnet20.yaml", "configs/trainer/cpu.yaml", "configs/trainer/ddp_cpu.yaml",
        "--", *fit_args,
    ]
    import subprocess

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    job_id = int(res.stdout.strip().split(";")[0]) if res.stdout.strip() else -1
    if wait and res.returncode != 0:
        log = next(work.glob("*.out"), None)
        pytest.fail(f"sbatch --wait exited {res.returncode}: {res.stderr}\n{log.read_text()[-4000:] if log else ''}")
    assert job_id > 0, res.stderr
    return job_id, run_dir


def _val_epochs(metrics: Path) -> list[int]:
    with open(metrics) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/error")]


def _train_steps(metrics: Path) -> list[int]:
    with open(metrics) as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster: SlurmCluster, repo_root: Path, cifar_root: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("slurm_ddp")
    ranks = work / "ranks"
    _, run_dir = _submit(slurm_cluster, repo_root, cifar_root, work,
                         callbacks=[{"class_path": "scale_helpers.RecordRanks", "init_args": {"folder": str(ranks)}}],
                         wait=True)
    return work, run_dir


def test_two_node_ddp_job(uninterrupted: tuple[Path, Path]) -> None:
    work, run_dir = uninterrupted
    records = sorted(p.read_text().strip() for p in (work / "ranks").glob("rank*.txt"))
    assert records == [
        "RANK=0 NODE_RANK=0 WORLD_SIZE=2 SLURM_NODEID=0 RESTART=0",
        "RANK=1 NODE_RANK=1 WORLD_SIZE=2 SLURM_NODEID=1 RESTART=0",
    ]
    log = next(work.glob("rl-test-*.out")).read_text()
    # the module states the global batch and the scaled lr at the start (0.1 per 128 images)
    assert "global batch 64 = 32 per device x 1 device(s) x 2 node(s) x 1 accumulation; lr 0.05 = 0.1 x 64/128" in log
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["best-002-0000012.ckpt", "last.ckpt"]
    assert [p.name for p in run_dir.glob("*.csv")] == ["metrics.csv"]
    assert _val_epochs(run_dir / "metrics.csv") == [0, 1, 2]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS


def test_sigusr1_checkpoints_requeues_and_resumes(slurm_cluster: SlurmCluster, repo_root: Path, cifar_root: Path,
                                                  tmp_path: Path, uninterrupted: tuple[Path, Path]) -> None:
    progress = tmp_path / "progress.txt"
    job, run_dir = _submit(
        slurm_cluster, repo_root, cifar_root, tmp_path, "--config", "configs/logger/wandb.yaml",
        callbacks=[{"class_path": "scale_helpers.Progress", "init_args": {"path": str(progress), "sleep_s": 0.4}}],
        wait=False,
    )
    # Mid-training (epoch 1): SIGUSR1 to the job's tasks, as --signal=USR1@90 does before the time limit.
    deadline = time.monotonic() + 180
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 6):
        assert time.monotonic() < deadline, f"job {job} made no progress: {slurm_cluster.job_state(job)}"
        assert slurm_cluster.job_state(job) in {"PENDING", "RUNNING", "CONFIGURING"}
        time.sleep(0.2)
    slurm_cluster.run("scancel", "--signal=USR1", str(job))
    # Lightning saves hpc_ckpt_1.ckpt and runs `scontrol requeue`; the job comes back PENDING with a
    # begin time ~2 min ahead: start it now.
    slurm_cluster.wait_for_state(job, {"PENDING"}, timeout=120)
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file()
    hpc_step = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"]
    assert 6 <= hpc_step < STEPS
    slurm_cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
    state = slurm_cluster.wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=300)
    log = next(tmp_path.glob("rl-test-*.out")).read_text()
    assert state == "COMPLETED", log[-4000:]
    assert slurm_cluster.job_field(job, "Restarts") == "1"
    assert "restart 1:" in log and f"Restoring states from the checkpoint path at {run_dir / 'hpc_ckpt_1.ckpt'}" in log

    # Same optimiser steps as the uninterrupted job, every epoch validated exactly once.
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS
    assert _val_epochs(run_dir / "metrics.csv") == [0, 1, 2]
    _, reference = uninterrupted
    assert sorted(set(_train_steps(run_dir / "metrics.csv"))) == sorted(set(_train_steps(reference / "metrics.csv")))

    # wandb (offline) continued the same run: one run id, a run directory per start.
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    ids = {p.name.rsplit("-", 1)[-1] for p in runs}
    assert len(runs) == 2 and len(ids) == 1, [p.name for p in runs]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["wandb_run_id"] in ids


def test_the_template_run_without_sbatch_says_how_to_submit_it(repo_root: Path) -> None:
    """`bash train.sbatch ...` (a common slip) stops at once, saying to use sbatch, not on an unset SLURM variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    res = subprocess.run(["bash", str(repo_root / "scripts/slurm/train.sbatch"), "configs/r50.yaml"],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "submit it with sbatch" in res.stderr and "configs/r50.yaml" in res.stderr and "unbound" not in res.stderr
