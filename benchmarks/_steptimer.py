"""A callback that times a window of training steps inside a real ``resnet-lit fit``.

``overhead.py`` appends it with ``--trainer.callbacks+=`` (so the run is the real CLI, with its
own callbacks, logger and checkpointing), then reads ``StepTimer.results`` in the same process.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    """Time stamps at the start of batches ``start .. start + steps``: ``steps`` full iterations
    (data fetch, transfer, on-device augmentation, step, hooks, logging), each timed on its own."""

    results: list[dict[str, Any]] = []  # one entry per fit, read by overhead.py

    def __init__(self, start: int = 5, steps: int = 20) -> None:
        self.start, self.steps = start, steps
        self._stamps: list[float] = []
        self._created = time.perf_counter()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self.start <= batch_idx <= self.start + self.steps:
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self._stamps.append(time.perf_counter())
        if batch_idx == self.start + self.steps:
            StepTimer.results.append({"stamps": self._stamps, "created": self._created})
