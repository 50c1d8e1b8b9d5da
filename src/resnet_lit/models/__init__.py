"""The networks of He et al. 2015 by name: `create_model("resnet50")`, `list_models()`."""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

from resnet_lit.depths import CIFAR_N, IMAGENET_LAYERS

from .cifar import CifarResNet
from .counting import count_flops, count_params
from .resnet import BasicBlock, Block, Bottleneck, PadShortcut, ResNet

__all__ = [
    "BasicBlock", "Bottleneck", "CifarResNet", "PadShortcut", "ResNet",
    "count_flops", "count_params", "create_model", "list_models",
]  # fmt: skip


class Arch(NamedTuple):
    family: str  # "imagenet" (Table 1, 224 px, 1000 classes) or "cifar" (sec. 4.2, 32 px, 10 classes)
    block: Block
    layers: tuple[int, ...]  # blocks per stage
    residual: bool  # False: the plain net of the same depth (Table 2, Fig. 6)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}

ARCHS: dict[str, Arch] = {}
for _prefix, _residual in (("resnet", True), ("plain", False)):
    ARCHS.update({f"{_prefix}{d}": Arch("imagenet", _BLOCKS[kind], layers, _residual)
                  for d, (kind, layers) in IMAGENET_LAYERS.items()})
    ARCHS.update({f"{_prefix}{d}": Arch("cifar", BasicBlock, (n,) * 3, _residual) for d, n in CIFAR_N.items()})

_FAMILY = {  # class, default num_classes, default shortcut (the paper's choice per family)
    "imagenet": (ResNet, 1000, "B"),
    "cifar": (CifarResNet, 10, "A"),
}
_OPTIONS = ("shortcut", "stride_in_1x1", "zero_init_residual", "width", "in_chans", "drop_path_rate")
_SHORTCUTS = ("A", "B", "C")


def list_models() -> list[str]:
    """All names `create_model` accepts: ImageNet then CIFAR depths, residual then plain."""
    return list(ARCHS)


def create_model(
    name: str, num_classes: int | None = None, *, weights: str | os.PathLike | None = None, **options: Any
) -> ResNet:
    """Build a network of the paper by name (see `list_models()`), freshly initialised or from `weights`.

    Args:
        name: e.g. "resnet50", "plain34", "resnet110", "plain56".
        num_classes: int | None = None. Outputs of the fc; None = the family's default
            (1000 for ImageNet nets, 10 for CIFAR nets).
        shortcut: "A" | "B" | "C" | None = None. Where the shape changes, A zero-pads the new
            channels of a stride-2-subsampled identity (no parameters), B projects with a 1x1
            conv + BN; C projects on every block. None = the paper's default per family
            (B for ImageNet, A for CIFAR). Plain nets have no shortcut: only None is valid.
        stride_in_1x1: bool = False. Bottleneck nets only: True strides the first 1x1 conv
            (the paper, "v1"); False strides the 3x3 (torchvision, "v1.5"). Same parameter
            shapes either way, so checkpoints record it. No effect on basic-block nets.
        zero_init_residual: bool = False. Start each residual branch's last BN at gamma = 0,
            so every block begins as the identity (Goyal et al. 2017). Not valid for plain nets.
        width: float = 1.0. Channel multiplier for every conv (rounded, at least 1 channel):
            the width-vs-depth question the paper leaves open.
        in_chans: int = 3. Input channels of the first conv.
        drop_path_rate: float = 0.0. Stochastic depth (Huang et al. 2016): in training, each residual
            branch is dropped per image with a probability rising linearly over depth from 0 (first
            block) to this rate (last block); the identity in evaluation. 0 = none, the paper's net.
            A training regulariser, not the architecture: no parameter, same state-dict keys, and
            not in `arch_spec` (the evaluated net is the same). Residual nets only.
        weights: a weights file to load strictly (safetensors, a resnet-lit `.ckpt`, a state dict
            `.pth`, torchvision's or timm's; read without unpickling code), e.g. the published
            `results/cifar10-resnet20-cpu/resnet20.safetensors`. The file must fit the
            architecture built here, classifier included: a mismatch raises `ValueError` naming
            the keys. Preprocessing is the caller's (the model card of published weights says which).

    The returned model carries `arch_spec`, plain data with which `create_model(**arch_spec)`
    rebuilds the same architecture.

    Raises:
        ValueError: unknown name or option, or an option value out of range.
    """
    if name not in ARCHS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(ARCHS)}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for create_model; valid options: {', '.join(_OPTIONS)}")
    arch = ARCHS[name]
    cls, default_classes, default_shortcut = _FAMILY[arch.family]
    shortcut = options.get("shortcut")
    stride_in_1x1 = options.get("stride_in_1x1", False)
    zero_init_residual = options.get("zero_init_residual", False)
    width = options.get("width", 1.0)
    in_chans = options.get("in_chans", 3)
    drop_path_rate = options.get("drop_path_rate", 0.0)
    num_classes = default_classes if num_classes is None else num_classes

    if shortcut is not None and shortcut not in _SHORTCUTS:
        raise ValueError(f"shortcut={shortcut!r} is not valid; use one of 'A', 'B', 'C' or None")
    if not arch.residual and shortcut is not None:
        raise ValueError(f"{name} is a plain net without shortcuts: shortcut={shortcut!r} is not valid, leave it None")
    if not arch.residual and zero_init_residual is True:
        raise ValueError(f"{name} is a plain net without residual branches: zero_init_residual must be False")
    for key, value in (("stride_in_1x1", stride_in_1x1), ("zero_init_residual", zero_init_residual)):
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} is not valid; use True or False")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width={width!r} is not valid; use a number > 0 (1.0 = the paper's channel counts)")
    if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or not 0 <= drop_path_rate < 1:
        raise ValueError(f"drop_path_rate={drop_path_rate!r} is not valid; use a number in [0, 1) (0 = none)")
    if not arch.residual and drop_path_rate:
        raise ValueError(f"{name} is a plain net without residual branches: drop_path_rate must be 0")
    for key, value in (("in_chans", in_chans), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} is not valid; use an int >= 1")

    model = cls(
        arch.block, arch.layers, num_classes,
        residual=arch.residual, shortcut=shortcut or default_shortcut, stride_in_1x1=stride_in_1x1,
        zero_init_residual=zero_init_residual, width=width, in_chans=in_chans, drop_path_rate=drop_path_rate,
    )  # fmt: skip
    model.arch_spec["name"] = name
    if weights is not None:
        from resnet_lit.checkpointing.weights import load_weights  # torch only, no Lightning

        load_weights(model, weights, num_classes_change="error")
    return model
