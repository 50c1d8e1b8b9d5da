"""Every rank its own randomness (``checkpointing.contents.RNGState``), on 2 gloo ranks through the CLI
on real CIFAR-10 images: the ranks draw different crops and MixUp weights, and a run interrupted
mid-epoch and resumed gives each rank the batches and random streams of a run never stopped. And a
restore sets the CUDA generator of the process's own device only."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from fit_helpers import RECIPE, run_fit, small_fit_args

from resnet_lit.checkpointing.contents import RNGState

STEPS = 8  # 128 images / 2 ranks / 16 = 4 steps an epoch, 2 epochs


def _fit(repo_root: Path, cifar_root: Path, run: Path, *extra: str) -> int:
    record = {"class_path": "scale_helpers.RecordDraws", "init_args": {"folder": str(run / "draws")}}
    args = small_fit_args(run, root=cifar_root, subset=128, steps=STEPS, batch_size=16, width=0.25,
                          configs=(*RECIPE, "configs/trainer/ddp_cpu.yaml"), extra=[
                              "--trainer.deterministic", "true", "--checkpoint.monitor", "null",
                              "--data.augment.mixup_alpha", "1.0", "--last_checkpoint.every_n_train_steps", "2",
                              "--trainer.callbacks+=" + json.dumps(record), *extra])
    done = run_fit(repo_root, args)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr[-4000:])
    return done.returncode


def _draws(run: Path, rank: int) -> dict[int, list[str]]:
    """step -> [batch, crops, mix, rng] of ``rank`` (a step drawn again after a resume: its last line)."""
    lines = (run / "draws" / f"draws{rank}.txt").read_text().splitlines()
    return {int(step): rest for step, *rest in (line.split() for line in lines)}


@pytest.fixture(scope="module")
def reference(repo_root: Path, cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ranks") / "reference"
    assert _fit(repo_root, cifar_root, run) == 0
    return run


@pytest.mark.slow
def test_ranks_draw_different_crops_and_mixup_weights(reference: Path) -> None:
    ranks = [_draws(reference, rank) for rank in (0, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == list(range(STEPS))
    for step in range(STEPS):
        (_, crops0, mix0, rng0), (_, crops1, mix1, rng1) = ranks[0][step], ranks[1][step]
        assert crops0 != crops1, f"step {step}: both ranks cropped their 16 images at the same offsets"
        assert mix0 != mix1, f"step {step}: both ranks mixed with lambda {mix0}"
        assert rng0 != rng1
    # and they are drawn, not fixed: a rank's crops vary from step to step
    assert len({ranks[0][step][1] for step in range(STEPS)}) == STEPS


@pytest.mark.slow
def test_mid_epoch_resume_gives_each_rank_its_own_stream_back(repo_root: Path, cifar_root: Path, tmp_path: Path,
                                                               reference: Path) -> None:
    run = tmp_path / "run"
    kill = "--trainer.callbacks+=" + json.dumps({"class_path": "scale_helpers.KillAtStep", "init_args": {"step": 6}})
    assert _fit(repo_root, cifar_root, run, kill) == -signal.SIGKILL  # both ranks, as step 7 begins (epoch 1)
    saved = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 6
    states = saved["callbacks"]["RNGState"]["ranks"]  # gathered from every rank, keyed by global rank
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    assert _fit(repo_root, cifar_root, run, "--ckpt_path", "last") == 0
    for rank in (0, 1):
        assert _draws(run, rank) == _draws(reference, rank), f"rank {rank} drew other batches after the resume"
    a = torch.load(reference / "checkpoints/last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    assert [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])] == []
    for x, y in zip(a["callbacks"]["RNGState"]["ranks"], b["callbacks"]["RNGState"]["ranks"], strict=True):
        assert torch.equal(x["torch"], y["torch"]) and x["python"] == y["python"]


def test_a_restore_sets_the_cuda_generator_of_its_own_device_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under SLURM every task sees all of its node's GPUs; rank 3 runs on cuda:3 and must not reset the
    generators of the other seven (the ranks using them restore their own)."""
    state = RNGState().state_dict()  # this process's generators (no GPU: no CUDA entry)
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("one", state)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(("all", states)))
    every = [torch.full((16,), d, dtype=torch.uint8) for d in range(8)]
    RNGState().load_state_dict({**state, "cuda": every})  # resnet-lit 0.1 saved all 8 devices' states
    assert calls == [("one", every[3])]
    calls.clear()
    own = torch.full((16,), 3, dtype=torch.uint8)
    RNGState().load_state_dict({**state, "cuda_device": own})  # today's checkpoints: the device's own
    assert calls == [("one", own)]
