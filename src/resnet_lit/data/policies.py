"""Per-image augmentation policies from torchvision: AutoAugment, RandAugment, TrivialAugmentWide
and RandomErasing, on uint8 image tensors [3, H, W].

``augment_policy(...)`` returns one ``v2.Compose`` (or None when everything is off) that the
DataModules build from their ``AugmentConfig`` (data/augment.py) and run on each training image
while it is still uint8: in the ImageNet workers after the crop and flip (``PolicyAfter`` wraps the
crop transform), and for CIFAR on each image of the gathered batch on the host, before its batched
crop and flip (``CIFARDataModule``; the cost is measured in docs/recipes_data.md).
The policies are torchvision's (``transforms.v2``), with its reference recipe's bilinear
interpolation; their parameters are drawn per image.

Random erasing fills its box with the data set's mean colour (``fill``): torchvision's reference
erases after normalisation with 0, which is the mean, so this is the same image one step earlier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torchvision.transforms import v2

AutoAugmentName = Literal["none", "ra", "ta_wide", "aa"]
AUTO_AUGMENT_NAMES: tuple[str, ...] = get_args(AutoAugmentName)


def augment_policy(
    auto_augment: AutoAugmentName = "none",
    magnitude: int = 9,
    random_erasing: float = 0.0,
    fill: Sequence[int] = (0, 0, 0),
    aa_policy: Literal["imagenet", "cifar10"] = "imagenet",
) -> v2.Compose | None:
    """The per-image policy: ``auto_augment`` ("ra" RandAugment with 2 ops at ``magnitude`` of 31
    bins, "ta_wide" TrivialAugmentWide, "aa" AutoAugment's ``aa_policy``), then RandomErasing with
    probability ``random_erasing`` (area 2-33 %, filled with ``fill``, uint8 RGB). None: all off."""
    if auto_augment not in AUTO_AUGMENT_NAMES:
        raise ValueError(f"auto_augment {auto_augment!r}: use one of {', '.join(AUTO_AUGMENT_NAMES)}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing}")
    if not 0 <= magnitude <= 30:
        raise ValueError(f"auto_augment_magnitude must be in 0..30 (RandAugment's 31 bins), got {magnitude}")
    steps: list = []
    bilinear = v2.InterpolationMode.BILINEAR
    if auto_augment == "ra":
        steps.append(v2.RandAugment(magnitude=magnitude, interpolation=bilinear))
    elif auto_augment == "ta_wide":
        steps.append(v2.TrivialAugmentWide(interpolation=bilinear))
    elif auto_augment == "aa":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy(aa_policy), interpolation=bilinear))
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=[int(v) for v in fill]))
    return v2.Compose(steps) if steps else None


def mean_fill(mean: Sequence[float] | torch.Tensor) -> tuple[int, int, int]:
    """Channel means on the 0..1 scale (3 values, or a per-pixel [3, H, W] mean) -> uint8 RGB fill."""
    m = torch.as_tensor(mean, dtype=torch.float32)
    if m.dim() > 1:
        m = m.flatten(1).mean(1)
    return tuple(int(round(float(v) * 255)) for v in m)


class PolicyAfter:
    """``crop(data, name)`` then ``policy`` on the uint8 result: a picklable per-image transform for
    DataLoader workers. ``size`` reads and sets the crop's output size (progressive resizing)."""

    def __init__(self, crop, policy: v2.Compose) -> None:
        self.crop, self.policy = crop, policy

    @property
    def size(self) -> int:
        return self.crop.size

    @size.setter
    def size(self, value: int) -> None:
        self.crop.size = value

    def __call__(self, data, name: str = "<bytes>") -> torch.Tensor:
        return self.policy(self.crop(data, name))

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The crop's ``views`` of an image already decoded to a tensor (``decode: cpu | gpu``), then the policy."""
        return self.policy(self.crop.views(x))
