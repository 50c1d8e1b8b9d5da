"""Preemption with DataLoader workers (issue 28, item 3): SLURM's requeue signal reaches every process
of a step, the ImageNet loader's forked workers included. The workers must ignore it; the training
process saves from its normal code and the job is requeued where ``scontrol`` exists."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fit_helpers import fit_env, small_fit_args
from signal_helpers import fake_scontrol
from weights_helpers import extract_folder

RESNET_LIT = str(Path(sys.executable).parent / "resnet-lit")
STEPS = 8  # 40 images / 4 a batch = 10 steps an epoch: the signals come mid-epoch


def woof_tree(imagewoof_root: Path, root: Path) -> Path:
    """40 training and 10 validation photographs of imagewoof-mini as an ImageNet-style folder tree."""
    extract_folder(imagewoof_root, root / "train", per_class=4, split="train")
    extract_folder(imagewoof_root, root / "val", per_class=1, split="val")
    return root


@pytest.fixture(scope="module")
def woof_folder(imagewoof_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return woof_tree(imagewoof_root, tmp_path_factory.mktemp("woof"))


IMAGENET_CPU = ("configs/r18.yaml", "configs/trainer/cpu.yaml")


def imagenet_fit_args(run: Path, root: Path, *extra: str, steps: int = STEPS,
                      configs: tuple[str, ...] = IMAGENET_CPU) -> list[str]:
    """A small ImageNet-folder fit on the CPU: ResNet-18 at a quarter width on 32-pixel crops,
    4 images a step per device, 2 DataLoader workers, every step logged; ``configs=()`` leaves the
    configs to the caller (the sbatch template takes them as its own arguments)."""
    return [
        *[item for config in configs for item in ("--config", config)],
        "--data.root", str(root), "--data.batch_size", "4", "--data.num_workers", "2",
        "--data.augmentation", "modern", "--data.train_size", "32", "--data.test_size", "32",
        "--model.width", "0.25", "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.deterministic", "true", "--checkpoint.monitor", "null", "--run_dir", str(run), *extra,
    ]  # fmt: skip


def slurm_env(bin_dir: Path, job_id: str = "4242") -> dict[str, str]:
    """fit_env() inside a one-task SLURM job (what srun sets), with ``bin_dir`` first on PATH."""
    env = fit_env()
    env.update(SLURM_JOB_ID=job_id, SLURM_JOB_NAME="resnet-lit", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1",
               SLURM_NNODES="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
               SLURM_JOB_NODELIST="localhost", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    return env


def _callback(class_path: str, **init_args: object) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM", "SIGINT"])
def test_stop_signals_sent_to_the_loader_workers_are_ignored(repo_root: Path, woof_folder: Path, tmp_path: Path,
                                                             signame: str) -> None:
    """A signal to the two workers at step 5, as SLURM (every process of the step) or a terminal's Ctrl-C
    (the foreground process group) sends it. Before the fix, SIGUSR1: both workers ran Lightning's SLURM
    handler (inherited at fork), one wrote hpc_ckpt_1.ckpt holding global step 0 and both called
    `scontrol requeue`."""
    bin_dir, scontrol_log = fake_scontrol(tmp_path / "bin")
    run, record = tmp_path / "run", tmp_path / "workers.txt"
    res = subprocess.run(
        [RESNET_LIT, "fit", *imagenet_fit_args(run, woof_folder, _callback(
            "signal_helpers.SignalAtStep", step=5, record=str(record), signal=signame))],
        cwd=repo_root, env=slurm_env(bin_dir), capture_output=True, text=True, timeout=600)
    assert len(record.read_text().split()) == 2  # both workers were signalled
    assert not list(run.rglob("hpc_ckpt_*")), res.stderr[-3000:]
    assert not scontrol_log.exists(), scontrol_log.read_text()
    assert res.returncode == 0, res.stderr[-3000:]  # training went on, its loader intact
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS


def _requeue_run(repo_root: Path, woof_folder: Path, run: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The small ImageNet-folder fit, sent SLURM's requeue signal (SIGUSR1) at step 5."""
    args = imagenet_fit_args(run, woof_folder, _callback("signal_helpers.SignalAtStep", step=5, who="self",
                                                         wait_s=0.0))
    return subprocess.run([RESNET_LIT, "fit", *args], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=600)


def test_requeue_signal_saves_last_ckpt_then_rank_0_requeues(repo_root: Path, woof_folder: Path,
                                                              tmp_path: Path) -> None:
    """Before the fix Lightning saved hpc_ckpt_1.ckpt inside the handler, requeued, and trained on."""
    bin_dir, scontrol_log = fake_scontrol(tmp_path / "bin")
    run = tmp_path / "run"
    res = _requeue_run(repo_root, woof_folder, run, slurm_env(bin_dir))
    assert res.returncode == 128 + 10, res.stderr[-3000:]  # 138: stopped by SIGUSR1
    last = run / "checkpoints" / "last.ckpt"
    assert "resnet-lit: SIGUSR1 (SLURM: preemption or time limit): stopping after this batch" in res.stderr
    assert f"resnet-lit: SIGUSR1: stopped at step 5 (epoch 0); saved {last}." in res.stderr
    assert "resnet-lit: requeued SLURM job 4242." in res.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert not list(run.rglob("hpc_ckpt_*"))
    calls = scontrol_log.read_text().splitlines()
    assert len(calls) == 1 and calls[0].endswith(" args=requeue 4242"), calls  # once, by the training process


def test_requeue_signal_without_scontrol_says_so_in_one_line(repo_root: Path, woof_folder: Path,
                                                              tmp_path: Path) -> None:
    """A container without `scontrol` (pytorch images; pyxis issue 129). Before the fix: Lightning retried
    through a shell, logged "failed with error code 127" and trained on."""
    env = slurm_env(tmp_path / "empty")
    env["PATH"] = str(Path(sys.executable).parent)  # the venv's commands, no scontrol
    run = tmp_path / "run"
    res = _requeue_run(repo_root, woof_folder, run, env)
    assert res.returncode == 128 + 10, res.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    errors = [line for line in res.stderr.splitlines() if line.startswith("resnet-lit: error:")]
    assert errors == ["resnet-lit: error: cannot requeue SLURM job 4242: no `scontrol` command on this machine's "
                      "PATH (inside a container? most images have none). Requeue from the batch script on the "
                      "host, as scripts/slurm/train.sbatch does (--signal=B:USR1@90, --stop_on_signal.requeue "
                      "false), or run `scontrol requeue 4242` yourself."], res.stderr[-3000:]
    assert "Traceback" not in res.stderr


def _metrics(run: Path) -> list[tuple[str, str]]:
    with open(run / "metrics.csv") as f:
        return sorted((r["step"], r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss"))


@pytest.mark.slow
def test_fit_stopped_by_the_requeue_signal_resumes_mid_epoch_bit_exactly(repo_root: Path, woof_folder: Path,
                                                                        tmp_path: Path) -> None:
    """Stopped at step 3 of the 10-step epoch, resumed with `--ckpt_path auto`: the weights and losses of an
    uninterrupted run. Before the fix the resumed run started its epoch again from the first batch: the
    r18 recipe's schedule (in epochs) reads the loader's length before the restore, and Lightning then
    never handed the loader its position."""
    bin_dir, _ = fake_scontrol(tmp_path / "bin")
    env = slurm_env(bin_dir)
    reference, run = tmp_path / "reference", tmp_path / "run"
    for args in (imagenet_fit_args(reference, woof_folder),
                 imagenet_fit_args(run, woof_folder, _callback("signal_helpers.SignalAtStep", step=3, who="self",
                                                               wait_s=0.0)),
                 imagenet_fit_args(run, woof_folder, "--ckpt_path", "auto")):
        res = subprocess.run([RESNET_LIT, "fit", *args], cwd=repo_root, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode in (0, 138), res.stderr[-3000:]
    assert "Restoring states from the checkpoint path at" in res.stderr
    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    assert [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])] == []
    assert _metrics(run) == _metrics(reference)


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(repo_root: Path, cifar_root: Path,
                                                                 tmp_path: Path) -> None:
    """SIGTERM to rank 1 only (of 2 gloo ranks) at step 2; the ranks agree every 2 steps. Before the fix
    rank 1 stopped alone (Lightning's flag is rank 1's own; only rank 0's is broadcast) and rank 0 was
    left waiting in a collective."""
    run = tmp_path / "run"
    args = small_fit_args(run, root=cifar_root, subset=256, steps=12, batch_size=16, width=0.25,
                          configs=("configs/cifar10/resnet20.yaml", "configs/trainer/cpu.yaml",
                                   "configs/trainer/ddp_cpu.yaml"),
                          extra=["--checkpoint.monitor", "null", "--stop_on_signal.check_every_n_steps", "2",
                                 "--trainer.strategy.init_args.timeout", "0:00:30",
                                 _callback("signal_helpers.SignalAtStep", step=2, who="self", signal="SIGTERM",
                                           rank=1, wait_s=0.0)])
    res = subprocess.run([RESNET_LIT, "fit", *args], cwd=repo_root, env=fit_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 143, res.stderr[-3000:]
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step in (2, 4), step  # 8 steps an epoch: inside epoch 0, at an agreed step
    assert f"resnet-lit: SIGTERM: stopped at step {step} (epoch 0); saved" in res.stderr
    assert "Traceback" not in res.stderr
