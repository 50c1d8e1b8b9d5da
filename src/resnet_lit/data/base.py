"""ImageDataModule: what the CIFAR and ImageNet DataModules share.

Each argument of a DataModule is declared once, in its ``__init__`` signature: LightningCLI reads it
from there, ``save_hyperparameters`` stores it in checkpoints, and the code reads it back from
``self.hparams``. This base builds the loaders from each rank's shard (``ShardSampler``), keeps one
copy of the normalisation statistics per device, and runs the batch hooks: skipped-image counting
and masking on the host before the transfer, then the padding of a short evaluation batch to
``eval_batch_size`` (``pad_eval_batches``, data/padding.py), ``transform_batch`` on whole batches on
the device after the transfer, then, for training batches only, MixUp / CutMix
(``mixing.batch_mixing``: targets become soft). The training-only recipe options (MixUp, CutMix,
repeated augmentation, the per-image policies) are one ``AugmentConfig`` (data/augment.py), which
the base reads from ``self.augment``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch

from resnet_lit.checkpointing.contents import read_training_checkpoint
from resnet_lit.lightning_private import should_update_logs

from .augment import AugmentConfig, from_flat_hparams
from .folder import default_num_workers
from .labels import SKIPPED_LABEL
from .mixing import Mixing
from .padding import pad_eval_batch
from .samplers import ShardSampler

log = logging.getLogger(__name__)

# The signals that stop a fit (runs.interrupt). SLURM sends them to every process of a job step and
# a terminal's Ctrl-C to the whole foreground process group, DataLoader workers included, while the
# training process finishes its batch and saves, which needs its workers. In a worker, torch's own
# SIGTERM handler exits (the training process then fails: "DataLoader worker exited unexpectedly"),
# SIGUSR1 ran the training process's handler inherited at fork, and without a handler it kills.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores the signals that stop a fit (``_STOP_SIGNALS``).
    A worker still ends when its loader shuts it down, and by itself once the training process is gone
    (torch checks every few seconds); only the loader's last resort for a hung worker, a SIGTERM, is lost."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class ImageDataModule(L.LightningDataModule):
    """Base of the image DataModules: subclasses define ``__init__`` (calling ``save_hyperparameters``
    with ``batch_size``, ``eval_batch_size``, ``pad_eval_batches``, ``seed``, ``num_workers``, ``pin_memory``
    and ``on_bad_image`` among their arguments, and optionally ``augment``, an ``AugmentConfig`` kept
    with ``_keep_augment``), ``statistics`` and ``transform_batch``."""

    def __init__(self) -> None:
        super().__init__()
        self._statistics_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.num_skipped = 0  # bad images this process met so far (skip mode), summed over workers
        self._skipped_logged = 0
        self.augment = AugmentConfig()  # a subclass that takes ``augment`` keeps its own (_keep_augment)
        self._mixing: Mixing | None = None
        self._mixing_built = False

    def _keep_augment(self, augment: AugmentConfig | Mapping[str, Any]) -> None:
        """``augment`` as this DataModule reads it (``self.augment``, an AugmentConfig) and as its
        hyperparameters hold it (a plain dict, so checkpoints load with ``weights_only=True``)."""
        self.augment = AugmentConfig(**augment) if isinstance(augment, Mapping) else augment
        self.hparams.augment = asdict(self.augment)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path | IO, map_location: Any = None,
                             hparams_file: str | Path | None = None, **kwargs: Any) -> ImageDataModule:
        """Lightning's ``load_from_checkpoint``, also for checkpoints written before ``AugmentConfig``.
        Those hold its options as flat hyperparameters, which Lightning would drop without a word
        (it passes only the keys ``__init__`` names): they become ``augment`` here."""
        if "augment" not in kwargs and not hasattr(checkpoint_path, "read"):
            hparams = read_training_checkpoint(checkpoint_path).get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}
            moved = from_flat_hparams(hparams)
            if moved is not None:
                kwargs["augment"] = moved
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, **kwargs)

    # ------------------------------------------------------------------ settings
    @property
    def batch_size(self) -> int:
        """Images per device per training step (ImageClassifier scales the lr by it)."""
        return self.hparams.batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    @property
    def pad_eval_batches(self) -> bool:
        """Whether a short validation / test / predict batch is padded to ``eval_batch_size`` (data/padding.py)."""
        return bool(self.hparams.get("pad_eval_batches", True))

    @property
    def num_workers(self) -> int:
        return default_num_workers() if self.hparams.num_workers is None else self.hparams.num_workers

    @property
    def pin_memory(self) -> bool:
        return torch.cuda.is_available() if self.hparams.pin_memory is None else self.hparams.pin_memory

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        if t is None:  # used without a Trainer (benchmarks, notebooks)
            return 0, 1
        return t.global_rank, t.world_size

    def _shard(self, n: int, *, train: bool, batch_size: int | None = None,
               sampler: type[ShardSampler] = ShardSampler, **kwargs: Any) -> ShardSampler:
        """This rank's part of ``range(n)``: shuffled for training (repeated ``repeated_augmentation``
        times), in order for evaluation; index batches (the last short one dropped in training) when
        ``batch_size`` is given. ``sampler`` and ``kwargs``: a ShardSampler subclass and its own arguments."""
        rank, world = self._rank_world()
        if train:
            kwargs.update(self.augment.sampler_args())
        return sampler(n, rank=rank, world_size=world, shuffle=train, seed=self.hparams.seed,
                       batch_size=batch_size, drop_last=train and batch_size is not None, **kwargs)

    def _worker_args(self, pin_memory: bool) -> dict[str, Any]:
        # Each loader has its own generator: a DataLoader draws its workers' base seed at every iter(),
        # from torch's global generator without one, and the on-device augmentation (CIFAR's crops, PCA
        # lighting, MixUp / CutMix) draws from that global generator: a resumed run, which starts its
        # loaders at other points of the run than an uninterrupted one, would then draw other noise.
        return {"num_workers": self.num_workers, "pin_memory": pin_memory, "persistent_workers": self.num_workers > 0,
                "generator": torch.Generator().manual_seed(self.hparams.seed), "worker_init_fn": ignore_stop_signals}

    # ------------------------------------------------------------------ on the device
    def statistics(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The normalisation's mean and std (None: subtract the mean only), on the CPU."""
        raise NotImplementedError(f"{type(self).__name__} must define statistics(): each data source has its own")

    def statistics_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``statistics()`` on ``device``, copied there once, not every step."""
        if device not in self._statistics_on:
            mean, std = self.statistics()
            self._statistics_on[device] = (mean.to(device), None if std is None else std.to(device))
        return self._statistics_on[device]

    @property
    def mixing(self) -> Mixing | None:
        """MixUp / CutMix for training batches (``augment.mixup_alpha``, ``augment.cutmix_alpha``), None when off."""
        if not self._mixing_built:
            self._mixing = self.augment.mixing(self.num_classes) if self.augment.mixes else None  # no class scan
            self._mixing_built = True
        return self._mixing

    def transform_batch(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """A batch as the model takes it (normalised; augmented when ``train``): each source defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define transform_batch(x, train)")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        evaluating = self.trainer is not None and not self.trainer.training
        batch = self._host_batch(batch, evaluating=evaluating)
        if evaluating and self.pad_eval_batches:  # one evaluation shape for compile and CUDA graphs
            batch = pad_eval_batch(batch, self.eval_batch_size)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self._device_batch(batch, train=self.trainer is not None and self.trainer.training)

    def _host_batch(self, batch: Any, evaluating: bool) -> Any:
        # ImageFiles batches are (x, target, bad): count skipped images while the counts are still on
        # the host (no device sync per step). In training the substitute for a bad image is learnt from
        # (the batch keeps its static shape); in validation and test its label becomes SKIPPED_LABEL,
        # which the loss and the metrics ignore, and in predict its row is dropped from the output.
        if isinstance(batch, (list, tuple)) and len(batch) == 3:
            x, target, bad = batch
            self._count_skipped(bad)
            if isinstance(target, (tuple, list)):  # predict: paths (default_collate gives a tuple)
                target = [None if evaluating and b else p for p, b in zip(target, bad.tolist())]
            elif evaluating and bool(bad.any()):
                target = target.masked_fill(bad.bool(), SKIPPED_LABEL)
            return x, target
        return batch

    def _device_batch(self, batch: Any, train: bool) -> Any:
        x, target = batch
        if isinstance(x, torch.Tensor) and x.dtype != torch.uint8:  # already processed (a user's own float loader)
            return batch
        if isinstance(x, (list, tuple)):  # multi-scale test views
            return [self.transform_batch(v, train=False) for v in x], target
        if train:  # a model that compiled train_batch_fn into its step augments the batch itself
            model = getattr(self.trainer, "lightning_module", None)
            return batch if getattr(model, "augments_training_batches", False) else self.train_batch(x, target)
        return self.transform_batch(x, train), target

    def train_batch_fn(self, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any]]:
        """``train_batch`` as a function of the batch alone, for a model that compiles it into its own
        step (ImageClassifier's ``compile_step``). What it reads (the statistics on ``device``, the
        mixing) is built now, outside the compiled code, so that none of it changes later."""
        self.statistics_on(device)
        _ = self.mixing
        return self.train_batch

    def train_batch(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 training batch on the device -> augmented and normalised, then MixUp / CutMix if on."""
        if x.dtype != torch.uint8:  # already processed (a user's own float loader)
            return x, target
        x = self.transform_batch(x, train=True)
        if self.mixing is not None:  # float targets [B, num_classes], rows summing to one
            x, target = self.mixing(x, target)
        return x, target

    # ------------------------------------------------------------------ outside a Trainer
    def batches(self, split: str = "train", device: str | torch.device = "cpu") -> Iterator[tuple[Any, Any]]:
        """``(x, y)`` batches as the model takes them, outside a Trainer (a notebook, a loop of your own).

        The loaders alone give what the workers make (uint8 images; ImageFolder batches also carry a
        bad-image flag): a Trainer finishes each batch in the batch hooks. This does the same for
        ``split`` ("train", "val", "test" or "predict"): skipped-image handling, the transfer to
        ``device``, then normalisation (and, for "train", augmentation) on the device. The short last
        evaluation batch stays short here (``pad_eval_batches`` pads only inside a Trainer)::

            dm = CIFARDataModule(root="../shared/data/cifar10-jpeg", batch_size=128)
            x, y = next(dm.batches("train"))    # float [128, 3, 32, 32], normalised and augmented
        """
        loaders = {"train": self.train_dataloader, "val": self.val_dataloader, "test": self.test_dataloader,
                   "predict": self.predict_dataloader}
        if split not in loaders:
            raise ValueError(f"split {split!r}: use one of {', '.join(loaders)}")
        self.setup({"train": "fit", "val": "fit"}.get(split, split))
        device = torch.device(device)
        for batch in loaders[split]():
            x, target = self._host_batch(batch, evaluating=split != "train")
            x = [v.to(device) for v in x] if isinstance(x, (list, tuple)) else x.to(device)
            target = target.to(device) if isinstance(target, torch.Tensor) else target
            yield self._device_batch((x, target), train=split == "train")

    # ------------------------------------------------------------------ skipped images
    def _count_skipped(self, bad: torch.Tensor) -> None:
        n = int(bad.sum())
        if n:
            self.num_skipped += n
            log.warning("skipped %d unreadable image(s) in this batch (%d so far; on_bad_image='skip')", n,
                        self.num_skipped)
        t = self.trainer
        if t is None or t.logger is None or self.hparams.on_bad_image != "skip":
            return
        if t.world_size == 1:
            total = self.num_skipped
        elif t.training and should_update_logs(t):
            # Summed over ranks on the training steps the logger writes: every rank reaches them at the
            # same batch (training shards are equally long; evaluation shards may differ by a batch, so
            # a rank's evaluation skips join the sum at the next such step).
            total = int(t.strategy.reduce(torch.tensor(self.num_skipped, device=t.strategy.root_device),
                                          reduce_op="sum"))
        else:
            return
        if total > self._skipped_logged:
            self._skipped_logged = total
            t.logger.log_metrics({"data/skipped_images": float(total)}, step=t.global_step)
