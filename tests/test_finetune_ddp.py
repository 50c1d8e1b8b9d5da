"""Fine-tuning under DDP: a 100-class ResNet-20 becomes a 10-class one on real CIFAR-10 images, on 2
gloo ranks through the CLI. Every rank starts from the same weights, the new classifier included, and
with ``--trainer.sync_batchnorm true`` the frozen batch norms stay frozen."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from fit_helpers import RECIPE, run_fit, small_fit_args
from torch import nn

from resnet_lit.models import create_model
from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.finetune import FrozenBatchNorm2d

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    source = create_model("resnet20", num_classes=100, width=0.25)
    source.train()
    with torch.no_grad():  # statistics other than a fresh net's zeros and ones, so a change shows
        source(torch.randn(16, 3, 32, 32) * 3 + 1)
    torch.save(source.state_dict(), path := tmp_path_factory.mktemp("finetune_ddp") / "resnet20_100_classes.pth")
    return path, source.state_dict()


def _finetune(repo_root: Path, cifar_root: Path, run: Path, weights: Path, *extra: str) -> Path:
    """2 steps of 2 ranks x 16 images from ``weights``; returns the folder of ``RecordWeights``."""
    record = {"class_path": "scale_helpers.RecordWeights", "init_args": {"folder": str(run / "ranks")}}
    args = small_fit_args(run, root=cifar_root, subset=64, steps=2, batch_size=16, width=0.25,
                          configs=(*RECIPE, "configs/trainer/ddp_cpu.yaml"), extra=[
                              "--model.init_weights", str(weights), "--checkpoint.monitor", "null",
                              "--trainer.callbacks+=" + json.dumps(record), *extra])
    done = run_fit(repo_root, args)
    assert done.returncode == 0, done.stderr[-4000:]
    return run / "ranks"


@pytest.mark.slow
def test_every_rank_starts_from_the_same_weights_new_classifier_included(
        repo_root: Path, cifar_root: Path, tmp_path: Path, weights: tuple[Path, dict]) -> None:
    path, source = weights
    ranks = _finetune(repo_root, cifar_root, tmp_path / "run", path, "--model.freeze", "stage1")
    start = [torch.load(ranks / f"start{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert start[0].keys() == start[1].keys() == source.keys()
    assert [k for k in start[0] if not torch.equal(start[0][k], start[1][k])] == []
    assert start[0]["fc.weight"].shape[0] == 10 and source["fc.weight"].shape[0] == 100  # a new classifier
    assert [k for k in source if not k.startswith("fc.") and not torch.equal(start[0][k], source[k])] == []


@pytest.mark.slow
def test_frozen_batch_norms_stay_frozen_with_sync_batchnorm_on_two_ranks(
        repo_root: Path, cifar_root: Path, tmp_path: Path, weights: tuple[Path, dict]) -> None:
    # The whole backbone frozen: DDP on CPUs refuses any SyncBatchNorm, so the run trains only if
    # no frozen batch norm was turned into one (on GPUs the converted ones would train).
    path, source = weights
    ranks = _finetune(repo_root, cifar_root, tmp_path / "run", path, "--model.freeze", "backbone",
                      "--trainer.sync_batchnorm", "true")
    for rank in (0, 1):
        batches = [json.loads(line) for line in (ranks / f"bn{rank}.txt").read_text().splitlines()]
        assert len(batches) == 2 and len(batches[0]) == 19  # the stem's and 3 stages x 3 blocks x 2
        assert all(mode == ["FrozenBatchNorm2d", False] for modes in batches for mode in modes.values())
        end = torch.load(ranks / f"end{rank}.pt", weights_only=True)
        assert [k for k in source if not k.startswith("fc.") and not torch.equal(end[k], source[k])] == []
        assert not torch.equal(end["fc.weight"], torch.load(ranks / f"start{rank}.pt", weights_only=True)["fc.weight"])


def test_sync_batchnorm_converts_only_the_batch_norms_that_train() -> None:
    """What Lightning's DDP does to the module when it sets up with ``sync_batchnorm=True`` (its plugin's
    ``apply``, after ``setup``), then ``.train()`` as every epoch starts: frozen batch norms (stem and
    stage 1) stay frozen, in eval mode; the others become ``SyncBatchNorm`` and train."""
    model = ImageClassifier(arch="resnet20", num_classes=10, width=0.25, freeze="stage1")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", sync_batchnorm=True, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model.trainer = trainer  # what Trainer.fit does before calling setup; nothing is launched here
    model.setup("fit")
    model = trainer.strategy._layer_sync.apply(model)
    model.train()
    frozen = {n: (type(m), m.training) for n, m in model.model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and n.startswith(("bn1", "layer1."))}
    rest = {n: (type(m), m.training) for n, m in model.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and n.startswith(("layer2.", "layer3."))}
    assert len(frozen) == 7 and set(frozen.values()) == {(FrozenBatchNorm2d, False)}
    assert len(rest) == 12 and set(rest.values()) == {(nn.SyncBatchNorm, True)}
