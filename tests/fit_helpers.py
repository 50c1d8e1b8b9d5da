"""The small real-data fit that the CLI, resume, DDP and SLURM tests run: the paper's ResNet-20
recipe on a few hundred real CIFAR-10 images on the CPU, for a handful of steps.

``small_fit_args`` builds its options, ``run_fit`` runs ``resnet-lit fit`` in a fresh process (as a
user or a job would) with the environment those tests need: no SLURM or DDP variables from the
calling shell, one thread, and ``tests/`` on ``PYTHONPATH`` so that ``--trainer.callbacks+=`` can
name the test callbacks of ``scale_helpers.py``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

RECIPE = ("configs/cifar10/resnet20.yaml", "configs/trainer/cpu.yaml")
TESTS = Path(__file__).resolve().parent


def small_fit_args(
    run_dir: str | Path,
    *,
    subset: int,
    steps: int,
    batch_size: int = 32,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    width: float | None = None,
    configs: Sequence[str] = RECIPE,
    extra: Sequence[str] = (),
) -> list[str]:
    """``resnet-lit fit`` options (without the command): ResNet-20 on ``subset`` real CIFAR-10 images,
    ``batch_size`` a step, ``steps`` steps, every step logged, into ``run_dir``; ``configs=()`` leaves
    the configs to the caller (the sbatch template takes them as its own arguments)."""
    args = [item for config in configs for item in ("--config", config)]
    if root is not None:
        args += ["--data.root", str(root)]
    if cache_dir is not None:
        args += ["--data.cache_dir", str(cache_dir)]
    args += ["--data.subset", str(subset), "--data.batch_size", str(batch_size)]
    if width is not None:
        args += ["--model.width", str(width)]
    # steps are this test's own, not the recipe's iterations at batch 128 (schedule.steps_at_batch)
    args += ["--model.schedule.steps_at_batch", "null"]
    args += ["--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1", "--run_dir", str(run_dir)]
    return [*args, *extra]


def fit_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test's ``resnet-lit`` process (see the module docstring)."""
    drop = ("SLURM_", "MASTER_", "LOCAL_RANK", "NODE_RANK")
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(drop)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]))
    return env


def run_fit(repo_root: Path, args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``resnet-lit fit ARGS`` from the project's root, in a fresh process; output captured."""
    command = [str(Path(sys.executable).parent / "resnet-lit"), "fit", *args]
    return subprocess.run(command, cwd=repo_root, env=fit_env(), capture_output=True, text=True, timeout=timeout)


# The run that the exact-resume tests (test_resume.py, test_interrupt.py) interrupt and compare:
# 128 images / 32 = 4 steps an epoch, 8 steps in all; every row of metrics.csv is logged (one per step).
EXACT_STEPS = 8


def exact_fit(repo_root: Path, cifar_root: Path, run_dir: Path, *extra: str,
              steps: int = EXACT_STEPS) -> subprocess.CompletedProcess:
    """The exact-resume tests' small deterministic fit, in a fresh process."""
    args = small_fit_args(run_dir, root=cifar_root, subset=128, steps=steps, width=0.25, extra=[
        "--trainer.deterministic", "true",
        # Lightning 2.6 refreshes last.ckpt only when a monitored checkpoint is saved at that step;
        # without a monitor every epoch's checkpoint (and so last.ckpt) is written.
        "--checkpoint.monitor", "null", *extra,
    ])
    return run_fit(repo_root, args)


def exit_of(main, args: list[str], capsys) -> tuple[int | None, str, str]:
    """The exit status, stdout and stderr of an in-process ``main(args)`` that exits (an error, --help)."""
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def card_of(run: Path) -> dict:
    """A published run's ``results.json``."""
    return json.loads((run / "results.json").read_text())


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
