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


def test_torch_hub_loads_the_published_weights(repo_root: Path) -> None:
    model = torch.hub.load(str(repo_root), "resnet20", source="local", pretrained=True)
    published = create_model("resnet20", weights=repo_root / "results/cifar10-resnet20-cpu/resnet20.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in published.state_dict().items())
    # the Imagewoof ResNet-50 is built as its file records it: 10 classes, not the family's 1000
    woof = torch.hub.load(str(repo_root), "resnet50", source="local", pretrained=True)
    assert woof.num_classes == 10
    with pytest.raises(ValueError, match=r"no published weights for 'resnet18' .* \(published: resnet20, resnet50\)"):
        torch.hub.load(str(repo_root), "resnet18", source="local", pretrained=True)
