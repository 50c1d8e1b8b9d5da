"""AugmentConfig (data/augment.py): one augmentation setting that both DataModules take, checked
once with a line naming its key; the old flat keys named at their new place on the command line
and in config files; checkpoints written with the flat keys still load and resume.

``fixtures/checkpoint_flat_augment/step02.ckpt`` was written by the code before AugmentConfig
(commit 25f128b): ``fit_helpers.small_fit_args`` (ResNet-20 at width 0.25, 128 images, batch 32) with
``--trainer.deterministic true --checkpoint.monitor null --checkpoint.every_n_train_steps 2
--checkpoint.save_top_k -1`` and the flat options of ``FLAT`` below, its step-2 checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from fit_helpers import run_fit, small_fit_args

from resnet_lit.data import CIFARDataModule, ImageNetDataModule
from resnet_lit.data.augment import AugmentConfig
from resnet_lit.runs.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_flat_augment" / "step02.ckpt"
# What the fixture's run set, as flat keys then and as AugmentConfig now
FLAT = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "auto_augment": "ta_wide", "random_erasing": 0.25,
        "repeated_augmentation": 2}
CIFAR = ["--config", "configs/cifar10/resnet20.yaml", "--config", "configs/trainer/cpu.yaml"]


@pytest.fixture(autouse=True)
def _in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)


# ------------------------------------------------------------------ the config
@pytest.mark.parametrize(
    "values, line",
    [
        ({"mixup_alpha": -0.2}, "augment.mixup_alpha must be >= 0 (0 turns MixUp off), got -0.2"),
        ({"cutmix_alpha": -1.0}, "augment.cutmix_alpha must be >= 0 (0 turns CutMix off), got -1.0"),
        ({"auto_augment": "rand-m9"}, "augment.auto_augment 'rand-m9': use one of none, ra, ta_wide, aa"),
        ({"auto_augment_magnitude": 31}, "augment.auto_augment_magnitude must be in 0..30 (RandAugment's 31 bins), "
                                         "got 31"),
        ({"random_erasing": 1.5}, "augment.random_erasing is a probability: give a value in [0, 1] (0: off), got 1.5"),
        ({"policy_groups": 0}, "augment.policy_groups must be >= 1, or null for the policy per image on the host, "
                               "got 0"),
        ({"repeated_augmentation": 0}, "augment.repeated_augmentation must be >= 1 (1: off), got 0"),
        ({"repeated_augmentation_epoch": "epoch"}, "augment.repeated_augmentation_epoch 'epoch': use all_repeats "
                                                   "or dataset_size"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_its_key(values, line):
    with pytest.raises(ValueError) as error:
        AugmentConfig(**values)
    assert str(error.value) == line


def test_both_datamodules_take_it_and_keep_it_as_plain_data(cifar_root, imagewoof_root):
    augment = AugmentConfig(mixup_alpha=0.2, repeated_augmentation=3, repeated_augmentation_epoch="dataset_size")
    cifar = CIFARDataModule(str(cifar_root), augment=augment)
    woof = ImageNetDataModule(str(imagewoof_root), augment=asdict(augment))  # a checkpoint's plain dict
    for dm in (cifar, woof):
        assert dm.augment == augment
        assert dm.hparams.augment == asdict(augment) and type(dm.hparams.augment) is dict  # weights_only loading
        assert dm._shard(12, train=True).repeats == 3  # the sampler reads the config
    assert CIFARDataModule(str(cifar_root)).augment == AugmentConfig()  # the paper's: all off
    with pytest.raises(ValueError, match=r"^augment\.policy_groups 4: CIFAR's only"):
        ImageNetDataModule(str(imagewoof_root), augment=AugmentConfig(policy_groups=4))


# ------------------------------------------------------------------ the command line and config files
def _print_data(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *CIFAR, *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]


def test_the_new_keys_set_the_config_from_the_command_line_and_from_a_file(capsys, tmp_path):
    assert _print_data(capsys, "--data.augment.mixup_alpha", "0.2")["augment"]["mixup_alpha"] == 0.2
    overlay = tmp_path / "augment.yaml"
    overlay.write_text("data:\n  init_args:\n    augment: {cutmix_alpha: 1.0, auto_augment: ra}\n")
    augment = _print_data(capsys, "--config", str(overlay))["augment"]
    assert (augment["cutmix_alpha"], augment["auto_augment"], augment["mixup_alpha"]) == (1.0, "ra", 0.0)


def _error_lines(capsys, *args: str) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *CIFAR, *args])
    assert exit_info.value.code == 2
    # Lightning's "Seed set to 0" comes first where the classes are being built
    return [line for line in capsys.readouterr().err.splitlines() if line != "Seed set to 0"]


HELP = " (`resnet-lit fit --help` lists every option)"


@pytest.mark.parametrize("flag", ["--data.mixup_alpha", "--data.init_args.mixup_alpha"])
def test_an_old_flat_flag_is_one_line_naming_the_new_key(flag, capsys, tmp_path):
    new = flag.replace(".mixup_alpha", ".augment.mixup_alpha")
    err = _error_lines(capsys, flag, "0.2", "--run_dir", str(tmp_path / "run"))
    assert err == [f"resnet-lit: error: {flag} moved: write {new}{HELP}"]
    assert not (tmp_path / "run").exists()


def test_an_old_flat_key_in_a_config_file_is_one_line_naming_the_new_key(capsys, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  init_args:\n    random_erasing: 0.1\n")
    err = _error_lines(capsys, "--config", str(old), "--run_dir", str(tmp_path / "run"))
    assert err == ["resnet-lit: error: data option 'random_erasing' moved under augment: write "
                   "data.init_args.augment.random_erasing in the config file (--data.augment.random_erasing on the "
                   f"command line){HELP}"]


def test_a_bad_alpha_on_the_command_line_is_one_line(capsys, tmp_path):
    err = _error_lines(capsys, "--data.augment.cutmix_alpha", "-1", "--run_dir", str(tmp_path / "run"))
    assert err == ["resnet-lit: error: augment.cutmix_alpha must be >= 0 (0 turns CutMix off), got -1.0"]


# ------------------------------------------------------------------ checkpoints with the flat keys
def test_a_checkpoint_with_the_flat_keys_rebuilds_its_augmentation(cifar_root):
    raw = torch.load(FIXTURE, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    assert {k: raw[k] for k in FLAT} == FLAT and "augment" not in raw  # what the fixture holds
    data = CIFARDataModule.load_from_checkpoint(FIXTURE, root=str(cifar_root))
    assert data.augment == AugmentConfig(**FLAT)
    assert (data.hparams.batch_size, data.hparams.subset) == (32, 128)
    assert not set(FLAT) & set(data.hparams)  # one place for them now
    # An augment given by the caller wins over the checkpoint's flat keys
    assert CIFARDataModule.load_from_checkpoint(FIXTURE, root=str(cifar_root), augment={}).augment == AugmentConfig()


def _fit(repo_root: Path, cifar_root: Path, run: Path, *extra: str):
    augment = [item for key, value in FLAT.items() for item in (f"--data.augment.{key}", str(value))]
    args = small_fit_args(run, root=cifar_root, subset=128, steps=4, width=0.25, extra=[
        "--trainer.deterministic", "true", "--checkpoint.monitor", "null", "--checkpoint.every_n_train_steps", "2",
        "--checkpoint.save_top_k", "-1", *augment, *extra])
    done = run_fit(repo_root, args)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow  # two short fits
def test_a_checkpoint_with_the_flat_keys_resumes_as_an_uninterrupted_run(repo_root, cifar_root, tmp_path):
    straight = _fit(repo_root, cifar_root, tmp_path / "straight")
    resumed = _fit(repo_root, cifar_root, tmp_path / "resumed", "--ckpt_path", str(FIXTURE))
    assert straight["global_step"] == resumed["global_step"] == 4
    assert resumed["datamodule_hyper_parameters"]["augment"] == asdict(AugmentConfig(**FLAT))
    fixture = torch.load(FIXTURE, map_location="cpu", weights_only=True)["state_dict"]
    step2 = next((tmp_path / "straight" / "checkpoints").glob("best-*-0000002.ckpt"))
    at2 = torch.load(step2, map_location="cpu", weights_only=True)["state_dict"]
    if all(torch.equal(at2[k], v) for k, v in fixture.items()):
        # This CPU rounds as the one that wrote the fixture: today's code drew the same batches,
        # policies and mixes as the code that wrote it, and the resumed run ends where this one does.
        assert all(torch.equal(straight["state_dict"][k], v) for k, v in resumed["state_dict"].items())
    else:  # another instruction set: only the schedule and loop state can be compared exactly
        assert straight["lr_schedulers"] == resumed["lr_schedulers"]
        assert straight["loops"]["fit_loop"]["epoch_progress"] == resumed["loops"]["fit_loop"]["epoch_progress"]
