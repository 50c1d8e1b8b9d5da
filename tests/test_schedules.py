"""The paper's learning-rate schedules and the linear scaling rule, through the module's own
``configure_optimizers`` with the values the recipe configs hold."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.optimizers import scaled_lr
from resnet_lit.training.schedules import ScheduleConfig, global_batch_size, lr_factor


def _recipe(repo_root: Path, name: str) -> dict:
    return yaml.safe_load((repo_root / "configs" / name).read_text())


def _optimizer_and_lambda(recipe: dict, *, per_device: int, devices: int = 1, nodes: int = 1, accumulate: int = 1,
                          steps_per_epoch: int = 390):
    model_cfg = dict(recipe["model"])
    model_cfg.update(compile=False, channels_last=False)
    module = ImageClassifier(**model_cfg, num_classes=10)
    max_epochs = recipe["trainer"].get("max_epochs", -1)
    module._trainer = SimpleNamespace(  # only what configure_optimizers reads
        datamodule=SimpleNamespace(batch_size=per_device), num_devices=devices, num_nodes=nodes,
        accumulate_grad_batches=accumulate, max_epochs=max_epochs, num_training_batches=steps_per_epoch * accumulate,
        estimated_stepping_batches=steps_per_epoch * max(max_epochs, 1), train_dataloader=object(),  # set up
    )
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    base = optimizer.param_groups[0]["initial_lr"]
    return base, scheduler.lr_lambdas[0]


def test_cifar_steps_at_the_paper_iterations(repo_root):
    base, factor = _optimizer_and_lambda(_recipe(repo_root, "cifar10/resnet56.yaml"), per_device=128)
    lrs = {step: base * factor(step) for step in (0, 31_999, 32_000, 47_999, 48_000, 63_999)}
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[31_999] == pytest.approx(0.1)
    assert lrs[32_000] == pytest.approx(0.01)
    assert lrs[47_999] == pytest.approx(0.01)
    assert lrs[48_000] == pytest.approx(0.001)
    assert lrs[63_999] == pytest.approx(0.001)


def test_resnet110_warms_up_at_001_for_400_iterations(repo_root):
    base, factor = _optimizer_and_lambda(_recipe(repo_root, "cifar10/resnet110.yaml"), per_device=128)
    assert base * factor(0) == pytest.approx(0.01)
    assert base * factor(399) == pytest.approx(0.01)
    assert base * factor(400) == pytest.approx(0.1)
    assert base * factor(32_000) == pytest.approx(0.01)
    # ResNet-56 has no warm-up
    base56, factor56 = _optimizer_and_lambda(_recipe(repo_root, "cifar10/resnet56.yaml"), per_device=128)
    assert base56 * factor56(0) == pytest.approx(0.1)


def test_imagenet_divides_at_epochs_30_and_60(repo_root):
    steps_per_epoch = 5005  # 1,281,167 images / 256
    base, factor = _optimizer_and_lambda(_recipe(repo_root, "r50.yaml"), per_device=256,
                                         steps_per_epoch=steps_per_epoch)
    assert base == pytest.approx(0.1)
    assert base * factor(30 * steps_per_epoch - 1) == pytest.approx(0.1)
    assert base * factor(30 * steps_per_epoch) == pytest.approx(0.01)
    assert base * factor(60 * steps_per_epoch) == pytest.approx(0.001)


def test_linear_scaling_doubles_with_devices_nodes_and_accumulation(repo_root):
    recipe = _recipe(repo_root, "cifar10/resnet20.yaml")
    one, _ = _optimizer_and_lambda(recipe, per_device=128)
    two_devices, _ = _optimizer_and_lambda(recipe, per_device=128, devices=2)
    eight_nodes, _ = _optimizer_and_lambda(recipe, per_device=128, devices=2, nodes=4)
    accumulated, _ = _optimizer_and_lambda(recipe, per_device=64, accumulate=2)
    assert one == pytest.approx(0.1)
    assert two_devices == pytest.approx(2 * one)
    assert eight_nodes == pytest.approx(8 * one)
    assert accumulated == pytest.approx(one)  # 64 x 2 = 128 images a step: the paper's batch
    assert global_batch_size(32, devices=8, num_nodes=4, accumulate=2) == 2048
    assert scaled_lr(0.1, 256, 2048) == pytest.approx(0.8)


def test_cosine_warms_up_linearly_then_decays_to_zero():
    schedule = ScheduleConfig(kind="cosine", warmup_steps=100, warmup_mode="linear", warmup_factor=0.0)
    assert lr_factor(0, schedule, total_steps=1100) == 0.0
    assert lr_factor(50, schedule, total_steps=1100) == pytest.approx(0.5)
    assert lr_factor(100, schedule, total_steps=1100) == pytest.approx(1.0)
    assert lr_factor(600, schedule, total_steps=1100) == pytest.approx(0.5)
    assert lr_factor(1100, schedule, total_steps=1100) == pytest.approx(0.0, abs=1e-12)


def test_plateau_schedule_uses_reduce_on_plateau_on_val_error(repo_root):
    recipe = _recipe(repo_root, "r50.yaml")
    recipe["model"]["schedule"].update(_recipe(repo_root, "schedule/plateau.yaml")["model"]["schedule"])
    module = ImageClassifier(**{**recipe["model"], "compile": False}, num_classes=10)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=256), num_devices=1, num_nodes=1,
                                      accumulate_grad_batches=1, max_epochs=90)
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]
    assert type(scheduler["scheduler"]).__name__ == "ReduceLROnPlateau"
    assert scheduler["monitor"] == "val/error"
    assert scheduler["scheduler"].factor == pytest.approx(0.1)


def test_bad_schedule_values_are_named():
    with pytest.raises(ValueError, match="milestones must be increasing"):
        ScheduleConfig(milestones=[48000, 32000])
    with pytest.raises(ValueError, match="gamma"):
        ScheduleConfig(gamma=2.0)
    module = ImageClassifier(arch="resnet20", num_classes=10, optimizer={"name": "Sgd"})
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=128), num_devices=1, num_nodes=1,
                                      accumulate_grad_batches=1, max_epochs=1, estimated_stepping_batches=10)
    with pytest.raises(ValueError, match=r"'Sgd' is not a torch.optim optimiser; valid: .*SGD"):
        module.configure_optimizers()


@pytest.mark.parametrize("accumulate, per_epoch", [(1, 6), (4, 2)])
def test_epoch_milestones_follow_the_loader_when_max_steps_ends_the_run_first(
    cifar_root, tmp_path, accumulate, per_epoch
):
    """`configs/r50.yaml --trainer.max_steps 1000` must still divide at epochs 30 and 60: steps per
    epoch come from the training loader (192 images / 32 = 6 batches, stepped every `accumulate`),
    not from Lightning's estimate of all steps, which max_steps caps (here at 1)."""
    import lightning.pytorch as pl

    from resnet_lit.data import CIFARDataModule

    module = ImageClassifier(arch="resnet20", num_classes=10, width=0.25,
                             schedule={"milestones": [3, 6], "unit": "epoch"})
    trainer = pl.Trainer(accelerator="cpu", max_epochs=10, max_steps=1, accumulate_grad_batches=accumulate,
                         limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, CIFARDataModule(str(cifar_root), batch_size=32, subset=192))
    factor = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert factor(3 * per_epoch - 1) == 1.0
    assert factor(3 * per_epoch) == pytest.approx(0.1)
    assert factor(6 * per_epoch - 1) == pytest.approx(0.1)
    assert factor(6 * per_epoch) == pytest.approx(0.01)


def test_epoch_milestones_with_a_run_bounded_by_max_steps(imagewoof_root, tmp_path) -> None:
    # max_steps without max_epochs makes max_epochs -1, where Lightning's estimated_stepping_batches
    # does not set up the training loader; the epoch milestones still need its length
    import torch

    from resnet_lit.runs.cli import main

    main(["fit", "--model.arch", "resnet18", "--model.width", "0.25", "--model.schedule.milestones", "[1, 2]",
          "--data", "ImageNetDataModule", "--data.root", str(imagewoof_root), "--data.batch_size", "4",
          "--data.num_workers", "0", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
          "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--run_dir", str(tmp_path / "r")])
    checkpoint = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert checkpoint["hyper_parameters"]["schedule"]["unit"] == "epoch"
