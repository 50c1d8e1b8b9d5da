"""resnet-lit: the residual networks of He et al. 2015 with PyTorch Lightning.

The public Python API, importable from the top level::

    from resnet_lit import ImageClassifier, CIFARDataModule, ImageNetDataModule, create_model, list_models

- ``create_model(name, num_classes=..., weights=...)`` / ``list_models()``: the networks alone
  (``resnet_lit.models``), plain ``nn.Module``s; ``weights`` loads a published ``.safetensors``.
- ``ImageClassifier``: the LightningModule that trains them (``resnet_lit.training.classifier``).
- ``CIFARDataModule`` / ``ImageNetDataModule``: the data (``resnet_lit.data``).

Each is imported on first use, so ``import resnet_lit`` stays cheap (no Lightning import for
``create_model``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from resnet_lit._version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "create_model": "resnet_lit.models",
    "list_models": "resnet_lit.models",
    "ImageClassifier": "resnet_lit.training.classifier",
    "CIFARDataModule": "resnet_lit.data",
    "ImageNetDataModule": "resnet_lit.data",
}
__all__ = ["CIFARDataModule", "ImageClassifier", "ImageNetDataModule", "__version__", "create_model", "list_models"]

if TYPE_CHECKING:
    from resnet_lit.data import CIFARDataModule, ImageNetDataModule
    from resnet_lit.models import create_model, list_models
    from resnet_lit.training.classifier import ImageClassifier


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'resnet_lit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
