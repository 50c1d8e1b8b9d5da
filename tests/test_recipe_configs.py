"""configs/recipes/*.yaml: each parses through the real CLI with the values its source states, names
its source and published number, and trains 2 steps on the CPU overlay on real images (a
quarter-width network, a few images)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from resnet_lit.runs.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs" / "recipes").glob("*.yaml"))
CPU = "configs/trainer/cpu.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _print(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_the_recipes_named_in_the_issue_exist():
    assert set(RECIPES) >= {f"configs/recipes/{n}.yaml" for n in (
        "torchvision_r50", "timm_rsb_a1", "timm_rsb_a3", "ffcv_r50_16ep", "cifar10_resnet20_fast")}


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_parses_and_names_its_source(path, capsys):
    text = (REPO / path).read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert re.search(r"\d+(\.\d+)? %", header), "a published (or target) figure in %"
    assert re.search(r"arXiv|github|blog|libffcv|He et al", header, re.IGNORECASE), "its source"
    printed = _print(capsys, "--config", path)
    assert printed["model"]["arch"] in ("resnet50", "resnet20")


def test_recipes_hold_their_sources_values(capsys):
    tv = _print(capsys, "--config", "configs/recipes/torchvision_r50.yaml")["data"]["init_args"]
    assert (tv["train_size"], tv["test_size"], tv["test_resize"]) == (176, 224, 232)
    augment = tv["augment"]
    assert (augment["auto_augment"], augment["random_erasing"], augment["repeated_augmentation"]) == ("ta_wide", 0.1, 4)
    tv_model = _print(capsys, "--config", "configs/recipes/torchvision_r50.yaml")["model"]
    assert tv_model["ema"]["update_every_n_steps"] == 32 and tv_model["label_smoothing"] == 0.1
    assert (augment["mixup_alpha"], augment["cutmix_alpha"]) == (0.2, 1.0)
    a1 = _print(capsys, "--config", "configs/recipes/timm_rsb_a1.yaml")
    model = a1["model"]
    assert (model["loss"], model["optimizer"]["name"], model["drop_path_rate"]) == ("bce", "Lamb", 0.05)
    a1_augment = a1["data"]["init_args"]["augment"]
    assert (a1_augment["mixup_alpha"], a1_augment["repeated_augmentation"]) == (0.2, 3)
    a3 = _print(capsys, "--config", "configs/recipes/timm_rsb_a3.yaml")
    assert (a3["model"]["loss"], a3["model"]["optimizer"]["name"]) == ("bce", "Lamb")
    assert a3["data"]["init_args"]["train_size"] == 160 and a3["trainer"]["max_epochs"] == 100
    assert a3["data"]["init_args"]["augment"]["auto_augment_magnitude"] == 6
    ffcv = _print(capsys, "--config", "configs/recipes/ffcv_r50_16ep.yaml")["data"]["init_args"]
    assert ffcv["test_mode"] == "flip"
    assert ffcv["progressive_resize"] == {"start_size": 160, "end_size": 192, "start_epoch": 11, "end_epoch": 13,
                                          "step": 32}
    fast = _print(capsys, "--config", "configs/recipes/cifar10_resnet20_fast.yaml")
    assert fast["model"]["ema"]["decay"] == 0.999 and fast["data"]["init_args"]["test_mode"] == "flip"


@pytest.mark.slow  # 7-35 s each on 2 busy CPU cores (a ResNet-50 at width 0.25 built, 2 steps, a checkpoint)
@pytest.mark.parametrize("path", RECIPES)
def test_recipe_trains_two_steps_on_the_cpu(path, tmp_path, cifar_root, imagewoof_root):
    cifar = "cifar10" in path
    data = (["--data.root", str(cifar_root), "--data.subset", "64", "--data.batch_size", "8"] if cifar else
            ["--data.root", str(imagewoof_root), "--data.batch_size", "2", "--data.num_workers", "0"])
    args = ["fit", "--config", path, "--config", CPU, *data, "--data.eval_batch_size", "2",
            "--model.width", "0.25", "--trainer.max_steps", "2",
            "--model.schedule.steps_at_batch", "null", "--trainer.limit_val_batches", "1",
            "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
            "--run_dir", str(tmp_path / "run")]
    main(args)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
