"""A loss that is not finite stops a real `resnet-lit fit` with one line, and the last good
checkpoint is never overwritten with NaN weights (src/resnet_lit/training/nonfinite.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fit_helpers import RECIPE, run_fit, small_fit_args

from resnet_lit.training.nonfinite import NonFiniteWatch, nonfinite_tensors

pytestmark = pytest.mark.slow


def _blow_up_args(run_dir: Path, cifar_root: Path, lr: str, log_every: int, ranks: int = 1) -> list[str]:
    # 128 images a rank, 32 a step: 4 steps an epoch, validated and checkpointed at each epoch end. A
    # constant warm-up trains the first epoch at 0.1 x 32 x ranks/128 (warmup_factor x lr, scaled by the
    # global batch); then the learning rate jumps to lr x 32 x ranks/128 and the second epoch blows up.
    factor = f"{0.1 / float(lr):g}"
    configs = (*RECIPE, "configs/trainer/ddp_cpu.yaml") if ranks == 2 else RECIPE
    return small_fit_args(run_dir, root=cifar_root, subset=128 * ranks, steps=8, width=0.25, configs=configs, extra=[
        "--model.optimizer.lr", lr, "--model.schedule.warmup_steps", "4", "--model.schedule.warmup_factor", factor,
        "--trainer.log_every_n_steps", str(log_every), "--trainer.enable_progress_bar", "false",
    ])


def _assert_last_is_epoch_one(run_dir: Path) -> None:
    checkpoints = run_dir / "checkpoints"
    ckpt = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["epoch"] == 0  # written at the first epoch's end, never again
    assert nonfinite_tensors(ckpt["state_dict"]) == []
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-000-0000004.ckpt", "last.ckpt"]  # no temp file


def test_nonfinite_loss_stops_at_once(repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    # lr 1e12: the loss is nan at the third step after the jump; checked every step (log_every_n_steps 1)
    res = run_fit(repo_root, _blow_up_args(tmp_path / "run", cifar_root, "1e12", log_every=1))
    assert res.returncode == 1, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    good = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.startswith("resnet-lit: error: the training loss is not finite at step 6, learning rate 2.5e+11: "
                           "stopped before that step's update; nothing was saved after it. "
                           f"The last good checkpoint is {good} (step 4)"), last
    _assert_last_is_epoch_one(tmp_path / "run")


def test_nonfinite_weights_are_never_saved(repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    # lr 1e6 and the loss checked only every 50 steps: the loss stays finite (1e25) but the weights are
    # NaN by the second epoch's end, where last.ckpt would be written: the save itself refuses.
    res = run_fit(repo_root, _blow_up_args(tmp_path / "run", cifar_root, "1e6", log_every=50))
    assert res.returncode == 1, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    assert last.startswith("resnet-lit: error: the weights are not finite at step 8 "), last
    assert "so the checkpoint was not written; nothing was saved after it. The last good checkpoint is " in last
    _assert_last_is_epoch_one(tmp_path / "run")


def test_watch_reports_the_first_bad_step_over_ranks() -> None:
    watch = NonFiniteWatch()
    for step, loss, lr in [(0, 2.3, 0.1), (1, math.inf, 0.2), (2, math.nan, 0.3)]:
        watch.update(torch.tensor(loss), step, lr)
    assert watch.first_bad() == (1, 0.2)
    fine = NonFiniteWatch()
    fine.update(torch.tensor(1.0), 0, 0.1)
    assert fine.first_bad() is None
    ranks = NonFiniteWatch()
    ranks.update(torch.tensor(1.0), 5, 0.1)
    ranks.update(torch.tensor(1.0), 6, 0.2)
    assert ranks.first_bad(lambda t: torch.stack([t, torch.tensor(6)])) == (6, 0.2)  # the other rank's step


def test_nonfinite_loss_stops_every_ddp_rank(repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    # Two gloo ranks: the check gathers both ranks' records, so both stop at the same step (no rank left
    # waiting in a collective) and rank 0 alone prints the line.
    res = run_fit(repo_root, _blow_up_args(tmp_path / "run", cifar_root, "1e12", log_every=1, ranks=2))
    assert res.returncode == 1, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("resnet-lit: error:")]
    assert len(lines) == 1 and lines[0].startswith("resnet-lit: error: the training loss is not finite at step "), lines
    assert "Traceback" not in res.stderr and "collective operation failed" not in res.stderr
    _assert_last_is_epoch_one(tmp_path / "run")
