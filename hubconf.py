"""torch.hub entry points: every network of resnet-lit by name, with the published weights of
``results/`` where there are some.

    import torch
    model = torch.hub.load("path/to/resnet-lit", "resnet56", source="local")                 # untrained
    model = torch.hub.load("path/to/resnet-lit", "resnet20", source="local", pretrained=True)

(or ``torch.hub.load("<owner>/resnet-lit", ...)`` from GitHub, where ``torch.hub.list`` names
them all.) Each entry point takes ``create_model``'s options (``num_classes``, ``shortcut``,
``width``, ...). ``pretrained=True`` loads the weights that a published run of that network left
in ``results/<run>/`` (a ``.safetensors``, checked against its sha256 first), built as that file
records (e.g. 10 classes for the Imagewoof ResNet-50); the model card beside them says how they were
trained and how images are preprocessed. Untrained nets need no download.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

dependencies = ["torch", "torchvision", "safetensors"]

_ROOT = Path(__file__).resolve().parent
if str(_ROOT / "src") not in sys.path:  # this checkout's code, installed or not
    sys.path.insert(0, str(_ROOT / "src"))

from resnet_lit.models import create_model, list_models  # noqa: E402


def published_weights(name: str) -> Path:
    """The weights file of the published run of network ``name`` (``results/*/results.json``), checked
    against its sha256; ValueError naming what is there when no run published that network."""
    runs = sorted(_ROOT.glob("results/*/results.json"))
    for card in runs:
        info = json.loads(card.read_text())
        if info.get("arch") == name:
            path = card.parent / info["weights"]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != info["sha256"]:
                raise ValueError(f"{path}: sha256 {digest} is not the published {info['sha256']}: the file is damaged")
            return path
    have = sorted({json.loads(c.read_text()).get("arch") for c in runs})
    raise ValueError(f"no published weights for {name!r} in {_ROOT / 'results'} "
                     f"(published: {', '.join(have) or 'none'}); use pretrained=False for an untrained net")


def _published_spec(path: Path) -> dict[str, Any]:
    """The architecture the weights file records (its ``arch_spec``): a published ResNet-50 of
    Imagewoof has 10 classes, not the family's 1000."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        spec = json.loads((file.metadata() or {}).get("arch_spec", "{}"))
    spec.pop("name", None)
    return spec


def _entry(name: str):
    def entry(pretrained: bool = False, **options: Any):
        if not pretrained:
            return create_model(name, **options)
        path = published_weights(name)
        return create_model(name, weights=path, **{**_published_spec(path), **options})

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{name} of He et al. 2015, as resnet_lit.models.create_model({name!r}, **options) builds it; "
                     "pretrained=True loads the published weights of results/ (see hubconf.py).")
    return entry


for _name in list_models():
    globals()[_name] = _entry(_name)
