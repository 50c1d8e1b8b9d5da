"""An exponential moving average (EMA) of the weights, kept by Lightning's ``EMAWeightAveraging``.

``ImageClassifier(ema=EMAConfig(...))`` (YAML: ``model.ema: {decay: 0.9998}``) attaches the callback
to ``fit`` through ``LightningModule.configure_callbacks``: it is a setting of the model, saved in its
hyperparameters, and a plain ``Trainer`` gets it as the CLI does. After every
``update_every_n_steps``-th optimiser step from ``update_starting_at_step`` on (the warm-up: the
average starts as a copy of the weights of that step, and follows the live weights until then), each
parameter and buffer (batch-norm statistics too) moves to ``decay * ema + (1 - decay) * live``. The
decay acts per update: with updates every N steps, a half-life of H steps needs
``decay = 0.5 ** (N / H)``.

What the callback does with the two sets (lightning/pytorch/callbacks/weight_averaging.py):
validation during ``fit`` runs on the EMA weights (swapped in and out around each validation epoch),
and the weights are replaced by the EMA ones when ``fit`` ends. A checkpoint's ``state_dict`` holds
the EMA weights, so ``validate``, ``test``, ``predict``, ``export`` and ``init_weights`` use them with
no option; the live weights are under ``current_model_state`` and the average's step count under
``averaging_state``, from which a resumed ``fit`` carries on exactly.

The update is one ``torch._foreach_lerp_`` over all floating tensors (``get_ema_multi_avg_fn``) rather
than the callback's default per-tensor loop: docs/recipes.md measures its cost.

``warmup_power`` ramps the decay up as timm's ``ModelEmaV3`` does: the k-th update uses
``min(decay, 1 - (1 + k / warmup_gamma) ** -warmup_power)``, so the first updates follow the live
weights closely and the random initial weights leave the average quickly. Without it a decay of
0.999 still gives the initial weights 0.999 ** 2000 = 13.5 % of the average after 2,000 updates,
which is what a short schedule evaluates. The ramp is computed on the device from the average's
update count (no host synchronisation).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn


@dataclass(frozen=True)
class EMAConfig:
    """An EMA of the weights (``model.ema``; null = none, the paper's).

    Args:
        decay: weight of the old average at each update (torchvision's ResNet-50 recipe: 0.99998 per
            32 steps at batch 1024; timm's: 0.9998 per step).
        update_every_n_steps: update after the optimiser steps whose 0-based index is a multiple of N
            (1 = each).
        update_starting_at_step: first optimiser step (0-based) that updates the average; the
            average is a copy of the weights there (a warm-up that skips the first, noisy steps).
        warmup_power: ramp the decay up over the first updates (timm's EMA warm-up): the k-th
            update uses ``min(decay, 1 - (1 + k / warmup_gamma) ** -warmup_power)``; timm suggests
            3/4 for schedules of tens of thousands of steps, 2/3 for a million; null = no ramp.
        warmup_gamma: the ramp's time scale in updates (timm's default 1).
    """

    decay: float = 0.9998
    update_every_n_steps: int = 1
    update_starting_at_step: int = 0
    warmup_power: float | None = None
    warmup_gamma: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.decay <= 1:
            raise ValueError(f"ema.decay must be in [0, 1], got {self.decay}")
        if self.update_every_n_steps < 1:
            raise ValueError(f"ema.update_every_n_steps must be >= 1, got {self.update_every_n_steps}")
        if self.update_starting_at_step < 0:
            raise ValueError(f"ema.update_starting_at_step must be >= 0, got {self.update_starting_at_step}")
        if self.warmup_power is not None and self.warmup_power <= 0:
            raise ValueError(f"ema.warmup_power must be > 0 (timm: 0.75) or null, got {self.warmup_power}")
        if self.warmup_gamma <= 0:
            raise ValueError(f"ema.warmup_gamma must be > 0, got {self.warmup_gamma}")


def ema_at_scale(cfg: EMAConfig, step_factor: float) -> EMAConfig:
    """``cfg`` stated for steps worth ``1 / step_factor`` of this run's optimiser steps (the schedule's
    ``steps_at_batch / global batch``), with the same horizon in images: the half-life, the first
    update and the ramp's time scale keep their length in images, the cadence keeps it where it can
    (at least every step) and the decay follows the cadence. torchvision's reference scripts adjust
    their EMA decay by the global batch the same way (references/classification/train.py)."""
    if step_factor == 1 or not 0 < cfg.decay < 1:
        return cfg
    every = max(1, round(cfg.update_every_n_steps * step_factor))
    half_life = cfg.update_every_n_steps * math.log(0.5) / math.log(cfg.decay) * step_factor  # in steps
    return replace(cfg, decay=0.5 ** (every / half_life), update_every_n_steps=every,
                   update_starting_at_step=round(cfg.update_starting_at_step * step_factor),
                   warmup_gamma=cfg.warmup_gamma * cfg.update_every_n_steps * step_factor / every)


def half_life_steps(cfg: EMAConfig) -> float:
    """Optimiser steps after which the EMA gives a weight half its share (inf for decay 1)."""
    if cfg.decay >= 1:
        return math.inf
    if cfg.decay <= 0:
        return 0.0
    return cfg.update_every_n_steps * math.log(0.5) / math.log(cfg.decay)


def ramped_ema_multi_avg_fn(decay: float, power: float, gamma: float):
    """``get_ema_multi_avg_fn`` with timm's decay warm-up, for ``AveragedModel(multi_avg_fn=...)``:
    it is called with the number of updates made so far (1 on the second update: the first copies)."""

    @torch.no_grad()
    def update(averages: list[torch.Tensor], live: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        ramp = 1 - (1 + n_averaged.double() / gamma) ** -power
        d = torch.clamp(ramp, max=decay)
        if torch.is_floating_point(averages[0]) or torch.is_complex(averages[0]):
            weight = (1 - d).to(averages[0].dtype)
            torch._foreach_lerp_(averages, live, [weight] * len(averages))
        else:  # integer buffers (batch-norm step counts), as get_ema_multi_avg_fn treats them
            for a, p in zip(averages, live):
                a.copy_(a * d + p * (1 - d))

    return update


class EMAWeights(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (its ``should_update``, swaps and checkpoint layout) with the
    multi-tensor EMA update: ``EMAWeightAveraging`` passes the per-tensor ``avg_fn``, and
    ``AveragedModel`` takes one or the other."""

    def __init__(self, cfg: EMAConfig) -> None:
        average = (get_ema_multi_avg_fn(cfg.decay) if cfg.warmup_power is None
                   else ramped_ema_multi_avg_fn(cfg.decay, cfg.warmup_power, cfg.warmup_gamma))
        WeightAveraging.__init__(self, use_buffers=True, multi_avg_fn=average)
        self.update_every_n_steps = cfg.update_every_n_steps
        self.update_starting_at_step = cfg.update_starting_at_step
        self.update_starting_at_epoch = None

    # Before its first update the average is the copy ``setup`` took when fit began (before
    # ``init_weights`` were read, say): a validation or a checkpoint then would show those weights.
    # Until the first update, it follows the live weights instead.
    def _follow_until_first_update(self, pl_module: pl.LightningModule) -> None:
        average = self._average_model
        if average is None or int(average.n_averaged) > 0:  # a host sync, at validation and checkpoint only
            return
        pairs = zip(itertools.chain(average.module.parameters(), average.module.buffers()),
                    itertools.chain(pl_module.parameters(), pl_module.buffers()))
        with torch.no_grad():
            for a, p in pairs:
                a.copy_(p)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._follow_until_first_update(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._follow_until_first_update(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._follow_until_first_update(pl_module)
        super().on_train_end(trainer, pl_module)
