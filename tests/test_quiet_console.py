"""What the README's commands print, run as a user runs them (a fresh process, output not a terminal):
nothing a user cannot act on. No Lightning, torch, LitData or wandb warning, no escape codes or
progress bars of other libraries; a CPU fit, a fine-tune with frozen stages, `shards`, `predict` and a
two-process `ddp_cpu` fit, each on a few real images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from fit_helpers import RECIPE, fit_env, small_fit_args
from weights_helpers import extract_folder

pytestmark = pytest.mark.slow

# what a line of someone else's warning looks like: "path/file.py:123: SomeWarning: ..." or a message
# of the ones this project silences (runs/console.py), LitData's and wandb's banners, escape codes
NOISE = re.compile(r"\.py:\d+: |Warning\b|WARNING|warn\(|Found \d+ module\(s\) in eval mode|estimate number of "
                   r"stepping batches|dirpath has changed|sync_dist=True|Create an account|lightning\.ai/|"
                   r"anonymous setting|No CUDA runtime|srun|💡|\x1b|\r")


def _run(repo_root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "resnet-lit"), *args], cwd=repo_root,
                          env=env or fit_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _noise(output: str) -> list[str]:
    return [line for line in output.splitlines() if NOISE.search(line)]


@pytest.fixture(scope="module")
def woof(imagewoof_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quiet") / "woof"
    extract_folder(imagewoof_root, root / "train", per_class=1, split="train")
    extract_folder(imagewoof_root, root / "val", per_class=1, split="val")
    return root


def test_a_cpu_fit_and_a_two_process_ddp_fit_print_no_warning(repo_root: Path, cifar_root: Path,
                                                              tmp_path: Path) -> None:
    one = _run(repo_root, "fit", *small_fit_args(tmp_path / "one", root=cifar_root, subset=128, steps=4, width=0.25))
    two = _run(repo_root, "fit", *small_fit_args(tmp_path / "two", root=cifar_root, subset=128, steps=4, width=0.25,
                                                 configs=(*RECIPE, "configs/trainer/ddp_cpu.yaml")))
    assert "step 4/4" in one and "step 4/4" in two
    assert _noise(one) == [] and _noise(two) == []


def test_a_frozen_fine_tune_then_predict_into_another_directory_print_no_warning(woof: Path, repo_root: Path,
                                                                                 tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights := tmp_path / "resnet18.pth")
    fit = _run(repo_root, "fit", "--config", "configs/finetune/imagewoof_r18.yaml", "--config",
               "configs/trainer/cpu.yaml", "--model.init_weights", str(weights), "--model.freeze", "stage2",
               "--data.root", str(woof), "--data.batch_size", "5", "--data.num_workers", "0",
               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
               "--run_dir", str(tmp_path / "tune"))
    predict = _run(repo_root, "predict", "--config", "configs/finetune/imagewoof_r18.yaml", "--config",
                   "configs/trainer/cpu.yaml", "--ckpt_path", str(tmp_path / "tune/checkpoints/last.ckpt"),
                   "--data.predict_path", str(woof / "val"), "--data.batch_size", "5", "--data.num_workers", "0",
                   "--run_dir", str(tmp_path / "elsewhere"))
    assert "frozen" in fit and (tmp_path / "elsewhere" / "predictions.csv").is_file()
    assert _noise(fit) == [] and _noise(predict) == []


def test_shards_prints_no_progress_bars_or_banners(woof: Path, repo_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("litdata")
    out = _run(repo_root, "shards", str(woof), str(tmp_path / "shards"), "--workers", "2", "--chunk_bytes", "1MB")
    assert (tmp_path / "shards").is_dir()
    assert _noise(out) == [], out


def test_a_fit_logging_to_wandb_offline_prints_no_wandb_warning(repo_root: Path, cifar_root: Path,
                                                                tmp_path: Path) -> None:
    """wandb warned on every run that Lightning's anonymous=None "has no effect"."""
    import os

    env = fit_env({**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "HOME": str(tmp_path)})
    out = _run(repo_root, "fit", *small_fit_args(tmp_path / "wb", root=cifar_root, subset=64, steps=2, width=0.25,
                                                 extra=["--config", "configs/logger/wandb.yaml"]), env=env)
    assert any((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert [line for line in out.splitlines() if "anonymous" in line] == []
