"""Freezing (frozen BN stays frozen through .train()), parameter groups, and a real fine-tuning run."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from weights_helpers import extract_folder, real_batch

from resnet_lit.data import ImageNetDataModule
from resnet_lit.models import create_model
from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.finetune import FrozenBatchNorm2d, apply_freeze, param_groups


def _bn_training(model: nn.Module, prefix: str) -> set[bool]:
    return {m.training for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.BatchNorm2d)}


def test_freeze_up_to_stage2_keeps_keys_and_bn_eval() -> None:
    model = create_model("resnet18")
    keys = list(model.state_dict())
    frozen = apply_freeze(model, "stage2")
    assert list(model.state_dict()) == keys  # checkpoints of frozen and unfrozen nets are interchangeable
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(frozen) == {n for n, _ in model.named_parameters()} - trainable
    assert all(n.startswith(("conv1.", "bn1.", "layer1.", "layer2.")) for n in frozen)
    assert all(n.startswith(("layer3.", "layer4.", "fc.")) for n in trainable)
    model.train()  # what Lightning does at every training epoch start
    assert _bn_training(model, "layer2") == {False} and _bn_training(model, "bn1") == {False}
    assert _bn_training(model, "layer3") == {True}
    assert isinstance(model.layer1[0].bn1, FrozenBatchNorm2d) and type(model.layer3[0].bn1) is nn.BatchNorm2d


def test_freeze_choices_and_errors() -> None:
    model = create_model("resnet20")
    assert apply_freeze(model, "none") == [] and all(p.requires_grad for p in model.parameters())
    assert set(apply_freeze(create_model("resnet20"), "stem")) == {"conv1.weight", "bn1.weight", "bn1.bias"}
    backbone = create_model("resnet20")
    apply_freeze(backbone, "backbone")
    assert [n for n, p in backbone.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError,
                       match=r"freeze='stage4' is not valid for this 3-stage net; "
                             r"use one of none, stem, stage1, stage2, stage3, backbone"):
        apply_freeze(model, "stage4")


def test_every_freeze_value_in_the_docs_is_accepted_by_the_cli(repo_root: Path) -> None:
    """docs/finetune.md's table and `--model.freeze` agree: each documented value parses and freezes."""
    from jsonargparse import ArgumentParser

    table = (repo_root / "docs" / "finetune.md").read_text().split("`--model.freeze`", 1)[1].split("\n\n", 2)[1]
    documented = re.findall(r"^\| `(\w+)`(?: \.\.\. `(\w+)`)? \|", table, flags=re.M)
    values = [v for pair in documented for v in pair if v]
    values += [f"stage{k}" for k in range(2, 4)]  # the "stage1 ... stage4" row
    assert {"none", "stem", "stage1", "stage4", "backbone"} <= set(values)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ImageClassifier, "model")
    for value in values:
        assert parser.parse_args(["--model.arch", "resnet18", "--model.freeze", value]).model.freeze == value
        apply_freeze(create_model("resnet18"), value)


def test_param_groups_lrs_decay_and_frozen() -> None:
    model = create_model("resnet20")
    apply_freeze(model, "stage1")
    groups = {g["name"]: g for g in param_groups(model, lr=0.1, backbone_lr_scale=0.1, weight_decay=1e-4,
                                                 no_decay_bn_bias=True)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["head"]["lr"] == 0.1 and groups["backbone"]["lr"] == pytest.approx(0.01)
    assert groups["backbone"]["weight_decay"] == 1e-4 and groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert [p.shape for p in groups["head"]["params"]] == [torch.Size([10, 64])]  # fc.weight; fc.bias not decayed
    names = {id(p): n for n, p in model.named_parameters()}
    in_groups = {names[id(p)] for g in groups.values() for p in g["params"]}
    assert in_groups == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("layer1.", "conv1", "bn1")) for n in in_groups)
    assert all(p.ndim == 4 for p in groups["backbone"]["params"])  # only convs decay in the backbone
    plain = param_groups(create_model("resnet20"), lr=0.4, weight_decay=5e-4)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in plain] == [("backbone", 0.4, 5e-4), ("head", 0.4, 5e-4)]


def test_frozen_backbone_unchanged_by_training_steps(imagewoof_root: Path) -> None:
    x = real_batch(imagewoof_root, n=4, size=64)
    y = torch.arange(4)
    model = create_model("resnet18", num_classes=4)
    apply_freeze(model, "backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=1e-4), lr=0.1, momentum=0.9)
    for _ in range(3):
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith("fc."):
            assert not torch.equal(after[k], v), k
        else:
            assert torch.equal(after[k], v), k  # weights, BN affine AND running statistics


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _AtTrainStart(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = _snapshot(pl_module.model)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.train()  # Lightning < 2.2 (and much user code) does this every epoch: frozen BN must survive it


def test_finetune_10_to_5_classes_with_frozen_backbone(imagewoof_root: Path, tmp_path: Path) -> None:
    """A real Lightning fit on real photographs: a 10-class checkpoint becomes a 5-class classifier;
    before the first step everything but the head equals the source, after the steps the frozen backbone
    (parameters and BN statistics) is still bit-identical and the head has moved."""
    source = ImageClassifier(arch="resnet18", num_classes=10)
    source.model.train()
    with torch.no_grad():  # non-default BN statistics, so a reset would show
        source.model(real_batch(imagewoof_root, n=4, size=64))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(source)
    trainer.save_checkpoint(ckpt := tmp_path / "ten.ckpt")
    src = _snapshot(source.model)

    root = tmp_path / "five"
    extract_folder(imagewoof_root, root / "train", per_class=2, classes=5, split="train")
    extract_folder(imagewoof_root, root / "val", per_class=1, classes=5, split="val")
    data = ImageNetDataModule(str(root), batch_size=5, num_workers=0, augmentation="modern")
    model = ImageClassifier(arch="resnet18", num_classes=data.num_classes, class_names=data.classes,
                            init_weights=str(ckpt), freeze="backbone")
    start = _AtTrainStart()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[start],
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2
    end = _snapshot(model.model)
    for k, v in src.items():
        if k.startswith("fc."):
            assert start.state[k].shape[0] == 5 and v.shape[0] == 10  # re-initialised for the new classes
            assert not torch.equal(end[k], start.state[k]), f"head {k} did not train"
        else:
            assert torch.equal(start.state[k], v), f"{k} not loaded from the checkpoint"
            assert torch.equal(end[k], v), f"frozen {k} changed during training"


def test_finetune_config_runs_from_torchvision_weights(imagewoof_root: Path, tmp_path: Path, repo_root: Path) -> None:
    """configs/finetune/imagewoof_r18.yaml end to end through `resnet-lit fit`: torchvision weights (1000
    classes) into a 10-class net, stem and stage 1 frozen, a real step on real photographs."""
    import torchvision

    from resnet_lit.checkpointing.weights import load_state_dict_file
    from resnet_lit.runs.cli import main

    tv = torchvision.models.resnet18(weights=None)
    tv.train()
    with torch.no_grad():
        tv(real_batch(imagewoof_root, n=4, size=64))
    torch.save(tv.state_dict(), weights := tmp_path / "resnet18_tv.pth")
    root = tmp_path / "woof"
    extract_folder(imagewoof_root, root / "train", per_class=1, split="train")
    extract_folder(imagewoof_root, root / "val", per_class=1, split="val")
    run_dir = tmp_path / "run"
    main([
        "fit", "--config", str(repo_root / "configs/finetune/imagewoof_r18.yaml"),
        "--config", str(repo_root / "configs/trainer/cpu.yaml"),
        "--model.init_weights", str(weights), "--data.root", str(root), "--data.batch_size", "5",
        "--data.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--run_dir", str(run_dir),
        "--trainer.log_every_n_steps", "1",
    ])  # fmt: skip
    with open(run_dir / "metrics.csv", newline="") as f:  # the groups' lrs differ: one column each
        lrs = [(float(r["lr/backbone"]), float(r["lr/head"])) for r in csv.DictReader(f) if r.get("lr/head")]
    assert len(lrs) == 2 and all(backbone == pytest.approx(0.1 * head) for backbone, head in lrs)
    state, metadata = load_state_dict_file(run_dir / "checkpoints" / "last.ckpt")
    assert metadata["hparams"]["freeze"] == "stage1" and metadata["hparams"]["optimizer"]["backbone_lr_scale"] == 0.1
    assert metadata["class_names"] == sorted(p.name for p in (root / "train").iterdir())
    src = tv.state_dict()
    assert state["fc.weight"].shape == (10, 512)
    for k, v in state.items():
        if k.startswith(("conv1.", "bn1.", "layer1.")):
            assert torch.equal(v, src[k]), f"frozen {k} changed"
    assert not torch.equal(state["layer4.1.conv2.weight"], src["layer4.1.conv2.weight"])  # trained, at 0.1 x lr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compile + bf16-mixed + channels_last)")
@pytest.mark.parametrize(("freeze", "frozen"),
                         [("backbone", ("conv1.", "bn1.", "layer")),
                          ("stage2", ("conv1.", "bn1.", "layer1.", "layer2."))])
def test_frozen_bn_with_compile_bf16_on_gpu(freeze: str, frozen: tuple[str, ...], imagewoof_root: Path,
                                            tmp_path: Path) -> None:
    """The GPU recipe (compiled backbone, bf16-mixed, channels_last): frozen parts bit-identical after
    steps and validation, the rest trained, and the checkpoint exports."""
    from resnet_lit.commands.export import main as export_main

    source = ImageClassifier(arch="resnet18", num_classes=10)
    source.model.train()
    with torch.no_grad():
        source.model(real_batch(imagewoof_root, n=4, size=64))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(source)
    trainer.save_checkpoint(ckpt := tmp_path / "src.ckpt")
    src = _snapshot(source.model)
    root = tmp_path / "woof"
    extract_folder(imagewoof_root, root / "train", per_class=4, split="train")
    extract_folder(imagewoof_root, root / "val", per_class=2, split="val")
    data = ImageNetDataModule(str(root), batch_size=8, num_workers=2, augmentation="modern")
    model = ImageClassifier(arch="resnet18", num_classes=10, init_weights=str(ckpt), freeze=freeze, compile=True,
                            channels_last=True)
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, precision="bf16-mixed", max_epochs=2, limit_train_batches=3, limit_val_batches=1,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path / "run"),
    )
    trainer.fit(model, datamodule=data)
    end = {k: v.detach().cpu() for k, v in model.model.state_dict().items()}
    assert set(end) == set(src)  # compiled in place: no _orig_mod. keys
    assert [k for k in src if k.startswith(frozen) and not torch.equal(end[k], src[k])] == []
    assert not torch.equal(end["fc.weight"], src["fc.weight"])
    last = next((tmp_path / "run").rglob("*.ckpt"))
    assert export_main([str(last), "--format", "pt2", "--image-size", "64", "-o", str(tmp_path / "m.pt2")]) == 0


def test_init_weights_mismatch_names_the_file(tmp_path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights := tmp_path / "r18.pth")
    model = ImageClassifier(arch="resnet34", num_classes=10, init_weights=str(weights))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    model.trainer = trainer  # what Trainer.fit does before calling on_fit_start
    with pytest.raises(ValueError,
                       match=rf"weights in {weights} do not fit the model resnet34:(.|\n)*"
                             r"The file looks like: resnet18"):
        model.on_fit_start()
