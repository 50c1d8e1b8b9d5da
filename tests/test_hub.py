"""hubconf.py through torch.hub itself (source="local", as a checkout is loaded): every network by
name, untrained or with the published weights of results/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from resnet_lit.models import create_model, list_models


def test_hubconf_has_an_entry_point_for_every_network(repo_root: Path) -> None:
    # what torch.hub.list("<owner>/resnet-lit") reports: the public callables of hubconf.py
    spec = importlib.util.spec_from_file_location("hubconf", repo_root / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert set(list_models()) <= entries
    assert "resnet110" in hubconf.resnet110.__doc__


def test_torch_hub_builds_untrained_nets_with_options(repo_root: Path) -> None:
    model = torch.hub.load(str(repo_root), "resnet56", source="local", num_classes=100, width=0.5)
    reference = create_model("resnet56", num_classes=100, width=0.5)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}


def _same_weights(model: torch.nn.Module, run: Path) -> bool:
    published = create_model("resnet20", weights=run / "resnet20.safetensors")
    state = model.state_dict()
    return all(torch.equal(state[k], v) for k, v in published.state_dict().items())


def test_torch_hub_loads_the_published_weights(repo_root: Path) -> None:
    # pretrained=True: the run of that net with the lowest single-view test error (11.93 % centre),
    # not the alphabetically first folder (cifar10-resnet20-cpu, 12.39 %)
    model = torch.hub.load(str(repo_root), "resnet20", source="local", pretrained=True)
    assert _same_weights(model, repo_root / "results/cifar10-resnet20-fast40-cpu")
    named = torch.hub.load(str(repo_root), "resnet20", source="local", weights="cifar10-resnet20-cpu")
    assert _same_weights(named, repo_root / "results/cifar10-resnet20-cpu")
    # the Imagewoof ResNet-50 is built as its file records it: 10 classes, not the family's 1000
    woof = torch.hub.load(str(repo_root), "resnet50", source="local", pretrained=True)
    assert woof.num_classes == 10
    with pytest.raises(ValueError, match=r"no published weights for 'resnet18' .* \(published: resnet20, resnet50\)"):
        torch.hub.load(str(repo_root), "resnet18", source="local", pretrained=True)


def test_published_weights_are_listed_and_named(repo_root: Path) -> None:
    runs = torch.hub.load(str(repo_root), "published", source="local")
    resnet20 = [r for r in runs if r["arch"] == "resnet20"]
    assert [r["weights"] for r in resnet20] == ["cifar10-resnet20-fast40-cpu", "cifar10-resnet20-cpu",
                                                "cifar10-resnet20-fast25-cpu"]
    assert [r["default"] for r in resnet20] == [True, False, False]
    assert [r["test_error"] for r in resnet20] == sorted(r["test_error"] for r in resnet20)
    assert {r["arch"] for r in runs if r["default"]} == {"resnet20", "resnet50"}
    with pytest.raises(ValueError, match=r"no published weights 'cifar10-resnet56' for 'resnet20' .*"
                                         r"published for resnet20: cifar10-resnet20-fast40-cpu, "):
        torch.hub.load(str(repo_root), "resnet20", source="local", weights="cifar10-resnet56")
    with pytest.raises(ValueError, match="published for resnet20"):  # another net's run
        torch.hub.load(str(repo_root), "resnet20", source="local", weights="imagewoof-resnet50-128px-5ep-cpu")
