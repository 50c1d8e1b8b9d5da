"""Interruptions of a real ``resnet-lit fit`` on real CIFAR-10 images: Ctrl-C and SIGTERM save an exact
mid-epoch ``last.ckpt`` and say how to resume, a second Ctrl-C exits at once, ``last.ckpt`` is also
written every N steps or minutes, one run directory takes one writer, and a torchrun worker killed
mid-epoch is restarted by the agent and resumes by itself, bit for bit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fit_helpers import fit_env, small_fit_args
from test_resume import STEPS, _assert_same_training, _epoch_rows, _fit, _kill_at, _losses

from resnet_lit.runs.run_lock import LOCK_NAME, RunDirInUse, RunDirLock, is_first_process

RESNET_LIT = str(Path(sys.executable).parent / "resnet-lit")


def _progress(path: Path, sleep_s: float) -> str:
    """A test callback: rank 0 writes the global step to ``path`` after every batch, then sleeps."""
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": "scale_helpers.Progress", "init_args": {"path": str(path), "sleep_s": sleep_s}})


def _start_fit(repo_root: Path, cifar_root: Path, run: Path, *extra: str) -> subprocess.Popen:
    """``resnet-lit fit`` (test_resume's 8-step run) in its own session, as a terminal's foreground job."""
    args = small_fit_args(run, root=cifar_root, subset=128, steps=STEPS, width=0.25, extra=[
        "--trainer.deterministic", "true", "--checkpoint.monitor", "null", *extra])
    return subprocess.Popen([RESNET_LIT, "fit", *args], cwd=repo_root, env=fit_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_step(proc: subprocess.Popen, progress: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (progress.exists() and progress.read_text() == str(step)):
        if proc.poll() is not None:
            pytest.fail(f"fit exited {proc.returncode} before step {step}: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"fit never reached step {step}"
        time.sleep(0.02)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------------- SIGINT / SIGTERM
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_epoch_saves_last_ckpt_and_auto_resumes_bit_identically(
        repo_root: Path, cifar_root: Path, tmp_path: Path, reference_run: Path, signum: int) -> None:
    run, progress = tmp_path / "run", tmp_path / "progress"
    proc = _start_fit(repo_root, cifar_root, run, _progress(progress, 0.5))
    _wait_for_step(proc, progress, 1)  # epoch 0, after its 1st of 4 batches: no checkpoint yet
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # Ctrl-C in a terminal: the whole foreground process group
    else:
        proc.send_signal(signum)  # a container runtime or scheduler: the main process
    err = _finish(proc)
    assert proc.returncode == 128 + signum, err[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    name = signal.Signals(signum).name
    assert (f"resnet-lit: {name}: stopped at step 1 (epoch 0); saved {last}. "
            "Resume: the same command with `--ckpt_path auto` (or `--ckpt_path last`).") in err
    assert "Traceback" not in err
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 1
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 1}]
    assert not list(run.rglob(".tmp-*"))  # the write completed and was renamed into place

    resumed = _fit(repo_root, cifar_root, run, "--ckpt_path", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_training(reference_run, run)
    assert _losses(run) == _losses(reference_run)  # every step once, with the uninterrupted run's loss
    assert _epoch_rows(run, "val/error") == _epoch_rows(reference_run, "val/error")


def test_second_ctrl_c_exits_at_once_without_a_checkpoint(repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    run, progress = tmp_path / "run", tmp_path / "progress"
    proc = _start_fit(repo_root, cifar_root, run, _progress(progress, 20.0))  # batch 1 ends 20 s later
    _wait_for_step(proc, progress, 1)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    err = _finish(proc, timeout=30)
    assert time.monotonic() - sent < 5  # not after the batch (20 s): at once
    assert proc.returncode == 130
    assert "SIGINT: stopping after this batch to save a checkpoint (Ctrl-C again to exit now)." in err
    assert "second interrupt: exiting now, without a checkpoint" in err
    assert "Traceback" not in err
    assert not (run / "checkpoints" / "last.ckpt").exists()


# ------------------------------------------------------------------------ periodic last.ckpt
def test_last_ckpt_every_time_interval_is_written_mid_epoch(repo_root: Path, cifar_root: Path,
                                                             tmp_path: Path) -> None:
    run = tmp_path / "run"
    killed = _fit(repo_root, cifar_root, run, "--last_checkpoint.train_time_interval", "0:00:01",
                  _progress(tmp_path / "progress", 1.1), _kill_at(2))  # SIGKILL as step 3 begins
    assert killed.returncode == -signal.SIGKILL
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2  # each batch took over a second: saved after each
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 2}]


# ------------------------------------------------------------------ one run directory, one writer
@pytest.mark.slow
def test_second_fit_into_a_running_run_dir_is_refused_until_the_first_is_killed(
        repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    run, progress = tmp_path / "run", tmp_path / "progress"
    first = _start_fit(repo_root, cifar_root, run, _progress(progress, 60.0))
    try:
        _wait_for_step(first, progress, 1)
        for extra in ([], ["--ckpt_path", "last"]):  # not "last.ckpt exists" nor "no checkpoint": the lock
            args = small_fit_args(run, root=cifar_root, subset=128, steps=STEPS, width=0.25, extra=extra)
            second = subprocess.run([RESNET_LIT, "fit", *args], cwd=repo_root, env=fit_env(), capture_output=True,
                                    text=True, timeout=120)
            assert second.returncode == 2, extra
            lines = [line for line in second.stderr.splitlines() if line.startswith("resnet-lit")]
            holder = f"pid {first.pid} on {os.uname().nodename}"
            expected = (re.escape(f"resnet-lit: error: {run} is in use by another fit ({holder}")
                        + r" since [-0-9: ]+\)"
                        + re.escape(": one run directory takes one writer. Wait for it to end or stop it (it resumes "
                                    "with `--ckpt_path auto`), or give this run another --run_dir."))
            assert len(lines) == 1 and re.fullmatch(expected, lines[0]), second.stderr
            assert "Traceback" not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # as the OOM killer or a lost node would
        first.wait()
    RunDirLock(run).acquire().release()  # the kernel dropped the dead process's lock: nothing stuck
    assert (run / LOCK_NAME).is_file()


_HOLDER = """
import os, sys, time
from resnet_lit.runs.run_lock import RunDirLock
RunDirLock(sys.argv[1]).acquire()
if os.fork() == 0:  # a DataLoader worker: forked, outlives its parent for a while
    time.sleep(60)
    os._exit(0)
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_dies_with_its_process_not_with_forked_children(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirInUse, match=f"in use by another fit \\(pid {holder.pid} on "):
            RunDirLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        RunDirLock(tmp_path).acquire().release()  # the forked child still runs, and does not hold it
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


@pytest.mark.parametrize(("env", "first"), [
    ({}, True),  # a plain run
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun's rank 0
    ({"RANK": "1", "LOCAL_RANK": "1"}, False),  # torchrun's rank 1: shares the directory
    ({"RANK": "2", "LOCAL_RANK": "0"}, False),  # torchrun, second node
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # Lightning's own launcher, second process
    ({"SLURM_PROCID": "0"}, True),  # srun's task 0, also after a requeue
    ({"SLURM_PROCID": "3"}, False),
])
def test_only_the_jobs_first_process_takes_the_lock(monkeypatch: pytest.MonkeyPatch, env: dict, first: bool) -> None:
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_first_process() is first


# ------------------------------------------------------------------------------- torchrun
def _torchrun(repo_root: Path, cifar_root: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    """2 gloo workers, 1 thread each, under torchrun's elastic agent (one restart allowed): 128 images,
    16 per worker a step (4 steps an epoch), 8 steps, last.ckpt every 2 steps, --ckpt_path auto."""
    args = small_fit_args(run, root=cifar_root, subset=128, steps=STEPS, batch_size=16, width=0.25,
                          configs=("configs/cifar10/resnet20.yaml", "configs/trainer/cpu.yaml",
                                   "configs/trainer/ddp_cpu.yaml"),
                          extra=["--trainer.deterministic", "true", "--checkpoint.monitor", "null",
                                 "--last_checkpoint.every_n_train_steps", "2", "--ckpt_path", "auto", *extra])
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    command = [torchrun, "--nproc-per-node", "2", "--max-restarts", "1", "--master-port", str(_free_port()),
               "-m", "resnet_lit", "fit", *args]
    return subprocess.run(command, cwd=repo_root, env=fit_env(), capture_output=True, text=True, timeout=400)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_worker_killed_mid_epoch_restarts_and_resumes_bit_identically(
        repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    reference = _torchrun(repo_root, cifar_root, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "run"
    kill = "--trainer.callbacks+=" + json.dumps(
        {"class_path": "scale_helpers.KillWorkerAtStep", "init_args": {"step": 6, "rank": 1}})
    killed = _torchrun(repo_root, cifar_root, run, kill)  # rank 1 SIGKILLed as step 7 begins (epoch 1)
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in killed.stderr  # the agent saw the kill, and restarted
    assert killed.stderr.count("Initializing distributed: GLOBAL_RANK: 0") == 2
    _assert_same_training(tmp_path / "reference", run)  # resumed from step 6's last.ckpt: exact
    assert [s for _, s, _ in _losses(run)] == list(range(STEPS))  # steps 0-5, then 6-7 again after the restart
    assert _losses(run) == _losses(tmp_path / "reference")
