"""Residual blocks and the ImageNet ResNet of He et al. 2015 (arXiv:1512.03385), Table 1.

Parameter names and shapes follow torchvision (`conv1, bn1, layer1..layer4, fc`,
`layerX.Y.downsample.0/.1`), so torchvision state dicts load with `strict=True`.
The CIFAR nets (cifar.py) reuse the blocks, the stage builder and this class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

Shortcut = Literal["A", "B", "C"]


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the batch norm that follows every conv has its own (paper sec. 3.4).
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False)


def scale_channels(chs: int, width: float) -> int:
    """Channels times the width multiplier, rounded, at least 1."""
    return max(1, round(chs * width))


class PadShortcut(nn.Module):
    """Option A (paper sec. 3.3): identity that subsamples by `stride` and zero-pads the new
    channels. No parameters, no FLOPs; subsampling x[::2, ::2] matches the strided conv's output size."""

    def __init__(self, out_chs: int, stride: int) -> None:
        super().__init__()
        self.out_chs, self.stride = out_chs, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_chs - x.shape[1]))  # pads (W, H, C): zeros after the old channels

    def extra_repr(self) -> str:
        return f"out_chs={self.out_chs}, stride={self.stride}"


def make_shortcut(kind: Shortcut, in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    """The shortcut of one residual block; None means identity.

    A: pad where the shape changes; B: 1x1 projection + BN where the shape changes (eq. 2);
    C: projection on every block. Paper Table 3: B beats A by a little, C beats B by less.
    """
    changes = stride != 1 or in_chs != out_chs
    if kind == "A":
        return PadShortcut(out_chs, stride) if changes else None
    if kind == "C" or changes:
        return nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs (Fig. 2 left; ResNet-18/34 and all CIFAR nets).

    `residual=False` gives the plain block of Table 2: no shortcut, no addition.
    `stride_in_1x1` has no effect here (a basic block has no 1x1 conv); it is accepted so
    all blocks share one signature.
    """

    expansion: int = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        stride_in_1x1: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if downsample is not None and not residual:
            raise ValueError("a plain (residual=False) block has no shortcut: pass downsample=None")
        self.drop_path = _drop_path(drop_path, residual)
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def zero_init_last(self) -> None:
        # gamma = 0 in the branch's last BN: the block starts as the identity (Goyal et al. 2017).
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.drop_path is not None:  # stochastic depth: the whole branch of some images, training only
            out = self.drop_path(out)
        if self.residual:  # y = F(x) + x (eq. 1), then the ReLU after the addition (Fig. 2)
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (Fig. 5 right; ResNet-50/101/152).

    The paper strides the first 1x1 (v1, 3.8e9 mult-adds for ResNet-50); torchvision strides
    the 3x3 (v1.5, 4.1e9, slightly more accurate). Both have the same parameter shapes, so a
    checkpoint must record `stride_in_1x1` or it loads silently into the wrong variant.
    """

    expansion: int = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        stride_in_1x1: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if downsample is not None and not residual:
            raise ValueError("a plain (residual=False) block has no shortcut: pass downsample=None")
        self.drop_path = _drop_path(drop_path, residual)
        out_chs = planes * self.expansion
        self.conv1 = conv1x1(in_chs, planes, stride if stride_in_1x1 else 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, 1 if stride_in_1x1 else stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


def _drop_path(rate: float, residual: bool) -> StochasticDepth | None:
    """Stochastic depth (Huang et al. 2016, arXiv:1603.09382) of one residual branch: in training,
    each image's branch is zeroed with probability ``rate`` and kept ones scaled by 1 / (1 - rate)
    ("row" mode); the identity in evaluation. No parameters: state-dict keys stay the same."""
    if not rate:
        return None
    if not residual:
        raise ValueError("a plain (residual=False) block has no residual branch to drop: drop_path must be 0")
    return StochasticDepth(rate, "row")


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Per-block rates decaying linearly over depth, 0 for the first block to ``rate`` for the last
    (Huang et al. 2016's linear rule, as timm's ResNet)."""
    return [rate * i / max(1, blocks - 1) for i in range(blocks)]


def make_stage(
    block: Block,
    in_chs: int,
    planes: int,
    blocks: int,
    stride: int,
    *,
    residual: bool,
    shortcut: Shortcut,
    stride_in_1x1: bool,
    drop_path: Sequence[float] = (),
) -> nn.Sequential:
    """`blocks` blocks; the first one changes the resolution (stride) and the channel count.
    `drop_path`: each block's stochastic-depth rate (empty: none)."""
    layers = []
    out_chs = planes * block.expansion
    for i in range(blocks):
        s = stride if i == 0 else 1
        downsample = make_shortcut(shortcut, in_chs, out_chs, s) if residual else None
        rate = drop_path[i] if drop_path else 0.0
        layers.append(block(in_chs, planes, s, downsample, residual, stride_in_1x1, rate))
        in_chs = out_chs
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """Stem, stages of blocks, global average pool, fc (Table 1).

    Subclasses change `stage_planes` and `_make_stem` (cifar.py). Pooling is adaptive, so any
    input size works (the paper's fully convolutional multi-scale testing).
    """

    stage_planes: tuple[int, ...] = (64, 128, 256, 512)  # conv2_x .. conv5_x, before expansion
    stage_names: tuple[str, ...]

    def __init__(
        self,
        block: Block,
        layers: list[int] | tuple[int, ...],
        num_classes: int = 1000,
        *,
        residual: bool = True,
        shortcut: Shortcut = "B",
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        width: float = 1.0,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(self.stage_planes):
            raise ValueError(f"{type(self).__name__} needs {len(self.stage_planes)} stage depths, got {list(layers)}")
        chs = scale_channels(self.stage_planes[0], width)
        self._make_stem(in_chans, chs)
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(layers)))
        rates = drop_path_rates(drop_path_rate, sum(layers)) if drop_path_rate else []
        for i, (name, planes, blocks) in enumerate(zip(self.stage_names, self.stage_planes, layers)):
            first = sum(layers[:i])
            stage = make_stage(
                block, chs, scale_channels(planes, width), blocks, 1 if i == 0 else 2,
                residual=residual, shortcut=shortcut, stride_in_1x1=stride_in_1x1,
                drop_path=rates[first : first + blocks],
            )  # fmt: skip
            setattr(self, name, stage)
            chs = scale_channels(planes, width) * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = chs
        self.num_classes = num_classes
        self.fc = nn.Linear(chs, num_classes)  # PyTorch's default init, as torchvision
        self._init_weights(zero_init_residual)
        # Plain data that rebuilds this net: create_model(**arch_spec); create_model sets "name".
        self.arch_spec: dict = {
            "name": None, "num_classes": num_classes, "shortcut": shortcut if residual else None,
            "stride_in_1x1": stride_in_1x1, "zero_init_residual": zero_init_residual,
            "width": float(width), "in_chans": in_chans,
        }  # fmt: skip

    def _make_stem(self, in_chans: int, chs: int) -> None:
        # 7x7/2 conv then 3x3/2 max pool: 224 -> 56 pixels before conv2_x (Table 1).
        self.conv1 = nn.Conv2d(in_chans, chs, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module | None = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. 2015 (arXiv:1502.01852), as the paper (sec. 3.4)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                    m.zero_init_last()

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map [B, num_features, H, W] before pooling."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, then fc unless `pre_logits` ([B, num_features] features)."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised fc with `num_classes` outputs (fine-tuning)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        p = self.fc.weight
        self.fc = nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype)
        self.num_classes = self.arch_spec["num_classes"] = num_classes
