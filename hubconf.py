"""torch.hub entry points: every network of resnet-lit by name, with the published weights of
``results/`` where there are some.

    import torch
    model = torch.hub.load("path/to/resnet-lit", "resnet56", source="local")                 # untrained
    model = torch.hub.load("path/to/resnet-lit", "resnet20", source="local", pretrained=True)  # the best
    model = torch.hub.load("path/to/resnet-lit", "resnet20", source="local", weights="cifar10-resnet20-cpu")
    torch.hub.load("path/to/resnet-lit", "published", source="local")  # published runs, each net's best first

(or ``torch.hub.load("<owner>/resnet-lit", ...)`` from GitHub, where ``torch.hub.list`` names
them all.) Each entry point takes ``create_model``'s options (``num_classes``, ``shortcut``,
``width``, ...). ``weights="<run>"`` loads the weights that the published run ``results/<run>/`` of
that network left (a ``.safetensors``, checked against its sha256 first); ``pretrained=True`` those
of its run with the lowest single-view test error (``published()`` lists them), built as that file
records (e.g. 10 classes for the Imagewoof ResNet-50); the model card beside them says how they were
trained and how images are preprocessed. Untrained nets need no download.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

dependencies = ["torch", "torchvision", "safetensors"]

_ROOT = Path(__file__).resolve().parent
if str(_ROOT / "src") not in sys.path:  # this checkout's code, installed or not
    sys.path.insert(0, str(_ROOT / "src"))

from resnet_lit.models import create_model, list_models  # noqa: E402


def published(arch: str | None = None) -> list[dict[str, Any]]:
    """The published runs of ``results/`` (of network ``arch``, or all), each as ``{"weights": <run
    folder name, what ``weights=`` takes>, "arch", "test_error" (single view, percent), "default"}``,
    best first. A hub model evaluates one view, so runs are ranked by their centre-crop test error
    (``test_error_centre``), not a flip- or crop-averaged one; the lowest is what ``pretrained=True`` loads."""
    rows = []
    for card in sorted(_ROOT.glob("results/*/results.json")):
        info = json.loads(card.read_text())
        if "weights" not in info or (arch is not None and info.get("arch") != arch):
            continue
        error = info.get("test_error_centre", info.get("test_error"))
        rows.append({"weights": card.parent.name, "arch": info.get("arch"), "test_error": error,
                     "file": str(card.parent / info["weights"])})
    rows.sort(key=lambda r: (r["arch"] or "", math.inf if r["test_error"] is None else r["test_error"], r["weights"]))
    best = {}
    for row in rows:
        row["default"] = best.setdefault(row["arch"], row["weights"]) == row["weights"]
    return rows


def published_weights(name: str, weights: str | None = None) -> Path:
    """The weights file of a published run of network ``name``, checked against its sha256: the run
    folder ``weights`` (e.g. ``"cifar10-resnet20-fast40-cpu"``), else the default (``published``).
    ValueError naming what is there when no such run published that network."""
    runs = published(name)
    chosen = [r for r in runs if r["weights"] == weights] if weights else [r for r in runs if r["default"]]
    if not chosen:
        have = (f"published for {name}: {', '.join(r['weights'] for r in runs)}" if runs else
                f"published: {', '.join(sorted({r['arch'] for r in published()})) or 'none'}")
        what = f"published weights {weights!r} for {name!r}" if weights else f"published weights for {name!r}"
        raise ValueError(f"no {what} in {_ROOT / 'results'} ({have}); "
                         "use pretrained=False for an untrained net")
    path = Path(chosen[0]["file"])
    info = json.loads((path.parent / "results.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != info["sha256"]:
        raise ValueError(f"{path}: sha256 {digest} is not the published {info['sha256']}: the file is damaged")
    return path


def _published_spec(path: Path) -> dict[str, Any]:
    """The architecture the weights file records (its ``arch_spec``): a published ResNet-50 of
    Imagewoof has 10 classes, not the family's 1000."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        spec = json.loads((file.metadata() or {}).get("arch_spec", "{}"))
    spec.pop("name", None)
    return spec


def _entry(name: str):
    def entry(pretrained: bool = False, weights: str | None = None, **options: Any):
        if not pretrained and weights is None:
            return create_model(name, **options)
        path = published_weights(name, weights)
        return create_model(name, weights=path, **{**_published_spec(path), **options})

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{name} of He et al. 2015, as resnet_lit.models.create_model({name!r}, **options) builds it; "
                     "pretrained=True loads the best published weights of results/, weights='<run>' a named one "
                     "(hubconf.published() lists them).")
    return entry


for _name in list_models():
    globals()[_name] = _entry(_name)
