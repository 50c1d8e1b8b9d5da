"""Callbacks the scale-out tests add to real `resnet-lit fit` runs (via --trainer.callbacks+=...).

They live in tests/ (put on PYTHONPATH by the tests) because they only observe or interrupt a run.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class RecordRanks(Callback):
    """Each process writes ``rank<global>.txt`` = "RANK=.. NODE_RANK=.. WORLD_SIZE=.. SLURM_NODEID=.." into
    ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        line = (f"RANK={trainer.global_rank} NODE_RANK={trainer.node_rank} WORLD_SIZE={trainer.world_size} "
                f"SLURM_NODEID={os.environ.get('SLURM_NODEID', '-')} "
                f"RESTART={os.environ.get('SLURM_RESTART_COUNT', '0')}")
        Path(self.folder, f"rank{trainer.global_rank}.txt").write_text(line + "\n")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Before the module's own hook (non-monitoring callbacks run first): this rank's share of
        # the epoch's training accuracy counts, "epoch hits1 hits5 seen", into counts<global>.txt.
        counts = pl_module.train_accuracy.state_dict()
        with open(Path(self.folder, f"counts{trainer.global_rank}.txt"), "a") as f:
            f.write(f"{trainer.current_epoch} {counts['hits1']} {counts['hits5']} {counts['seen']}\n")


class Progress(Callback):
    """Rank 0 writes the global step to ``path`` after every batch, sleeping ``sleep_s`` so a test
    has time to act mid-training."""

    def __init__(self, path: str, sleep_s: float = 0.0) -> None:
        self.path, self.sleep_s = path, sleep_s

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        if trainer.is_global_zero:
            tmp = self.path + ".tmp"
            Path(tmp).write_text(str(trainer.global_step))
            os.replace(tmp, self.path)
        time.sleep(self.sleep_s)


class KillAtStep(Callback):
    """Send ``signal`` (SIGKILL by default) to this process at the start of the batch that would make
    global step ``step + 1``, on every rank or only on ``rank``. SIGKILL: no handler, no cleanup, as the
    OOM killer or a lost node would; SIGSTOP: a process that hangs (stuck I/O, a deadlock) and still
    holds its connections."""

    def __init__(self, step: int, rank: int | None = None, signal: str = "SIGKILL") -> None:
        self.step, self.rank, self.signal = step, rank, signal

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), getattr(signal, self.signal))


class KillWorkerAtStep(Callback):
    """SIGKILL the process of global rank ``rank`` at the start of the batch that would make global step
    ``step + 1``, on the first attempt of a torchrun job only (``TORCHELASTIC_RESTART_COUNT`` 0): the
    restarted workers then run through."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.global_rank == self.rank and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordDraws(Callback):
    """Each rank appends one line a training batch, as the model gets it (augmented, mixed), to
    ``draws<global>.txt`` in ``folder``: "step batch crops mix rng".

    ``batch``: a digest of the images and targets. ``crops``: each image's zero border (rows at the
    top, bottom, columns at the left, right): where CIFAR's padded crop fell, since a mean-subtracted
    pixel is exactly zero only in the padding (MixUp keeps the border two images share). ``mix``:
    the larger MixUp weight, max(lambda, 1 - lambda), read from the soft targets ("-" without MixUp).
    ``rng``: a digest of the torch, Python and numpy generators after the batch was made. ``crops``
    and ``mix`` depend on the random draws alone, not on which images the rank got."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        import hashlib
        import random

        import numpy as np
        import torch

        x, y = batch
        x, y = x.detach().cpu().contiguous(), y.detach().cpu().contiguous()
        zero = (x == 0).all(dim=1)  # [B, H, W]
        rows, cols = zero.all(dim=2).int(), zero.all(dim=1).int()  # [B, H], [B, W]

        def leading(flags: torch.Tensor) -> torch.Tensor:  # how many True before the first False
            return flags.cumprod(1).sum(1)

        borders = torch.stack([leading(rows), leading(rows.flip(1)), leading(cols), leading(cols.flip(1))], 1)
        crops = ",".join(".".join(map(str, b)) for b in borders.tolist())
        mixed = [v for v in y.flatten().tolist() if 0 < v < 1] if y.is_floating_point() else []
        mix = f"{max(mixed):.6f}" if mixed else "-"
        batch_digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
        rng = hashlib.sha256(torch.get_rng_state().numpy().tobytes() + repr(random.getstate()).encode()
                             + np.random.get_state()[1].tobytes()).hexdigest()[:16]
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        with open(Path(self.folder, f"draws{trainer.global_rank}.txt"), "a") as f:
            f.write(f"{trainer.global_step} {batch_digest} {crops} {mix} {rng}\n")


class RecordWeights(Callback):
    """Each rank saves its backbone's state dict as training starts (``start<global>.pt`` in ``folder``)
    and as it ends (``end<global>.pt``), and after every batch appends to ``bn<global>.txt`` one JSON
    line: each batch norm's name -> [class name, training]."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def _save(self, trainer: Trainer, pl_module: LightningModule, name: str) -> None:
        import torch

        Path(self.folder).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, Path(self.folder, f"{name}{trainer.global_rank}.pt"))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module, "start")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module, "end")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        import json

        from torch import nn

        modes = {name: [type(m).__name__, m.training] for name, m in pl_module.model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        with open(Path(self.folder, f"bn{trainer.global_rank}.txt"), "a") as f:
            f.write(json.dumps(modes) + "\n")


COLLECTIVES = ("broadcast", "all_reduce", "all_gather", "all_gather_object", "broadcast_object_list", "barrier",
               "reduce", "gather", "scatter", "all_gather_into_tensor", "reduce_scatter_tensor", "gather_object")


class CountCollectives(Callback):
    """Counts the ``torch.distributed`` collectives of each training step (DDP's gradient all-reduce
    runs in its C++ reducer and is not among them) and writes ``collectives<rank>.json`` into ``folder``:
    {k: names of the calls made while ``global_step`` was k}, i.e. from the optimiser step of batch k
    (its end hooks, logging, checkpointing) to that of batch k + 1 (whatever runs before it)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.per_step: dict[int, list[str]] = {}
        self.trainer: Trainer | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import torch.distributed as dist

        self.trainer = trainer
        for name in COLLECTIVES:
            original = getattr(dist, name, None)
            if original is not None:
                setattr(dist, name, self._counting(name, original))

    def _counting(self, name, original):
        def call(*args, **kwargs):
            if self.trainer is not None:
                self.per_step.setdefault(self.trainer.global_step, []).append(name)
            return original(*args, **kwargs)
        return call

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self.per_step.setdefault(trainer.global_step, [])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import json

        Path(self.folder).mkdir(parents=True, exist_ok=True)
        self.trainer = None
        Path(self.folder, f"collectives{trainer.global_rank}.json").write_text(json.dumps(self.per_step))
