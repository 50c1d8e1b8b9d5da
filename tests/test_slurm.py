"""scripts/slurm/train.sbatch on a real (local, two-node) SLURM cluster: DDP over two "nodes"
on CPU with gloo, and preemption by SIGUSR1 -> hpc checkpoint -> requeue -> automatic resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
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
from test_preemption import IMAGENET_CPU, imagenet_fit_args, woof_tree

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 12  # 256 images / 2 ranks / 32 per device = 4 steps an epoch: 3 epochs


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """slurmctld + slurmd n1 + slurmd n2 under a temp dir; installs SLURM first if root with apt."""
    yield from _running_cluster(tmp_path_factory.mktemp("slurm"))


def _running_cluster(path: Path, **options: str) -> Iterator[SlurmCluster]:
    """A started local cluster, stopped afterwards; the test skips (saying why) where SLURM cannot run."""
    ensure_slurm_installed()
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster(path, **options)
    try:
        yield cluster
    finally:
        cluster.stop()


def _submit(cluster: SlurmCluster, repo_root: Path, cifar_root: Path, work: Path, *extra_fit: str,
            callbacks: list[dict], wait: bool) -> tuple[int, Path]:
    """sbatch the real template on 2 nodes x 1 task (CPU) with the small CIFAR fit: (job id, run dir)."""
    run_dir = work / "run"
    fit_args = small_fit_args(run_dir, root=cifar_root, subset=256, steps=STEPS, width=0.25, configs=(), extra=[
        "--trainer.deterministic", "true", *[f"--trainer.callbacks+={json.dumps(cb)}" for cb in callbacks], *extra_fit,
    ])
    configs = ("configs/cifar10/resnet20.yaml", "configs/trainer/cpu.yaml", "configs/trainer/ddp_cpu.yaml")
    return _sbatch(cluster, repo_root, work, configs, fit_args, wait=wait), run_dir


def _sbatch(cluster: SlurmCluster, repo_root: Path, work: Path, configs: Sequence[str], fit_args: Sequence[str],
            wait: bool, sbatch_args: Sequence[str] = ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"),
            env: dict[str, str] | None = None) -> int:
    """sbatch scripts/slurm/train.sbatch CONFIGS -- FIT_ARGS (CPU, gloo); its job id."""
    given, env = env or {}, cluster.env
    env.update(
        PYTHONPATH=os.pathsep.join([str(repo_root / "tests"), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",  # the simulated node names n1/n2 do not resolve
        MASTER_PORT=str(_free_ports(1)[0]),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    )
    env.update(given)
    cmd = [
        "sbatch", "--parsable", "--job-name=rl-test", *sbatch_args,
        "--gpus-per-node=0", "--time=10", f"--output={work}/%x-%j.out", f"--chdir={repo_root}",
        *(["--wait"] if wait else []),
        str(repo_root / "scripts/slurm/train.sbatch"), *configs, "--", *fit_args,
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    job_id = int(res.stdout.strip().split(";")[0]) if res.stdout.strip() else -1
    if wait and res.returncode != 0:
        log = next(work.glob("*.out"), None)
        pytest.fail(f"sbatch --wait exited {res.returncode}: {res.stderr}\n{log.read_text()[-4000:] if log else ''}")
    assert job_id > 0, res.stderr
    return job_id


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
    # The training saves last.ckpt and exits with 138 (128 + SIGUSR1); the batch script then runs
    # `scontrol requeue` and the job comes back PENDING with a begin time ~2 min ahead: start it now.
    slurm_cluster.wait_for_state(job, {"PENDING"}, timeout=120)
    assert not list(run_dir.rglob("hpc_ckpt_*"))
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 6 <= stopped_at < STEPS
    slurm_cluster.start_requeued_now(job)
    state = slurm_cluster.wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=300)
    log = next(tmp_path.glob("rl-test-*.out")).read_text()
    assert state == "COMPLETED", log[-4000:]
    assert slurm_cluster.job_field(job, "Restarts") == "1"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "restart 1:" in log and f"Restoring states from the checkpoint path at {last}" in log
    assert f"resnet-lit: SIGUSR1: stopped at step {stopped_at} " in log

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


# ----------------------------------------------------------- preemption with DataLoader workers
WOOF_STEPS = 8  # 40 images / (2 ranks x 4) = 5 steps an epoch: the stop comes inside epoch 0


def _woof_job(cluster: SlurmCluster, repo_root: Path, root: Path, work: Path, *extra: str, wait: bool) -> int:
    """The small ImageNet-folder fit of test_preemption (2 DataLoader workers a rank) on 2 nodes x 1 task;
    the ranks agree on a stop every 2 steps."""
    fit_args = imagenet_fit_args(work / "run", root, "--stop_on_signal.check_every_n_steps", "2", *extra,
                                 steps=WOOF_STEPS, configs=())
    configs = (*IMAGENET_CPU, "configs/trainer/ddp_cpu.yaml")
    work.mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output folder
    return _sbatch(cluster, repo_root, work, configs, fit_args, wait=wait)


@pytest.fixture(scope="module")
def woof_folder(imagewoof_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return woof_tree(imagewoof_root, tmp_path_factory.mktemp("woof"))


def _files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != "fit.lock")


def test_requeue_signal_to_the_batch_script_with_loader_workers_resumes_bit_exactly(
        slurm_cluster: SlurmCluster, repo_root: Path, woof_folder: Path, tmp_path: Path) -> None:
    """`--signal=B:USR1@90` (here `scancel --batch`): the batch script passes SIGUSR1 to the step, every
    process of which gets it, DataLoader workers included; the ranks stop at the same agreed step mid-epoch
    and save, the script requeues the job, and it resumes to the weights of an uninterrupted job."""
    reference = tmp_path / "reference"
    _woof_job(slurm_cluster, repo_root, woof_folder, reference, wait=True)
    work = tmp_path / "preempted"
    progress = work / "progress.txt"
    job = _woof_job(slurm_cluster, repo_root, woof_folder, work, _callback_arg("scale_helpers.Progress", {
        "path": str(progress), "sleep_s": 0.5}), wait=False)
    deadline = time.monotonic() + 300
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 1):
        assert time.monotonic() < deadline, f"job {job} made no progress: {slurm_cluster.job_state(job)}"
        assert slurm_cluster.job_state(job) in {"PENDING", "RUNNING", "CONFIGURING"}
        time.sleep(0.1)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    slurm_cluster.wait_for_state(job, {"PENDING"}, timeout=180)
    run_dir = work / "run"
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert stopped_at in (2, 4), stopped_at  # an agreed step (every 2), inside epoch 0 (5 steps)
    assert not list(run_dir.rglob("hpc_ckpt_*"))
    slurm_cluster.start_requeued_now(job)
    state = slurm_cluster.wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400)
    log = next(work.glob("rl-test-*.out")).read_text()
    assert state == "COMPLETED", log[-4000:]
    assert f"job {job}: SIGUSR1" in log and f"scontrol requeue {job}" in log
    assert f"resnet-lit: SIGUSR1: stopped at step {stopped_at} (epoch 0)" in log
    assert "Traceback" not in log and "exited unexpectedly" not in log
    # the same files as the uninterrupted run (nothing written by a worker), and the same training
    assert _files(run_dir) == _files(reference / "run")
    a = torch.load(reference / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == WOOF_STEPS
    assert [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])] == []
    ma, mb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(ma[i]["momentum_buffer"], mb[i]["momentum_buffer"]) for i in ma)
    assert _losses(reference / "run") == _losses(run_dir)


def _callback_arg(class_path: str, init_args: dict) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


def _losses(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return sorted((r["step"], r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss"))


# ------------------------------------------------------------------------- CPUs of each rank
REPORT_CPUS = """\
import os, sys
from resnet_lit.data.folder import default_num_workers
with open(os.path.join(sys.argv[1], "cpus" + os.environ["SLURM_PROCID"] + ".txt"), "w") as f:
    f.write(f"{len(os.sched_getaffinity(0))} {default_num_workers()} {os.environ['OMP_NUM_THREADS']}\\n")
"""


@pytest.fixture(scope="module")
def binding_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A second local cluster whose slurmd bind each task to its CPUs (task/affinity), as most clusters do."""
    yield from _running_cluster(tmp_path_factory.mktemp("slurm_affinity"), task_plugin="task/affinity")


def test_each_rank_gets_the_cpus_per_task_of_the_job(binding_cluster: SlurmCluster, repo_root: Path,
                                                     tmp_path: Path) -> None:
    """`#SBATCH --cpus-per-task=2`: since Slurm 22.05 srun does not inherit it, and each bound task got one
    CPU (one DataLoader worker by default) until the template exported SRUN_CPUS_PER_TASK."""
    (tmp_path / "report_cpus.py").write_text(REPORT_CPUS)
    # RESNET_LIT is the command the template's srun starts; this one reports what each task may use
    command = f"{sys.executable} {tmp_path / 'report_cpus.py'} {tmp_path}"
    _sbatch(binding_cluster, repo_root, tmp_path, ["configs/r50.yaml"], [], wait=True,
            env={"RESNET_LIT": command, "OMP_NUM_THREADS": ""},  # the template sets it from the allocation
            sbatch_args=("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2"))
    reports = sorted(p.read_text().split() for p in tmp_path.glob("cpus*.txt"))
    assert reports == [["2", "2", "2"], ["2", "2", "2"]]  # CPUs, default_num_workers(), OMP_NUM_THREADS


def test_the_template_run_without_sbatch_says_how_to_submit_it(repo_root: Path) -> None:
    """`bash train.sbatch ...` (a common slip) stops at once, saying to use sbatch, not on an unset SLURM variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    res = subprocess.run(["bash", str(repo_root / "scripts/slurm/train.sbatch"), "configs/r50.yaml"],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "submit it with sbatch" in res.stderr and "configs/r50.yaml" in res.stderr and "unbound" not in res.stderr
