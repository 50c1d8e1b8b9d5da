"""Resuming: which checkpoint a restarted run picks, crash-safe checkpoint writes, and
bit-exact continuation after SIGKILL (through the real CLI on real CIFAR-10 images)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fit_helpers import EXACT_STEPS, exact_fit

from resnet_lit.checkpointing.atomic_write import (
    TMP_PREFIX,
    AtomicCheckpointIO,
    atomic_torch_save,
)
from resnet_lit.checkpointing.resume import (
    find_resume_checkpoint,
    hpc_checkpoints,
    resolve_ckpt_path,
)


# ------------------------------------------------------------------ which checkpoint to resume
def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_auto_on_first_start_is_none(tmp_path: Path) -> None:
    # Lightning's ckpt_path="hpc" raises here (Lightning-AI/pytorch-lightning#20347); auto starts fresh.
    assert resolve_ckpt_path("auto", tmp_path / "run", tmp_path / "run" / "checkpoints") is None


def test_auto_picks_newest_of_hpc_and_last(tmp_path: Path) -> None:
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    last = _touch(ckpts / "last.ckpt", 1000)
    assert resolve_ckpt_path("auto", run, ckpts) == str(last)  # node failure: no hpc checkpoint
    _touch(run / "hpc_ckpt_2.ckpt", 2000)
    _touch(run / "hpc_ckpt_10.ckpt", 1500)  # highest number is the latest save, whatever the mtime
    _touch(run / "hpc_ckpt_x.ckpt", 9000)  # not Lightning's pattern: ignored
    assert [p.name for p in hpc_checkpoints(run)] == ["hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt"]
    assert resolve_ckpt_path("auto", run, ckpts) == str(run / "hpc_ckpt_10.ckpt")
    os.utime(last, (3000, 3000))  # the resumed run went on and wrote last.ckpt after the preemption
    assert find_resume_checkpoint(run, ckpts) == last


def test_explicit_paths_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    _touch(run / "hpc_ckpt_1.ckpt", 1000)
    assert resolve_ckpt_path("some/file.ckpt", run, run / "checkpoints") == "some/file.ckpt"
    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert resolve_ckpt_path(None, run, run / "checkpoints") is None  # not on SLURM: never implicit
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "resnet-lit")
    assert resolve_ckpt_path(None, run, run / "checkpoints") == str(run / "hpc_ckpt_1.ckpt")


# ------------------------------------------------------------------------ crash-safe writes
def test_failed_write_leaves_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)

    def torch_save_dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torch_save_dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    old = io.load_checkpoint(path)
    assert old["step"] == 1 and torch.equal(old["w"], torch.arange(4.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # temp file removed


_WRITER = """
import sys, torch
from resnet_lit.checkpointing.atomic_write import atomic_torch_save
path = sys.argv[1]
big = torch.ones(48 * 2**20 // 4)  # 48 MB, so a write takes a while
for step in range(2, 10**6):
    atomic_torch_save({"step": step, "w": big * step}, path)
"""


def test_sigkill_during_write_never_corrupts(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(4)}, path)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
    try:
        deadline = time.monotonic() + 60
        # Kill while a temp file is being written (the moment a direct write would truncate last.ckpt).
        while not any(p.name.startswith(TMP_PREFIX) and p.stat().st_size > 2**20 for p in tmp_path.iterdir()
                      if p.exists()):
            assert time.monotonic() < deadline, "writer never started writing"
            assert proc.poll() is None, "writer exited early"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(path, weights_only=True)  # loads: the old or a complete new checkpoint
    expected_numel = 4 if ckpt["step"] == 1 else 48 * 2**20 // 4
    assert ckpt["w"].numel() == expected_numel
    assert torch.equal(ckpt["w"], torch.full_like(ckpt["w"], float(ckpt["step"])))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert len(leftovers) == 1  # the killed write's temp file, never matched as a checkpoint
    assert not leftovers[0].endswith(".ckpt")


# ------------------------------------------------ bit-exact resume through the real CLI (SIGKILL)
STEPS, _fit = EXACT_STEPS, exact_fit  # the run the tests below interrupt (fit_helpers.py)


def _kill_at(step: int) -> str:
    """SIGKILL as the batch that would make global step ``step + 1`` starts."""
    return "--trainer.callbacks+=" + json.dumps({"class_path": "scale_helpers.KillAtStep", "init_args": {"step": step}})


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_training(ref: Path, run: Path) -> None:
    """Weights, BN statistics, momentum and counters of the two runs' last.ckpt: bit-identical."""
    a = torch.load(ref / "checkpoints/last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert different == []
    ma, mb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert ma.keys() == mb.keys()
    assert all(torch.equal(ma[i]["momentum_buffer"], mb[i]["momentum_buffer"]) for i in ma)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["loops"]["fit_loop"]["epoch_progress"] == b["loops"]["fit_loop"]["epoch_progress"]


def _losses(run_dir: Path) -> list[tuple[int, int, str]]:
    return [(int(r["epoch"]), int(r["step"]), r["train/loss"]) for r in _metrics(run_dir) if r.get("train/loss")]


def _epoch_rows(run_dir: Path, key: str) -> list[tuple[int, str]]:
    return [(int(r["epoch"]), r[key]) for r in _metrics(run_dir) if r.get(key)]


@pytest.mark.slow
def test_sigkill_at_epoch_boundary_then_resume_is_bit_identical(repo_root: Path, cifar_root: Path, tmp_path: Path,
                                                               reference_run: Path) -> None:
    run = tmp_path / "run"
    killed = _fit(repo_root, cifar_root, run, _kill_at(4))  # as step 5 begins, after epoch 0's last.ckpt
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4
    resumed = _fit(repo_root, cifar_root, run, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_training(reference_run, run)
    # metrics.csv: every step once with the uninterrupted run's loss, each epoch's summary once.
    assert _losses(run) == _losses(reference_run)
    assert [s for _, s, _ in _losses(run)] == list(range(STEPS))
    for key in ("train/error", "val/error"):
        assert _epoch_rows(run, key) == _epoch_rows(reference_run, key)
    assert [e for e, _ in _epoch_rows(run, "train/error")] == [0, 1]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_continues_at_the_right_batch(repo_root: Path, cifar_root: Path, tmp_path: Path,
                                                                    reference_run: Path) -> None:
    run = tmp_path / "run"
    every_2 = "--trainer.callbacks+=" + json.dumps({
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(run / "steps"), "filename": "step{step:02d}", "auto_insert_metric_name": False,
                      "every_n_train_steps": 2, "save_top_k": -1},
    })
    killed = _fit(repo_root, cifar_root, run, every_2, _kill_at(6))  # epoch 1, after its 2nd of 4 batches
    assert killed.returncode == -signal.SIGKILL
    ckpt = torch.load(run / "steps/step06.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    # The train loader's position, saved by Lightning from ResumableLoader.state_dict().
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    resumed = _fit(repo_root, cifar_root, run, "--ckpt_path", str(run / "steps/step06.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dataloader is not resumable" not in resumed.stderr
    _assert_same_training(reference_run, run)
    assert _losses(run) == _losses(reference_run)  # steps 6 and 7 on the same batches, same crops
    # Epoch 1's running training error covers the whole epoch: the checkpoint carried the counts of
    # its first two batches.
    assert ckpt["resnet_lit"]["train_counts"]["epoch"] == 1 and ckpt["resnet_lit"]["train_counts"]["seen"] == 2 * 32
    assert _epoch_rows(run, "train/error") == _epoch_rows(reference_run, "train/error")
    assert _epoch_rows(run, "val/error") == _epoch_rows(reference_run, "val/error")


@pytest.mark.slow
def test_run_stopped_by_max_steps_mid_epoch_resumes_there(repo_root: Path, cifar_root: Path, tmp_path: Path,
                                                          reference_run: Path) -> None:
    run = tmp_path / "run"
    first = _fit(repo_root, cifar_root, run, steps=6)  # stops after epoch 1's 2nd batch
    assert first.returncode == 0, first.stderr[-3000:]
    state = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["loops"]["fit_loop"]
    # Recorded as inside epoch 1 (Lightning counts an epoch cut by max_steps as processed).
    assert state["epoch_progress"]["current"] == {"ready": 2, "started": 2, "processed": 1, "completed": 1}
    assert state["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    resumed = _fit(repo_root, cifar_root, run, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_training(reference_run, run)
    assert _losses(run) == _losses(reference_run)
    # Not exact: the first run ended epoch 1 after 2 batches and logged its training error then;
    # the resumed run logs epoch 1 again when it really ends (docs/slurm.md, resume).
    assert [e for e, _ in _epoch_rows(run, "train/error")] == [0, 1, 1]
