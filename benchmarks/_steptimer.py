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


class RunClock(Callback):
    """Where the wall time of a whole ``resnet-lit fit`` goes: start-up (until the first batch),
    the first ``warm`` steps (compile, cudnn autotuning), steady steps, and what happens between
    epochs (validation, checkpoints). Written as JSON to ``path`` when training ends, so gpu.sh can
    project the paper's 64k-iteration schedule from a short run."""

    def __init__(self, path: str, warm: int = 50) -> None:
        self.path, self.warm = path, warm
        self.created = time.perf_counter()
        self.stamps: list[float] = []  # start of every training batch
        self.epoch_last: list[int] = []  # index into stamps of each epoch's last batch
        self.val_s: list[float] = []
        self._val_t0 = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.epoch_last.append(len(self.stamps) - 1)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.val_s.append(time.perf_counter() - self._val_t0)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        import json
        import statistics

        s = self.stamps
        steps = [b - a for a, b in zip(s, s[1:])]
        boundary = {i + 1 for i in self.epoch_last}  # gaps that straddle an epoch end
        steady = [d for i, d in enumerate(steps, 1) if i > self.warm and i not in boundary] or steps
        # The mean, not the median: on a GPU the host runs ahead and waits at the few syncs
        # (logging every n steps), so single host-side steps understate the device's time.
        step_s = statistics.fmean(steady) if steady else float("nan")
        gaps = [s[i] - s[i - 1] - step_s for i in boundary if 0 < i < len(s)]
        out = {
            "steps": len(s),
            "startup_s": (s[0] - self.created) if s else None,  # CLI, data, model, until batch 0
            "warm_steps_s": (s[min(self.warm, len(s) - 1)] - s[0]) if s else None,  # compile happens here
            "mean_step_s": step_s,
            "median_step_s": statistics.median(steady) if steady else None,
            "iterations_per_s": 1 / step_s if steps else None,
            "epochs_ended": len(self.epoch_last),
            "epoch_end_s": statistics.median(gaps) if gaps else None,  # validation + checkpoints
            "validation_s": statistics.median(self.val_s) if self.val_s else None,
            "train_wall_s": time.perf_counter() - self.created,
        }
        with open(self.path, "w") as f:
            json.dump(out, f, indent=2)


class FirstStep(Callback):
    """Wall-clock times (``time.time()``, comparable across processes) of the first training batch's
    start and of its optimiser step's end, written as JSON to ``path``: ``startup.py`` subtracts the
    moment it started the process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._start: float | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._start is None:
            self._start = time.time()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._start is not None and trainer.global_step == 1:
            import json

            with open(self.path, "w") as f:
                json.dump({"first_batch_start": self._start, "first_step_end": time.time()}, f)
