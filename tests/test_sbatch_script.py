"""scripts/slurm/train.sbatch without a cluster: bash runs it with a stand-in ``srun`` and ``scontrol``
on PATH (the real cluster runs it in test_slurm.py). What it passes to srun, what it exports, and
its trap for SLURM's requeue signal (``--signal=B:USR1@90``): pass it on to the training step, then
requeue the job from the host."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm" / "train.sbatch"

# A stand-in srun: records its arguments (one a line) and environment, then behaves as the training
# step would: on SIGUSR1 (passed on by the batch script) it "saves" and exits with 138.
FAKE_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "{out}/srun.args"
echo "SRUN_CPUS_PER_TASK=${{SRUN_CPUS_PER_TASK:-unset}} OMP_NUM_THREADS=$OMP_NUM_THREADS" > "{out}/srun.env"
trap 'echo USR1 > "{out}/srun.signal"; exit 138' USR1
touch "{out}/srun.started"
for _ in $(seq 1 {seconds}); do sleep 0.1; done
exit {status}
"""
FAKE_SCONTROL = """#!/bin/sh
echo "$*" >> "{out}/scontrol.log"
"""


def _bin(tmp_path: Path, seconds: int = 1, status: int = 0) -> Path:
    out = tmp_path / "bin"
    out.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (out / name).write_text(text.format(out=out, seconds=seconds * 10, status=status))
        (out / name).chmod(0o755)
    return out


def _env(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="77", SLURM_NNODES="2",
               SLURM_NTASKS_PER_NODE="4", SLURM_JOB_NODELIST="n[1-2]", **extra)
    return env


def _start(bin_dir: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SCRIPT), *args], env=_env(bin_dir, **env), cwd=bin_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_no_empty_array_is_expanded_bare_under_set_u() -> None:
    """`"${extra[@]}"` of an empty array under `set -u` stops bash 4.2 (many login nodes) with "unbound
    variable"; `${extra[@]+"${extra[@]}"}` does not. bash here is newer, so the form is checked as written."""
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text
    bare = [m.group(0) for m in re.finditer(r'(?<!\+)"\$\{extra\[@\]\}"', text)]
    assert bare == [], bare
    assert '${extra[@]+"${extra[@]}"}' in text


def test_arguments_without_extra_options_reach_srun(tmp_path: Path) -> None:
    bin_dir = _bin(tmp_path)
    proc = _start(bin_dir, "configs/r50.yaml", "configs/trainer/gpu.yaml", SLURM_CPUS_PER_TASK="8")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    args = (bin_dir / "srun.args").read_text().splitlines()
    assert args == ["--kill-on-bad-exit=1", "resnet-lit", "fit", "--config", "configs/r50.yaml", "--config",
                    "configs/trainer/gpu.yaml", "--trainer.num_nodes", "2", "--trainer.devices", "4",
                    "--ckpt_path", "auto", "--stop_on_signal.requeue", "false"]
    # srun (Slurm >= 22.05) does not inherit --cpus-per-task: the script hands it on
    assert (bin_dir / "srun.env").read_text().split() == ["SRUN_CPUS_PER_TASK=8", "OMP_NUM_THREADS=8"]
    assert not (bin_dir / "scontrol.log").exists()


def test_extra_options_follow_and_their_status_is_the_jobs(tmp_path: Path) -> None:
    bin_dir = _bin(tmp_path, status=3)
    proc = _start(bin_dir, "configs/r50.yaml", "--", "--run_dir", "runs/x y", "--data.root", "/d")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    args = (bin_dir / "srun.args").read_text().splitlines()
    assert args[-4:] == ["--run_dir", "runs/x y", "--data.root", "/d"]
    assert (bin_dir / "srun.env").read_text().split()[0] == "SRUN_CPUS_PER_TASK=unset"  # no --cpus-per-task
    assert not (bin_dir / "scontrol.log").exists()  # a failure is not a preemption: no requeue


def test_requeue_signal_to_the_script_reaches_the_step_then_requeues(tmp_path: Path) -> None:
    """`--signal=B:USR1@90` signals the batch shell only: it passes the signal to srun (which signals every
    task), waits for the training to save and exit, then requeues the job with the host's scontrol."""
    bin_dir = _bin(tmp_path, seconds=30)
    proc = _start(bin_dir, "configs/r50.yaml")
    deadline = time.monotonic() + 30
    while not (bin_dir / "srun.started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=20)
    assert (bin_dir / "srun.signal").read_text() == "USR1\n", err
    assert (bin_dir / "scontrol.log").read_text() == "requeue 77\n", out + err
    assert proc.returncode == 138  # the job is requeued meanwhile: this status is not its end
    assert "job 77: SIGUSR1" in out and "scontrol requeue 77" in out


@pytest.mark.parametrize(("array", "job"), [({}, "77"), ({"SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"},
                                                          "70_3")])
def test_training_stopped_by_the_requeue_signal_is_requeued(tmp_path: Path, array: dict, job: str) -> None:
    """The tasks got SIGUSR1 themselves (`--signal=USR1@90` given to sbatch, or `scancel --signal=USR1`):
    the step ends with 138 and the script requeues all the same (array tasks by their own id)."""
    bin_dir = _bin(tmp_path, status=138)
    proc = _start(bin_dir, "configs/r50.yaml", **array)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 138, err
    assert (bin_dir / "scontrol.log").read_text() == f"requeue {job}\n"
