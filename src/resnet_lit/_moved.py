"""Old module paths of resnet-lit, kept importable after the modules moved into subpackages.

Run directories, checkpoints and installs name modules by path: a saved ``config.yaml`` names
``resnet_lit.csv_logger.ResumableCSVLogger``, user configs ``resnet_lit.checkpoint_io.AtomicCheckpointIO``,
an existing install's ``resnet-lit`` script ``resnet_lit.cli:main``, user code
``resnet_lit.module.ImageClassifier``. Importing an old path gives the module at its new path (the
same module object, so classes compare equal and private names resolve too). Nothing is imported
until an old path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

# old path -> new path (module paths before the move into subpackages, resnet-lit 0.1.0)
MOVED = {
    "resnet_lit.module": "resnet_lit.training.classifier",
    "resnet_lit.schedules": "resnet_lit.training.schedules",
    "resnet_lit.finetune": "resnet_lit.training.finetune",
    "resnet_lit.checkpoints": "resnet_lit.checkpointing.weights",
    "resnet_lit.checkpoint_io": "resnet_lit.checkpointing.atomic_write",
    "resnet_lit.resume": "resnet_lit.checkpointing.resume",
    "resnet_lit.callbacks": "resnet_lit.runs.callbacks",
    "resnet_lit.csv_logger": "resnet_lit.runs.csv_logger",
    "resnet_lit.cli": "resnet_lit.runs.cli",
    "resnet_lit.predict": "resnet_lit.runs.predict",
    "resnet_lit.export": "resnet_lit.commands.export",
    "resnet_lit.report": "resnet_lit.commands.report",
    "resnet_lit.data.imagenet_val": "resnet_lit.commands.imagenet_val",
    "resnet_lit.data.imagefolder": "resnet_lit.data.folder",
}
_OWN_SPECS: dict[str, importlib.machinery.ModuleSpec] = {}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an import of an old path with the module at its new path."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        _OWN_SPECS[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set the module's __spec__ to the old name's: give it its own back.
        module.__spec__ = _OWN_SPECS.pop(module.__spec__.name)


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
