"""Which optimiser class an ``optimizer.name`` means, and how its learning rate grows with the batch.

Every ``torch.optim`` optimiser by its class name (``SGD``, ``AdamW``, ...), and the large-batch
optimisers the modern ResNet recipes use, from timm: ``Lamb`` (You et al. 2019, arXiv:1904.00962;
timm's "ResNet strikes back" A1-A3) and ``Lars`` (You et al. 2017, arXiv:1708.03888). timm is an
optional extra (``pip install resnet-lit[recipes]``), imported only when one of its optimisers is named,
so the paper's recipes need nothing beyond torch.

The scaling rules (``OptimizerConfig.scaling``) turn the lr stated for ``reference_batch`` images into
the lr of the global batch: ``linear`` (Goyal et al. 2017: SGD), ``sqrt`` (Krizhevsky 2014, Hoffer et
al. 2017: the usual rule for Adam-type and LAMB optimisers) or ``none`` (the lr as written).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Literal

import torch

Scaling = Literal["linear", "sqrt", "none"]

# optimiser name -> (module, class, the extra that installs the module)
EXTERNAL: dict[str, tuple[str, str, str]] = {
    "Lamb": ("timm.optim", "Lamb", "recipes"),
    "Lars": ("timm.optim", "Lars", "recipes"),
}

# scaling rule -> lr multiplier, from global_batch / reference_batch
SCALING: dict[str, Callable[[float], float]] = {
    "linear": lambda ratio: ratio,
    "sqrt": math.sqrt,
    "none": lambda ratio: 1.0,
}


def scale_factor(rule: str, reference_batch: int, global_batch: int) -> float:
    """The lr multiplier of ``rule`` for ``global_batch`` images a step, lr being stated for ``reference_batch``."""
    if rule not in SCALING:
        raise ValueError(f"optimizer.scaling {rule!r} is not known; use one of {', '.join(SCALING)}")
    return SCALING[rule](global_batch / reference_batch)


def torch_optimizers() -> list[str]:
    return sorted(
        n for n, c in vars(torch.optim).items()
        if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
    )


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class ``name`` means: a ``torch.optim`` optimiser or one of ``EXTERNAL``'s (imported now)."""
    if name in EXTERNAL:
        module, attr, extra = EXTERNAL[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as error:
            raise ValueError(
                f"optimizer.name {name!r} needs {module.split('.')[0]}: pip install 'resnet-lit[{extra}]' ({error})"
            ) from error
    cls = getattr(torch.optim, name, None)
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
        return cls
    raise ValueError(
        f"optimizer.name {name!r} is not a torch.optim optimiser; valid: {', '.join(torch_optimizers())}, "
        f"or timm's {', '.join(sorted(EXTERNAL))}"
    )
