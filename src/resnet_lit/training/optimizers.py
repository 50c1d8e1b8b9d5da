"""The optimiser: its settings (``OptimizerConfig``), which class an ``optimizer.name`` means, how its
learning rate grows with the batch, and ``build_optimizer``.

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
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser. Defaults are the paper's: SGD, momentum 0.9, weight decay 1e-4.

    Args:
        name: a class in ``torch.optim`` (``SGD``, ``AdamW``, ``RMSprop``, ...), or timm's ``Lamb`` or
            ``Lars`` (``pip install resnet-lit[recipes]``; training/optimizers.py).
        lr: learning rate for ``reference_batch`` images; the module scales it to the global batch
            (per-device batch x devices x nodes x gradient accumulation) by ``scaling``.
        reference_batch: the batch ``lr`` is stated for: 256 for ImageNet, 128 for CIFAR (the paper's).
        scaling: how the lr follows the global batch: ``linear`` (Goyal et al. 2017; the paper's SGD),
            ``sqrt`` (square root of the ratio: Adam-type and LAMB recipes) or ``none``.
        momentum: passed only to optimisers that take it.
        weight_decay: L2 penalty (1e-4 in the paper).
        no_decay_bn_bias: exempt batch-norm and bias parameters from weight decay.
        backbone_lr_scale: learning rate of everything but the classifier, relative to the
            classifier's (fine-tuning; 1.0 trains all at the same rate).
        fused: use the fused kernel where the optimiser has one; ``None`` means on CUDA only.
        args: further keyword arguments for the optimiser (``nesterov``, ``betas``, ...).
    """

    name: str = "SGD"
    lr: float = 0.1
    reference_batch: int = 256
    scaling: Scaling = "linear"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False
    backbone_lr_scale: float = 1.0
    fused: bool | None = None
    args: dict[str, Any] = field(default_factory=dict)


def scaled_lr(lr: float, reference_batch: int, global_batch: int, scaling: Scaling = "linear") -> float:
    """The lr for ``global_batch`` images a step: by default the linear scaling rule (Goyal et al. 2017),
    lr grows with the global batch; ``sqrt`` with its square root; ``none`` not at all."""
    return lr * scale_factor(scaling, reference_batch, global_batch)


def build_optimizer(cfg: OptimizerConfig, groups: list[dict[str, Any]], lr: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimiser class ``cfg.name`` (``torch.optim`` or timm's, training/optimizers.py) over the
    parameter ``groups``, at the scaled ``lr``."""
    cls = optimizer_class(cfg.name)
    accepted = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": cfg.weight_decay}
    if "momentum" in accepted:
        kwargs["momentum"] = cfg.momentum
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    if fused and "fused" in accepted:
        kwargs["fused"] = True
    kwargs.update(cfg.args)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"optimizer.args {unknown} are not arguments of {cls.__module__}.{cls.__name__}; "
            f"it takes {sorted(accepted)}"
        )
    return cls(groups, **kwargs)
