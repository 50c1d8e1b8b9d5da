"""CIFARDataModule: CIFAR-10/100 as the paper prepared it, augmented on whole batches on the device.

The images live in memory as one uint8 tensor (150 MB for CIFAR-10). A sampler yields whole
index batches and the dataset answers each with one indexing operation, so loading a batch costs
microseconds and needs no worker processes. After Lightning moves the uint8 batch to the device,
``on_after_batch_transfer`` subtracts the per-pixel mean and, in training, pads, crops and flips
the whole batch there (``transforms.normalize_padded`` and ``crop_and_flip``).

Modern recipe options, all off by default, are one ``augment: AugmentConfig`` (data/augment.py):
``auto_augment`` / ``random_erasing`` run torchvision's policies on each uint8 image of a training
batch on the host, before the transfer, or with ``policy_groups`` on groups of images on the device
(their cost is in docs/recipes_data.md); ``mixup_alpha`` / ``cutmix_alpha`` mix whole training
batches on the device after the crop and flip (``mixing``); ``repeated_augmentation`` repeats each
image k times an epoch (``samplers``).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import AugmentConfig
from .base import ImageDataModule
from .cifar_io import class_names, ensure_downloaded, load_cifar
from .policies import mean_fill
from .samplers import ResumableLoader
from .transforms import cifar_augment, crop_and_flip, normalize, normalize_padded

log = logging.getLogger(__name__)


class TensorBatches(Dataset):
    """``dataset[list_of_indices] -> (x[idx], y[idx])``: one gather per batch (used with ``batch_size=None``);
    ``per_image``, if given, then transforms each uint8 image of the batch on its own."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, per_image=None) -> None:
        self.x, self.y = x, y
        self.per_image = per_image

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.int64, device=self.x.device)
        # index_select copies whole images; x[i] goes element by element (9x slower on a CPU)
        x = self.x.index_select(0, i)
        if self.per_image is not None:
            x = torch.stack([self.per_image(image) for image in x])
        return x, self.y.index_select(0, i)


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded order of all indices that interleaves the classes: any prefix is class-balanced
    (up to one image a class). Within a class the order is a seeded random permutation."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    lab = labels[perm]
    # rank of each image within its class, in permuted order
    rank = torch.empty_like(lab)
    for c in lab.unique():
        where = (lab == c).nonzero().squeeze(1)
        rank[where] = torch.arange(len(where))
    key = rank * (int(labels.max()) + 1) + lab  # by rank, then by class
    return perm[torch.argsort(key, stable=True)]


def pixel_mean(x: torch.Tensor, chunk: int = 5000) -> torch.Tensor:
    """Per-pixel mean [3, H, W] on the 0..1 scale of a uint8 set [N, 3, H, W], summed in chunks."""
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    for i in range(0, len(x), chunk):
        total += x[i : i + chunk].sum(0, dtype=torch.float64)
    return (total / (255.0 * len(x))).to(torch.float32)


class FlipViews(TensorBatches):
    """Test batches for flip TTA: [B, 1, 3, H, W], one view that ``transform_batch`` normalises and
    then mirrors into the second view (after the per-pixel mean, which is not mirror-symmetric, as
    training flips after it)."""

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(idx)
        return x.unsqueeze(1), y


class CIFARDataModule(ImageDataModule):
    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        pad_eval_batches: bool = True,
        val_split: Literal["test", "holdout"] = "test",
        holdout_size: int = 5000,
        subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pad: int = 4,
        dataset: Literal["cifar10", "cifar100"] = "cifar10",
        download: bool = False,
        cache_dir: str | None = None,
        on_bad_image: Literal["error", "skip"] = "error",
        pin_memory: bool | None = None,
        data_on_device: bool = False,
        augment: AugmentConfig = AugmentConfig(),
        test_mode: Literal["center", "flip"] = "center",
    ) -> None:
        """CIFAR-10 or CIFAR-100.

        Args:
            root: folder with torchvision's ``cifar-10-batches-py/`` (or ``cifar-100-python/``), or
                ``train.tar.gz`` + ``test.tar.gz`` of image folders, or ``train/<class>/`` + ``test/<class>/``.
            batch_size: images per device per step (the paper: 128 in total over two GPUs).
            eval_batch_size: images per validation and test batch (default ``batch_size``). Evaluation
                keeps no activations for a backward pass, so it fits larger batches: 1000 cuts the
                10k test set into 10 equal batches (no short last batch to compile or record again,
                and fewer launches per validation than 79 batches of 128). Results do not depend on it.
            pad_eval_batches: pad the last, short validation and test batch to ``eval_batch_size``
                with masked rows that no metric, loss or count includes (data/padding.py), so compiled
                code and CUDA graphs see one evaluation shape and never compile or record again for the
                short batch. On by default: it costs the padded rows' compute on one batch per
                evaluation; the figures are the same either way. ``False`` keeps the short batch.
            val_split: "test": train on all 50k, validate on the 10k test set (the paper's reported
                numbers); "holdout": train on 45k, validate on a stratified seeded 5k holdout
                (the paper's split for choosing the schedule).
            holdout_size: images held out with ``val_split="holdout"`` (stratified: equal per class).
            subset: if set, use only this many (class-balanced, seeded) training images, and at most
                this many evaluation images: for tests and quick runs.
            seed: seeds the holdout split, the subset and the per-epoch shuffling.
            num_workers: DataLoader workers; 0 is fastest here (a batch is one in-memory gather).
            pad: zero padding in pixels before the random 32x32 crop (the paper: 4).
            dataset: which CIFAR to download with ``download=True``; the data on disk decides otherwise.
            download: fetch torchvision's pickled CIFAR into ``root`` if no data is there (needs internet).
            cache_dir: where decoded images are cached (default ``$RESNET_LIT_CACHE`` or ``~/.cache/resnet_lit``).
            on_bad_image: "error" stops on the first unreadable image, naming it; "skip" leaves it
                out and logs the count.
            pin_memory: pinned host memory for faster copies (default: when CUDA is available).
            data_on_device: keep the whole uint8 data set on the accelerator (150 MB for CIFAR-10,
                a copy per rank) and gather batches there: no host-to-device copy per step
                (airbench's trick). Needs ``num_workers=0``.
            augment: the modern recipes' training augmentation (``AugmentConfig``, data/augment.py: MixUp,
                CutMix, AutoAugment / RandAugment / TrivialAugment, random erasing, ``policy_groups``,
                repeated augmentation), all off by default: ``--data.augment.mixup_alpha 0.2``. "aa"
                is AutoAugment's CIFAR-10 policy here; the policy runs on each uint8 image before the
                batch's crop and flip.
            test_mode: "center" (the 32x32 image) or "flip" (the image and its mirror image,
                [B, 2, 3, 32, 32]: the model averages their probabilities). Validation is always "center".
        """
        super().__init__()
        self.save_hyperparameters()
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 (or null for batch_size), got {eval_batch_size}")
        if data_on_device and num_workers > 0:
            raise ValueError("data_on_device=True gathers batches on the accelerator: it needs num_workers=0")
        self._keep_augment(augment)
        self._device_policy = None  # the policy on groups of the batch, on the device (augment.policy_groups)
        self._data: dict | None = None
        self._classes: list[str] | None = None
        self.mean: torch.Tensor | None = None  # per-pixel mean [3, 32, 32], 0..1 scale
        self._padded: torch.Tensor | None = None  # the last training batch, normalised and zero-padded
        self.train_set = self.val_set = self.test_set = None

    # ------------------------------------------------------------------ data
    def _load(self) -> dict:
        if self._data is None:
            hp = self.hparams
            if hp.download:
                ensure_downloaded(hp.root, hp.dataset)  # once per node: the other processes wait, then read
            self._data = load_cifar(hp.root, cache_dir=hp.cache_dir, on_bad_image=hp.on_bad_image)
            self.num_skipped = int(self._data.get("skipped", 0))
            if self.num_skipped:
                log.warning("CIFAR: skipped %d unreadable images in %s (on_bad_image='skip')", self.num_skipped,
                            hp.root)
        return self._data

    @property
    def classes(self) -> list[str]:
        """Class names in label order. The CLI links them to the model in every process, before
        prepare_data: torchvision's pickles (what ``download`` fetches, once per node) give them
        without loading the data; other forms decode (once, cached), checking every image."""
        if self._data is not None:
            return list(self._data["classes"])
        if self._classes is None:
            if self.hparams.download:
                ensure_downloaded(self.hparams.root, self.hparams.dataset)
            names = class_names(self.hparams.root)
            self._classes = names if names is not None else list(self._load()["classes"])
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_data(self) -> None:
        self._load()  # download and decode once, on one process per node; the others read the cache

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        d = self._load()
        train_x, train_y, test_x, test_y = d["train_x"], d["train_y"], d["test_x"], d["test_y"]
        if hp.val_split == "holdout":
            per_class = hp.holdout_size // self.num_classes
            order = stratified_order(train_y, hp.seed)
            val_idx = order[: per_class * self.num_classes]
            train_idx = order[per_class * self.num_classes :]
            val_x, val_y = train_x[val_idx], train_y[val_idx]
            train_x, train_y = train_x[train_idx], train_y[train_idx]
        else:
            val_x, val_y = test_x, test_y
        if hp.subset is not None:
            keep = stratified_order(train_y, hp.seed)[: hp.subset]
            train_x, train_y = train_x[keep], train_y[keep]
            val_keep = stratified_order(val_y, hp.seed)[: hp.subset]
            test_keep = stratified_order(test_y, hp.seed)[: hp.subset]
            val_x, val_y, test_x, test_y = val_x[val_keep], val_y[val_keep], test_x[test_keep], test_y[test_keep]
        self.mean = pixel_mean(train_x)
        policy = self.augment.policy(fill=mean_fill(self.mean), aa_policy="cifar10")
        if self.augment.policy_groups is not None:
            self._device_policy, policy = policy, None
        self.train_set = TensorBatches(train_x, train_y, per_image=policy)
        self.val_set = TensorBatches(val_x, val_y)
        self.test_set = (FlipViews if hp.test_mode == "flip" else TensorBatches)(test_x, test_y)

    # ------------------------------------------------------------------ loaders
    def _device(self) -> torch.device | None:
        t = self.trainer
        if not self.hparams.data_on_device or t is None:
            return None
        device = t.strategy.root_device
        return device if device.type != "cpu" else None

    def _loader(self, ds: TensorBatches, train: bool) -> DataLoader:
        device = self._device()
        if device is not None and ds.x.device != device:
            ds.x, ds.y = ds.x.to(device), ds.y.to(device)  # once: later loaders find it there
        sampler = self._shard(len(ds), train=train, batch_size=self.batch_size if train else self.eval_batch_size)
        # Training: a loader that checkpoints its position in the epoch (exact mid-epoch resume).
        loader = ResumableLoader if train else DataLoader
        return loader(ds, sampler=sampler, batch_size=None, **self._worker_args(self.pin_memory and device is None))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    # ------------------------------------------------------------------ on the device
    def statistics(self) -> tuple[torch.Tensor, None]:
        return self.mean, None

    def transform_batch(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 [B, 3, 32, 32] on any device -> float32, mean-subtracted; augmented when ``train``
        (a flip-TTA test batch [B, 1, 3, 32, 32] -> its two views [B, 2, 3, 32, 32])."""
        mean, _ = self.statistics_on(x.device)
        if x.ndim == 5:  # flip TTA (FlipViews): the image and its mirror image, [B, 2, 3, 32, 32]
            x = normalize(x[:, 0], mean)
            return torch.stack((x, x.flip(-1)), 1)
        if not train:
            return normalize(x, mean)
        if self._device_policy is not None:  # policy_groups: one draw per group of images, on the device
            x = torch.cat([self._device_policy(group) for group in x.chunk(self.augment.policy_groups)])
        if torch.compiler.is_compiling():  # inside a compiled step: no buffer kept between calls
            return cifar_augment(normalize(x, mean), self.hparams.pad)
        # The same values as cifar_augment(normalize(x, mean)), with the padded batch's buffer
        # kept from one step to the next (its zero border is never written).
        self._padded = normalize_padded(x, mean, self.hparams.pad, out=self._padded)
        return crop_and_flip(self._padded, self.hparams.pad)
