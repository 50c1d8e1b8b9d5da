"""AugmentConfig: the modern recipes' training augmentation, one setting for both DataModules.

``CIFARDataModule`` and ``ImageNetDataModule`` take it as one argument, ``augment``, so a recipe
writes it once under ``data.init_args.augment`` (``--data.augment.mixup_alpha 0.2`` on the command
line) and a checkpoint carries it as one plain dict. It is checked here, once, when it is built.

Everything is off by default: the paper's training. Where each option runs:
``mixup_alpha`` / ``cutmix_alpha`` on whole training batches on the device (data/mixing.py);
``auto_augment`` / ``random_erasing`` on each uint8 training image (data/policies.py: CIFAR before
its batched crop and flip, on the host or with ``policy_groups`` on the device; ImageNet after the
crop and flip, in the workers); ``repeated_augmentation`` in the sampler (data/samplers.py).

Checkpoints written before this class hold the same options as flat DataModule hyperparameters
(``mixup_alpha: 0.2`` beside ``batch_size``); ``from_flat_hparams`` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from torchvision.transforms import v2

from .mixing import Mixing, batch_mixing
from .policies import AUTO_AUGMENT_NAMES, AutoAugmentName, augment_policy
from .samplers import RepeatEpoch

__all__ = ["AugmentConfig", "from_flat_hparams"]


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation beyond the paper's crop and flip (all off by default).

    Args:
        mixup_alpha: MixUp on training batches, on the device, lambda ~ Beta(alpha, alpha) (0: off;
            torchvision's 2021 recipe: 0.2). Targets become soft [B, num_classes]; with ``cutmix_alpha``
            too, each batch takes one of the two at random (torchvision's reference).
        cutmix_alpha: CutMix on training batches, on the device (0: off; torchvision, timm: 1.0).
        auto_augment: a torchvision policy on each training image, uint8: "ra" RandAugment (2 ops),
            "ta_wide" TrivialAugmentWide (torchvision's recipe), "aa" AutoAugment (its CIFAR-10 policy
            on CIFAR, its ImageNet policy on ImageNet), "none". ImageNet runs it after the crop and
            flip, in the workers. CIFAR runs it before its batched crop and flip, per image on the
            host, at many times the cost of the batched default (measured in docs/recipes_data.md):
            fine beside a CPU step, the bottleneck beside a GPU one unless ``policy_groups`` moves
            it to the device (or ``num_workers`` share it).
        auto_augment_magnitude: RandAugment's magnitude, 0..30 (torchvision: 9; timm RSB: 6-7).
        random_erasing: probability of erasing a random box (2-33 % of the image) of each training
            image, filled with the data set's mean colour (0: off; torchvision's recipe: 0.1).
        policy_groups: CIFAR only. None: ``auto_augment`` and ``random_erasing`` draw per image, on
            the host. N: they run on the device on the uint8 batch cut into N groups, each group
            sharing one draw (op, magnitude, erased box): N calls a step instead of B, at the price
            of images within a group being augmented alike (across steps each image still sees the
            policy's distribution).
        repeated_augmentation: each training image k times an epoch, copies on neighbouring ranks
            (1: off; Hoffer et al. 2020, DeiT; torchvision's recipe: 4, timm RSB A1: 3).
        repeated_augmentation_epoch: "all_repeats": an epoch shows each image exactly k times (k times
            as many steps); "dataset_size": it keeps the data set's length (n / k images, k times
            each), as DeiT, timm and torchvision count epochs (their recipes' epoch counts assume it).
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    auto_augment: AutoAugmentName = "none"
    auto_augment_magnitude: int = 9
    random_erasing: float = 0.0
    policy_groups: int | None = None
    repeated_augmentation: int = 1
    repeated_augmentation_epoch: RepeatEpoch = "all_repeats"

    def __post_init__(self) -> None:
        for name, what in (("mixup_alpha", "MixUp"), ("cutmix_alpha", "CutMix")):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0 (0 turns {what} off), got {getattr(self, name)}")
        if self.auto_augment not in AUTO_AUGMENT_NAMES:
            raise ValueError(f"augment.auto_augment {self.auto_augment!r}: use one of {', '.join(AUTO_AUGMENT_NAMES)}")
        if not 0 <= self.auto_augment_magnitude <= 30:
            raise ValueError(f"augment.auto_augment_magnitude must be in 0..30 (RandAugment's 31 bins), "
                             f"got {self.auto_augment_magnitude}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"augment.random_erasing is a probability: give a value in [0, 1] (0: off), "
                             f"got {self.random_erasing}")
        if self.policy_groups is not None and self.policy_groups < 1:
            raise ValueError(f"augment.policy_groups must be >= 1, or null for the policy per image on the host, "
                             f"got {self.policy_groups}")
        if self.repeated_augmentation < 1:
            raise ValueError(f"augment.repeated_augmentation must be >= 1 (1: off), got {self.repeated_augmentation}")
        if self.repeated_augmentation_epoch not in ("all_repeats", "dataset_size"):
            raise ValueError(f"augment.repeated_augmentation_epoch {self.repeated_augmentation_epoch!r}: "
                             "use all_repeats or dataset_size")

    def policy(self, fill: Sequence[int], aa_policy: Literal["imagenet", "cifar10"] = "imagenet") -> v2.Compose | None:
        """The per-image policy (``auto_augment``, then ``random_erasing`` filled with ``fill``); None when off."""
        return augment_policy(self.auto_augment, self.auto_augment_magnitude, self.random_erasing, fill=fill,
                              aa_policy=aa_policy)

    def mixing(self, num_classes: int) -> Mixing | None:
        """MixUp / CutMix for training batches of ``num_classes`` classes; None when both are off."""
        return batch_mixing(num_classes, self.mixup_alpha, self.cutmix_alpha)

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (MixUp or CutMix on)."""
        return max(self.mixup_alpha, self.cutmix_alpha) > 0

    def sampler_args(self) -> dict[str, Any]:
        """The training sampler's repeated-augmentation arguments (``ShardSampler``)."""
        return {"repeats": self.repeated_augmentation, "repeat_epoch": self.repeated_augmentation_epoch}


FIELDS = tuple(f.name for f in fields(AugmentConfig))


def from_flat_hparams(hparams: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``augment`` dict of DataModule hyperparameters saved before ``AugmentConfig`` (the options
    as flat keys beside ``batch_size``); None when they hold no flat option (or ``augment`` already)."""
    flat = {name: hparams[name] for name in FIELDS if name in hparams}
    if not flat or "augment" in hparams:
        return None
    return flat
