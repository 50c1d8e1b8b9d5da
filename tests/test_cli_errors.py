"""The one-line errors of a new user's first week (no config, a flag given twice, no CIFAR data, wandb
without a login) and the files a failed start leaves behind (none that it made)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fit_helpers import exit_of, small_fit_args

from resnet_lit.runs.cli import main

CIFAR = ["--config", "configs/cifar10/resnet20.yaml", "--config", "configs/trainer/cpu.yaml"]


@pytest.fixture(autouse=True)
def _in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # configs are given relative to the project's root, as in the README


def _exit(args: list[str], capsys) -> tuple[int | None, str, str]:
    return exit_of(main, args, capsys)


# -------------------------------------------------------------------------------- one-line errors


def test_a_command_without_a_config_is_told_to_give_one(capsys):
    code, _, err = _exit(["fit"], capsys)
    assert code == 2 and err.count("resnet-lit: error:") == 1 and "Traceback" not in err
    assert "give a config, e.g. `resnet-lit fit --config configs/cifar10/resnet20.yaml`" in err
    assert "required" not in err and "fit.data" not in err


def test_a_flag_given_twice_names_the_value_that_failed(capsys, tmp_path):
    code, _, err = _exit(["fit", *CIFAR, "--run_dir", str(tmp_path / "r"), "--trainer.max_steps", "3",
                          "--trainer.max_steps", "ten"], capsys)
    assert code == 2
    assert err.startswith("resnet-lit: error: --trainer.max_steps ten: expected int"), err
    code, _, err = _exit(["fit", *CIFAR, "--run_dir", str(tmp_path / "r"), "--data.batch_size=abc",
                          "--data.batch_size", "8", "--data.batch_size", "abc"], capsys)
    assert err.startswith("resnet-lit: error: --data.batch_size abc: expected int"), err


def test_missing_cifar_names_the_download_flag(capsys, tmp_path):
    code, _, err = _exit(["fit", *CIFAR, "--run_dir", str(tmp_path / "r"), "--data.root", str(tmp_path / "none")],
                         capsys)
    assert code == 2 and "`--data.download true`" in err and "pass download=True" not in err
    assert not (tmp_path / "r").exists()


def test_wandb_without_a_login_is_one_line_and_leaves_nothing(repo_root, shared_decode_cache, tmp_path):
    """No API key and no WANDB_MODE, in an empty HOME: wandb refuses at once (no terminal to prompt on,
    and no server to wait for: WANDB_BASE_URL is a closed local port), and the run says what to set."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_", "MASTER_"))}
    env.update(HOME=str(home), WANDB_DIR=str(home), WANDB_CONFIG_DIR=str(home), WANDB_CACHE_DIR=str(home),
               WANDB_DATA_DIR=str(home), WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="20",
               OMP_NUM_THREADS="1")
    run_dir = tmp_path / "run"
    args = small_fit_args(run_dir, subset=64, steps=1, cache_dir=shared_decode_cache,
                          configs=("configs/cifar10/resnet20.yaml", "configs/trainer/cpu.yaml",
                                   "configs/logger/wandb.yaml"))
    done = subprocess.run([sys.executable, "-m", "resnet_lit", "fit", *args], cwd=repo_root, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("resnet-lit: error: the wandb logger") and "`wandb login`" in last
    assert "WANDB_MODE=offline" in last
    assert not run_dir.exists()  # nothing trained, nothing left


# ------------------------------------------------------------------------------------- footprint


def test_a_failed_fit_leaves_no_directory_it_made_and_keeps_earlier_ones(repo_root, tmp_path, monkeypatch, capsys):
    """configs/r50.yaml without ImageNet: its run_dir runs/imagenet/r50 (relative) is made for the lock, then
    removed with the parents this start made; a runs/imagenet/ that holds another run stays."""
    monkeypatch.chdir(tmp_path)
    r50 = ["fit", "--config", str(repo_root / "configs/r50.yaml"),
           "--config", str(repo_root / "configs/trainer/cpu.yaml")]
    code, _, err = _exit(r50, capsys)
    assert code == 2 and "ImageNet root not found" in err
    assert list(tmp_path.iterdir()) == []  # no runs/, no runs/imagenet/
    earlier = tmp_path / "runs" / "imagenet" / "r18"
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("step\n")
    _exit(r50, capsys)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "runs", "runs/imagenet", "runs/imagenet/r18", "runs/imagenet/r18/metrics.csv"]
