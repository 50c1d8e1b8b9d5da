"""ImageNetDataModule: any ImageFolder tree, with the paper's (or the modern) augmentation and test modes.

Workers decode and crop each image to uint8 (``transforms.PaperTrainTransform`` etc.); after the
batch reaches the device, ``on_after_batch_transfer`` adds the PCA colour noise (training) and
normalises, on whole batches. Test batches take the forms ``ImageClassifier.test_step`` averages:
``center`` [B, 3, 224, 224], ``ten_crop`` [B, 10, 3, 224, 224], ``multi_scale`` a list of
[B, 3, S, S] for S in {224, 256, 384, 480, 640}.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from .folder import (
    ImageFiles, check_same_classes, default_num_workers, list_predict_files, require_path, resolve_split,
    scan_files, scan_image_folder,
)
from .sharding import ShardSampler
from .transforms import (
    IMAGENET_MEAN, IMAGENET_STD, CenterCrop, ModernTrainTransform, MultiScale, PaperTrainTransform, TenCrop,
    pca_lighting,
)
from .decode import BadImageError

log = logging.getLogger(__name__)


class ImageNetDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: str,
        batch_size: int = 256,
        augmentation: Literal["paper", "modern"] = "paper",
        lighting: float = 0.1,
        normalization: Literal["mean_std", "mean"] = "mean_std",
        test_mode: Literal["center", "ten_crop", "multi_scale"] = "center",
        test_batch_size: int | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        predict_path: str | list[str] | None = None,
        num_workers: int | None = None,
        seed: int = 0,
        on_bad_image: Literal["error", "skip"] = "error",
        scan: bool = False,
        cache_dir: str | None = None,
        pin_memory: bool | None = None,
        classes: list[str] | None = None,
    ) -> None:
        """ImageNet, or any folder of images sorted into one sub-folder per class.

        Args:
            root: folder holding ``train/<class>/*`` and ``val/<class>/*`` (or ``train.tar.gz`` /
                ``val.tar.gz`` of such trees, extracted once into the cache directory).
            batch_size: images per device per step (the paper: 256 in total).
            augmentation: "paper": shorter side resized to a random S in [256, 480], random 224
                crop, flip, PCA colour noise; "modern": RandomResizedCrop 224 (8-100 % area) and flip.
            lighting: std of AlexNet's PCA colour noise in training (the paper: 0.1; 0 turns it off).
            normalization: "mean_std": subtract ImageNet's channel mean and divide by its std (what
                torchvision's weights expect); "mean": subtract the mean only (the paper).
            test_mode: "center" (shorter side 256, centre 224), "ten_crop" (4 corners + centre and
                their mirror images, [B, 10, 3, 224, 224]) or "multi_scale" (square views with
                shorter side 224, 256, 384, 480, 640: a list of five batches). Validation is always "center".
            test_batch_size: images per test batch (default ``batch_size``; lower it for ten_crop /
                multi_scale, which hold 10x / about 15x the pixels).
            train_dir, val_dir: split folder (or archive) names under ``root``.
            test_dir: split used by ``test`` (default: ``val_dir``).
            predict_path: image file, folder of images or list of them for ``predict``; batches are
                ``(x, paths)``.
            num_workers: decoding processes per device (default min(8, CPUs)).
            seed: seeds the per-epoch shuffling (augmentation randomness follows Lightning's seed).
            on_bad_image: "error": an unreadable image stops the run, naming the file; "skip": it is
                replaced by the next readable one and counted (logged as ``data/skipped_images``).
            scan: check every file once before training (decoding at 1/8 size) so a bad file is
                reported before the first step, not hours in; with "skip" the bad files are dropped.
            cache_dir: where archives are extracted (default ``$RESNET_LIT_CACHE`` or ``~/.cache/resnet_lit``).
            pin_memory: pinned host memory (default: when CUDA is available).
            classes: the class names in label order, instead of reading them from the split folders
                (which must then name the same classes). ``resnet-lit predict`` fills it from the
                checkpoint, so predicting needs no training data on the machine.
        """
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        self.batch_size = batch_size
        self.augmentation = augmentation
        self.lighting = lighting
        self.normalization = normalization
        self.test_mode = test_mode
        self.test_batch_size = test_batch_size or batch_size
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir or val_dir
        self.predict_path = predict_path
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.seed = seed
        self.on_bad_image = on_bad_image
        self.scan = scan
        self.cache_dir = cache_dir
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1) if normalization == "mean_std" else None
        self._classes: list[str] | None = list(classes) if classes is not None else None
        self._classes_given = classes is not None
        self._splits: dict[str, list[tuple[str, int]]] = {}
        self._scan_done: set[str] = set()
        self._stats_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.num_skipped = 0  # bad images met so far (skip mode), summed over workers

    # ------------------------------------------------------------------ files
    def _split_dir(self, split: str) -> Path | None:
        root = require_path(Path(self.root).expanduser(), "ImageNet root", "Point root at the folder holding train/ and val/.")
        return resolve_split(root, split, self.cache_dir)

    def _samples(self, split: str) -> list[tuple[str, int]]:
        if split not in self._splits:
            d = self._split_dir(split)
            if d is None:
                raise FileNotFoundError(
                    f"no '{split}' split under {self.root}: expected {self.root}/{split}/<class>/<images> "
                    f"or {self.root}/{split}.tar.gz"
                )
            classes, samples = scan_image_folder(d, on_bad_image=self.on_bad_image)
            where = "the given classes" if self._classes_given else f"{self.root}/{self._first_split()}"
            check_same_classes(self.classes, classes, where, f"{self.root}/{split}")
            self._splits[split] = samples
        return self._splits[split]

    def _first_split(self) -> str:
        for split in (self.train_dir, self.val_dir, self.test_dir):
            if self._split_dir(split) is not None:
                return split
        raise FileNotFoundError(
            f"no image folders under {self.root}: expected {self.root}/{self.train_dir}/<class>/<images> and "
            f"{self.root}/{self.val_dir}/<class>/<images> (or {self.train_dir}.tar.gz / {self.val_dir}.tar.gz). "
            "ILSVRC-2012's flat validation folder is sorted into class folders by `resnet-lit imagenet-val`."
        )

    @property
    def classes(self) -> list[str]:
        """Class names: the training split's folder names, sorted (the validation split's if there is no training split)."""
        if self._classes is None:
            self._classes = scan_image_folder(self._split_dir(self._first_split()), on_bad_image=self.on_bad_image)[0]
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _scanned(self, split: str) -> list[tuple[str, int]]:
        samples = self._samples(split)
        if not self.scan or split in self._scan_done:
            return samples
        bad = scan_files([p for p, _ in samples], self.num_workers)
        if bad and self.on_bad_image != "skip":
            raise BadImageError(
                f"{len(bad)} unreadable image(s) in {self.root}/{split}; the first: {bad[0][1]}"
            )
        if bad:
            log.warning("scan: dropping %d unreadable image(s) from %s/%s (on_bad_image='skip')", len(bad), self.root, split)
            self.num_skipped += len(bad)
            drop = {i for i, _ in bad}
            samples = [s for i, s in enumerate(samples) if i not in drop]
        self._splits[split] = samples
        self._scan_done.add(split)  # setup() runs again for test/predict: scan each split once
        return samples

    def setup(self, stage: str | None = None) -> None:
        train_tf = PaperTrainTransform() if self.augmentation == "paper" else ModernTrainTransform()
        test_tf = {"center": CenterCrop(), "ten_crop": TenCrop(), "multi_scale": MultiScale()}[self.test_mode]
        if stage in ("fit", None):
            self.train_set = ImageFiles(self._scanned(self.train_dir), train_tf, self.on_bad_image)
        if stage in ("fit", "validate", None):
            self.val_set = ImageFiles(self._scanned(self.val_dir), CenterCrop(), self.on_bad_image)
        if stage in ("test", None):
            self.test_set = ImageFiles(self._scanned(self.test_dir), test_tf, self.on_bad_image)
        if stage in ("predict", None) and self.predict_path is not None:
            self.predict_set = ImageFiles(list_predict_files(self.predict_path), CenterCrop(), self.on_bad_image)

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: ImageFiles, batch_size: int, train: bool) -> DataLoader:
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        sampler = ShardSampler(len(ds), rank=rank, world_size=world, shuffle=train, seed=self.seed)
        return DataLoader(
            ds, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.test_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_path is None:
            raise ValueError("predict needs predict_path: an image file, a folder of images or a list of them")
        # A plain sequential loader: Lightning shards it across ranks itself when predicting.
        return DataLoader(self.predict_set, batch_size=self.test_batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory)

    # ------------------------------------------------------------------ on the device
    def transform_batch(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 [..., 3, H, W] on any device -> float32: PCA colour noise (``train``), then normalisation."""
        if x.device not in self._stats_on:  # copy the statistics to each device once, not every step
            self._stats_on[x.device] = (self.mean.to(x.device), None if self.std is None else self.std.to(x.device))
        mean, std = self._stats_on[x.device]
        out = x.to(torch.float32).div_(255)
        if train and self.lighting > 0:
            out = pca_lighting(out, std=self.lighting)
        out = out.sub_(mean)
        return out.div_(std) if std is not None else out

    def _count_skipped(self, bad: torch.Tensor) -> None:
        n = int(bad.sum())
        if n == 0:
            return
        self.num_skipped += n
        log.warning("skipped %d unreadable image(s) in this batch (%d so far; on_bad_image='skip')", n, self.num_skipped)
        t = self.trainer
        if t is not None and t.logger is not None:
            t.logger.log_metrics({"data/skipped_images": float(self.num_skipped)}, step=t.global_step)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Count skipped images while the counts are still on the host (no device sync per step).
        if isinstance(batch, (list, tuple)) and len(batch) == 3:
            x, target, bad = batch
            self._count_skipped(bad)
            if isinstance(target, tuple):  # predict: default_collate gives the paths as a tuple
                target = list(target)
            return x, target
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, target = batch
        t = self.trainer
        train = t is not None and t.training
        if isinstance(x, (list, tuple)):
            x = [self.transform_batch(v, train=False) for v in x]
        else:
            x = self.transform_batch(x, train)
        return x, target
