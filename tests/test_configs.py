"""Every YAML in configs/ parses through the real CLI and prints the paper's values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from resnet_lit.runs.cli import main

REPO = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))
BASE = "configs/cifar10/resnet20.yaml"


def _is_recipe(path: str) -> bool:
    data = yaml.safe_load((REPO / path).read_text()) or {}
    return "arch" in (data.get("model") or {}) and "data" in data


def _configs_to_print(path: str) -> tuple[str, ...]:
    """The file's own usage line (``#   resnet-lit fit --config A --config B``) where it has one,
    else the file alone (a recipe) or the file over a CIFAR recipe (an overlay)."""
    for line in (REPO / path).read_text().splitlines():
        if line.startswith("#") and "resnet-lit fit" in line and path in line:
            return tuple(re.findall(r"--config\s+(\S+)", re.sub(r"\[.*?\]", "", line)))
    return (path,) if _is_recipe(path) else (BASE, path)


def print_config(capsys, *configs: str, extra: tuple[str, ...] = ()) -> dict:
    args = ["fit"]
    for config in configs:
        args += ["--config", config]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_the_configs_named_in_the_issue_exist():
    names = set(ALL_CONFIGS)
    for n in ("r18", "r34", "r50", "r101", "r152", "plain18", "plain34"):
        assert f"configs/{n}.yaml" in names
    for d in (20, 32, 44, 56, 110, 1202):
        assert f"configs/cifar10/resnet{d}.yaml" in names
    for d in (20, 32, 44, 56):
        assert f"configs/cifar10/plain{d}.yaml" in names
    for n in ("trainer/cpu", "trainer/gpu", "trainer/ddp", "logger/csv", "logger/tensorboard", "logger/wandb"):
        assert f"configs/{n}.yaml" in names


@pytest.mark.parametrize("path", ALL_CONFIGS)
def test_every_config_prints(path, capsys):
    printed = print_config(capsys, *_configs_to_print(path))
    assert printed["model"]["arch"]
    overlay = yaml.safe_load((REPO / path).read_text()) or {}
    # what the file says is what the CLI resolved (spot check of every top-level model key it sets)
    for key, value in (overlay.get("model") or {}).items():
        if not isinstance(value, dict):
            assert printed["model"][key] == value, key


@pytest.mark.parametrize("name", ["r18", "r34", "r50", "r101", "r152", "plain18", "plain34"])
def test_imagenet_recipes_hold_the_paper_values(name, capsys):
    printed = print_config(capsys, f"configs/{name}.yaml")
    optimizer, schedule = printed["model"]["optimizer"], printed["model"]["schedule"]
    assert optimizer["name"] == "SGD"
    assert optimizer["lr"] == 0.1 and optimizer["reference_batch"] == 256
    assert optimizer["momentum"] == 0.9 and optimizer["weight_decay"] == 1e-4
    assert schedule["kind"] == "step" and schedule["unit"] == "epoch" and schedule["milestones"] == [30, 60]
    assert printed["trainer"]["max_epochs"] == 90
    assert printed["data"]["init_args"]["batch_size"] == 256
    assert printed["trainer"]["precision"] == "bf16-mixed" and printed["model"]["compile"] is True
    assert printed["model"]["arch"] == (name if name.startswith("plain") else f"resnet{name[1:]}")


@pytest.mark.parametrize("name",
                         ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "plain20",
                          "plain32", "plain44", "plain56"])
def test_cifar_recipes_hold_the_paper_values(name, capsys):
    printed = print_config(capsys, f"configs/cifar10/{name}.yaml")
    optimizer, schedule = printed["model"]["optimizer"], printed["model"]["schedule"]
    assert optimizer["lr"] == 0.1 and optimizer["reference_batch"] == 128
    assert optimizer["momentum"] == 0.9 and optimizer["weight_decay"] == 1e-4
    assert schedule["unit"] == "step" and schedule["milestones"] == [32000, 48000] and schedule["gamma"] == 0.1
    assert printed["trainer"]["max_steps"] == 64000
    assert printed["data"]["init_args"]["batch_size"] == 128
    assert printed["model"]["arch"] == name
    assert printed["model"]["shortcut"] is None  # CIFAR family default: option A
    assert schedule["warmup_steps"] == (400 if name in ("resnet110", "resnet1202") else 0)


def test_overlays_compose_in_order(capsys):
    printed = print_config(capsys, "configs/cifar10/resnet56.yaml", "configs/trainer/cpu.yaml",
                           "configs/schedule/cosine.yaml",
                           extra=("--model.width", "2"))
    assert printed["trainer"]["precision"] in ("32", 32)
    assert printed["model"]["compile"] is False
    assert printed["model"]["schedule"]["kind"] == "cosine"
    assert printed["model"]["schedule"]["milestones"] == [32000, 48000]  # untouched keys survive
    assert printed["model"]["width"] == 2


def _multiply_adds(model: dict) -> float:
    import torch

    from resnet_lit.models import count_flops, create_model

    with torch.device("meta"):
        net = create_model(model["arch"], stride_in_1x1=bool(model.get("stride_in_1x1")))
    return count_flops(net, (1, 3, 224, 224)) / 1e9


@pytest.mark.parametrize("name", ["r18", "r34", "r50", "r101", "r152"])
def test_recipe_states_the_multiply_adds_of_the_net_it_trains(name, capsys):
    """r50.yaml said 3.8e9 (the paper's v1) but trains v1.5 (4.1e9): the comment names the net trained."""
    head = "".join(line for line in (REPO / f"configs/{name}.yaml").read_text().splitlines(keepends=True)
                   if line.startswith("#"))
    stated = re.search(r"(\d+(?:\.\d+)?)e9 multiply-adds", head)
    assert stated, head
    counted = _multiply_adds(print_config(capsys, f"configs/{name}.yaml")["model"])
    assert abs(float(stated.group(1)) / counted - 1) < 0.02, (stated.group(0), counted)


@pytest.mark.parametrize(("net", "table1"), [("resnet50", 3.8), ("resnet101", 7.6), ("resnet152", 11.3)])
def test_table3_overlays_train_the_papers_v1_bottleneck(net, table1, capsys):
    model = print_config(capsys, f"configs/r{net[6:]}.yaml", f"configs/experiments/imagenet/{net}.yaml")["model"]
    assert model["stride_in_1x1"] is True and model["shortcut"] == "B"
    assert abs(_multiply_adds(model) / table1 - 1) < 0.03
