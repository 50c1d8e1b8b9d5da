"""MixUp and CutMix on whole training batches, on the device, with torchvision's transforms.

``batch_mixing(num_classes, mixup_alpha, cutmix_alpha)`` returns a callable ``(x, y) -> (x, y_soft)``
or None when both are off. It is torchvision's reference recipe (references/classification/train.py):
``v2.RandomChoice([v2.MixUp(alpha=mixup_alpha), v2.CutMix(alpha=cutmix_alpha)])``, each batch
taking one of the two with equal probability (or the only one enabled). Both pair every image
with its neighbour in the batch (the batch rolled by one) and draw one mixing weight
lambda ~ Beta(alpha, alpha) per batch, so the work is one elementwise blend (MixUp) or one box
copy (CutMix) of the batch: nothing per image, nothing on the host.

The targets become float [B, num_classes] rows that sum to one (lambda on the image's own class,
1 - lambda on its partner's; CutMix's lambda is the pasted box's area fraction). The loss and the
training accuracy must take such soft targets: ``ImageClassifier.training_step`` does.

The DataModules apply it in ``on_after_batch_transfer``, after normalisation and the paper's
augmentation, to training batches only: validation, test and predict batches never pass here.
Lambda and the boxes come from torch's global generator on the host (``torch.distributions.Beta``,
``torch.randint``), the generator Lightning seeds with ``seed_everything``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

Mixing = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_alphas(mixup_alpha: float, cutmix_alpha: float) -> None:
    """One clear error for a negative alpha given to ``batch_mixing`` directly (a DataModule's
    ``AugmentConfig`` has refused it when it was built)."""
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise ValueError(f"{name} must be >= 0 (0 turns it off), got {alpha}")


def batch_mixing(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> Mixing | None:
    """MixUp (``mixup_alpha`` > 0) and/or CutMix (``cutmix_alpha`` > 0), one of them per batch;
    None when both alphas are 0. ``alpha`` is the Beta distribution's parameter (torchvision's
    2021 ResNet-50 recipe: 0.2 and 1.0)."""
    check_alphas(mixup_alpha, cutmix_alpha)
    choices = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
