"""Checkpoints, configs and import paths from resnet-lit 0.1.0 (before the modules moved into
subpackages) keep working.

``fixtures/checkpoint_0.1.0/`` was written by that code (commit 9af44f4): ``step02.ckpt``, a
ResNet-20 (width 0.25) checkpoint taken mid-epoch at step 2 of a real CIFAR-10 fit
(``test_resume.py``'s command with ``--trainer.max_steps 3`` and a ModelCheckpoint every 2 steps),
and the ``config.yaml`` that run saved. ``test_resume.py`` resumes the checkpoint.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml

from resnet_lit.checkpointing.weights import load_state_dict_file
from resnet_lit.commands.export import build_from_file
from resnet_lit.data import CIFARDataModule
from resnet_lit.runs.cli import main
from resnet_lit.training.classifier import ImageClassifier

OLD = Path(__file__).parent / "fixtures" / "checkpoint_0.1.0"


def test_a_0_1_0_checkpoint_loads_into_the_module_and_the_weight_readers(cifar_root: Path) -> None:
    ckpt = OLD / "step02.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["global_step"] == 2 and raw["resnet_lit"]["train_counts"]["seen"] == 64
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert model.hparams.arch == "resnet20" and model.hparams.width == 0.25
    assert model.train_accuracy.state_dict() == {
        k: raw["resnet_lit"]["train_counts"][k] for k in ("hits1", "hits5", "seen")
    }
    weights = {k.removeprefix("model."): v for k, v in raw["state_dict"].items()}
    assert all(torch.equal(v, weights[k]) for k, v in model.model.state_dict().items())
    state_dict, metadata = load_state_dict_file(ckpt)
    assert metadata["arch_spec"]["name"] == "resnet20" and metadata["class_names"][0] == "airplane"
    exported, _ = build_from_file(ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-5)  # the module runs channels-last (cpu.yaml)
    # The DataModule's hyperparameters, saved under the old module layout, rebuild it.
    data = CIFARDataModule.load_from_checkpoint(ckpt, root=str(cifar_root))
    assert (data.hparams.batch_size, data.hparams.subset, data.eval_batch_size) == (32, 128, 32)


def test_a_0_1_0_config_yaml_still_parses(
    capsys: pytest.CaptureFixture[str], repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved config.yaml names resnet_lit.csv_logger.ResumableCSVLogger (the logger of a resumable fit)."""
    monkeypatch.chdir(repo_root)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(OLD / "config.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["logger"]["class_path"] == "resnet_lit.csv_logger.ResumableCSVLogger"
    assert printed["model"]["arch"] == "resnet20"


@pytest.mark.parametrize(
    "old, name",
    [
        ("resnet_lit.module", "ImageClassifier"),
        ("resnet_lit.cli", "main"),
        ("resnet_lit.csv_logger", "ResumableCSVLogger"),
        ("resnet_lit.checkpoint_io", "AtomicCheckpointIO"),
        ("resnet_lit.checkpoints", "load_state_dict_file"),
        ("resnet_lit.schedules", "OptimizerConfig"),
        ("resnet_lit.finetune", "apply_freeze"),
        ("resnet_lit.resume", "resolve_ckpt_path"),
        ("resnet_lit.callbacks", "Throughput"),
        ("resnet_lit.predict", "PredictionWriter"),
        ("resnet_lit.export", "main"),
        ("resnet_lit.report", "main"),
        ("resnet_lit.data.imagenet_val", "main"),
        ("resnet_lit.data.imagefolder", "ImageFiles"),
    ],
)
def test_old_module_paths_import_the_moved_modules(old: str, name: str) -> None:
    from resnet_lit._moved import MOVED

    module = importlib.import_module(old)
    new = importlib.import_module(MOVED[old])
    assert module is new and getattr(module, name) is getattr(new, name)
    assert module.__spec__.name == MOVED[old]  # the module keeps its own name and spec
