"""ImageNetDataModule: any ImageFolder tree, with the paper's (or the modern) augmentation and test modes.

Workers decode and crop each image to uint8 (``transforms.PaperTrainTransform`` etc.); after the
batch reaches the device, ``on_after_batch_transfer`` adds the PCA colour noise (training) and
normalises, on whole batches. Test batches take the forms ``ImageClassifier.test_step`` averages:
``center`` [B, 3, 224, 224], ``flip`` [B, 2, 3, 224, 224], ``ten_crop`` [B, 10, 3, 224, 224],
``multi_scale`` a list of [B, 3, S, S] for S in {224, 256, 384, 480, 640}.

Modern recipe options, all off by default: ``train_size`` / ``test_size`` / ``test_resize`` set the
training and test resolutions apart (FixRes), ``progressive_resize`` changes the training size over
epochs (``resolution``), and one ``augment: AugmentConfig`` (data/augment.py): ``auto_augment`` /
``random_erasing`` add torchvision's per-image policies in the workers (``policies``),
``mixup_alpha`` / ``cutmix_alpha`` mix training batches on the device (``mixing``) and
``repeated_augmentation`` repeats images within an epoch (``samplers``).

``decode: cpu | gpu`` moves the decoding out of the workers: they read the JPEG bytes only, and
``_device_batch`` decodes each batch (nvJPEG on the GPU, or libjpeg-turbo on the CPU) and takes the
same views there (``jpeg_batch``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import AugmentConfig
from .base import ImageDataModule, ignore_stop_signals
from .decode import BadImageError
from .folder import (
    ImageFiles,
    check_same_classes,
    list_predict_files,
    listed_image_folder,
    require_path,
    resolve_split,
    scan_files,
)
from .jpeg_batch import DECODE_CHOICES, EncodedJpeg, JpegBatch, collate_encoded, decode_batch
from .padding import pad_eval_batch
from .policies import PolicyAfter, mean_fill
from .resolution import AtSize, ProgressiveResize, SizedShardSampler
from .samplers import ResumableLoader, SeededShardSampler
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    CenterFlip,
    ModernTrainTransform,
    MultiScale,
    PaperTrainTransform,
    TenCrop,
    pca_lighting,
)

log = logging.getLogger(__name__)


class ImageNetDataModule(ImageDataModule):
    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 256,
        augmentation: Literal["paper", "modern"] = "paper",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        lighting: float = 0.1,
        normalization: Literal["mean_std", "mean"] = "mean_std",
        test_mode: Literal["center", "flip", "ten_crop", "multi_scale"] = "center",
        eval_batch_size: int | None = None,
        pad_eval_batches: bool = True,
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
        train_size: int = 224,
        test_size: int = 224,
        test_resize: int | None = None,
        progressive_resize: ProgressiveResize | None = None,
        augment: AugmentConfig = AugmentConfig(),
        decode: Literal["pil", "cpu", "gpu"] = "pil",
        shards: str | None = None,
    ) -> None:
        """ImageNet, or any folder of images sorted into one sub-folder per class.

        Args:
            root: folder holding ``train/<class>/*`` and ``val/<class>/*`` (or ``train.tar.gz`` /
                ``val.tar.gz`` of such trees, extracted once into the cache directory).
            batch_size: images per device per step (the paper: 256 in total).
            augmentation: "paper": shorter side resized to a random S in [256, 480], random 224
                crop, flip, PCA colour noise; "modern": RandomResizedCrop 224 (8-100 % area) and flip.
            crop_scale: the "modern" crop's share of the image area, (min, max): torchvision and timm
                (0.08, 1.0); fast.ai's Imagenette/Imagewoof recipes (0.35, 1.0), milder for short runs.
            lighting: std of AlexNet's PCA colour noise in training (the paper: 0.1; 0 turns it off).
            normalization: "mean_std": subtract ImageNet's channel mean and divide by its std (what
                torchvision's weights expect); "mean": subtract the mean only (the paper).
            test_mode: "center" (shorter side 256, centre 224), "flip" (the centre view and its mirror
                image, [B, 2, 3, 224, 224], probabilities averaged), "ten_crop" (4 corners + centre and
                their mirror images, [B, 10, 3, 224, 224]) or "multi_scale" (square views with
                shorter side 224, 256, 384, 480, 640: a list of five batches). Validation is always "center".
            eval_batch_size: images per validation, test and predict batch (default ``batch_size``;
                lower it for ten_crop / multi_scale, which hold 10x / about 15x the pixels).
            pad_eval_batches: pad the last, short validation, test and predict batch to ``eval_batch_size``
                with masked rows that no metric, loss or count includes (data/padding.py), so compiled
                code and CUDA graphs see one evaluation shape and never compile or record again for the
                short batch. On by default: it costs the padded rows' compute on one batch per
                evaluation; the figures are the same either way. ``False`` keeps the short batch.
            train_dir, val_dir: split folder (or archive) names under ``root``.
            test_dir: split used by ``test`` (default: ``val_dir``).
            predict_path: image file, folder of images or list of them for ``predict``; batches are
                ``(x, paths)``.
            num_workers: decoding processes per device (default min(8, CPUs)).
            seed: seeds the per-epoch shuffling (augmentation randomness follows Lightning's seed).
            on_bad_image: "error": an unreadable image stops the run, naming the file; "skip": it is
                counted (logged as ``data/skipped_images``) and, in training, replaced by the next
                readable one; validation and test leave it out (``val/images`` counts the rest).
            scan: check every file once before training (decoding at 1/8 size) so a bad file is
                reported before the first step, not hours in; with "skip" the bad files are dropped.
            cache_dir: where archives are extracted (default ``$RESNET_LIT_CACHE`` or ``~/.cache/resnet_lit``).
            pin_memory: pinned host memory (default: when CUDA is available).
            classes: the class names in label order, instead of reading them from the split folders
                (which must then name the same classes). ``resnet-lit predict`` fills it from the
                checkpoint, so predicting needs no training data on the machine.
            train_size: side of the training crops in pixels (the paper: 224; torchvision's 2021
                ResNet-50 recipe: 176, timm RSB A3: 160). With "paper" the crop covers what the 224 crop
                covers, resampled to this size.
            test_size: side of the validation, test ("center", "ten_crop") and predict crops (the paper: 224).
                Training low and testing higher is FixRes (Touvron et al. 2019): 176 / 224 in
                torchvision's recipe.
            test_resize: shorter side the image is resized to before the centre ``test_size`` crop
                (default ``round(test_size * 256 / 224)``: 256 for 224; torchvision's recipe: 232,
                timm's crop_pct 0.95: 236). The crop ratio is ``test_size / test_resize``.
            progressive_resize: training size by epoch, FFCV-style: ``{start_size, end_size,
                start_epoch, end_epoch, step}`` (``resolution.ProgressiveResize``), replacing
                ``train_size``. Each new size is a new input shape: a compiled model compiles again
                (at most once per size; ``ProgressiveResize.sizes`` lists them).
            augment: the modern recipes' training augmentation (``AugmentConfig``, data/augment.py: MixUp,
                CutMix, AutoAugment / RandAugment / TrivialAugment, random erasing, repeated
                augmentation), all off by default: ``--data.augment.mixup_alpha 0.2``. "aa" is
                AutoAugment's ImageNet policy here; the policy runs on each image after the crop and
                flip, in the workers (``policy_groups`` is CIFAR's only).
            decode: where training, validation and test images are decoded. "pil": in the DataLoader
                workers, image by image (PIL / libjpeg-turbo, with reduced-size JPEG decoding for
                large images). "gpu": the workers only read the files; each batch is decoded on the
                training GPU with nvJPEG (``torchvision.io.decode_jpeg``), then cropped, resized and
                flipped there (same views, same random draws, same batch shape: ``jpeg_batch``).
                "cpu": the same code decoding on the CPU in the training process (a reference
                for tests and CPU runs; it does not spread over workers). Predict always decodes
                in the workers.
            shards: instead of ``root``, the output of ``resnet-lit shards`` (LitData chunks; a local folder
                or a URL LitData reads, e.g. ``s3://bucket/imagenet-shards``): the same images in the same
                order, read by index under the same samplers (data/litdata_source.py; needs
                ``pip install 'resnet-lit[shards]'``). ``scan`` does nothing there (the converter checked
                every image); ``cache_dir`` is where LitData keeps a URL's ``index.json``.
        """
        super().__init__()
        self.save_hyperparameters()
        if isinstance(progressive_resize, dict):  # from a checkpoint's hyperparameters
            progressive_resize = ProgressiveResize(**progressive_resize)
        self.progressive = progressive_resize
        if progressive_resize is not None:  # checkpoints hold plain values (weights_only loading)
            self.hparams.progressive_resize = asdict(progressive_resize)
        if min(train_size, test_size, test_resize or test_size) < 1:
            raise ValueError(f"train_size, test_size and test_resize must be >= 1 pixel, got {train_size}, "
                             f"{test_size}, {test_resize}")
        self._keep_augment(augment)
        if self.augment.policy_groups is not None:
            raise ValueError(f"augment.policy_groups {self.augment.policy_groups}: CIFAR's only (its policy runs on "
                             "the batch); ImageNet runs the policy per image in the workers: set it to null")
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale {list(crop_scale)}: give (min, max) area shares with 0 < min <= max <= 1, "
                             "e.g. [0.08, 1.0]")
        if decode not in DECODE_CHOICES:
            raise ValueError(f"decode {decode!r}: use one of {', '.join(DECODE_CHOICES)}")
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1) if normalization == "mean_std" else None
        self._classes: list[str] | None = list(classes) if classes is not None else None
        self._splits: dict[str, list[tuple[str, int]]] = {}
        self._scan_done: set[str] = set()
        self._shard_source = None
        if (root is None) == (shards is None):
            raise ValueError("ImageNetDataModule: give root (an ImageFolder tree or its .tar.gz archives) or shards "
                             f"(the output of `resnet-lit shards`), exactly one; got root={root!r}, shards={shards!r}")

    # ------------------------------------------------------------------ files
    def _split_name(self, split: str) -> str:
        """The folder (or archive) name of ``train``, ``val`` or ``test`` under ``root``."""
        hp = self.hparams
        return {"train": hp.train_dir, "val": hp.val_dir, "test": hp.test_dir or hp.val_dir}[split]

    def _split_dir(self, name: str) -> Path | None:
        root = require_path(Path(self.hparams.root).expanduser(), "ImageNet root",
                            "Point root at the folder holding train/ and val/ (class folders) "
                            "or train.tar.gz and val.tar.gz.")
        return resolve_split(root, name, self.hparams.cache_dir)

    def _samples(self, name: str) -> list[tuple[str, int]]:
        root = self.hparams.root
        if name not in self._splits:
            d = self._split_dir(name)
            if d is None:
                raise FileNotFoundError(
                    f"no '{name}' split under {root}: expected {root}/{name}/<class>/<images> or {root}/{name}.tar.gz"
                )
            classes, samples = self._listing(d)
            where = "the given classes" if self.hparams.classes is not None else f"{root}/{self._first_split()}"
            check_same_classes(self.classes, classes, where, f"{root}/{name}")
            self._splits[name] = samples
        return self._splits[name]

    def _listing(self, split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
        """The classes and samples of a split folder, walked once (``folder.listed_image_folder``)."""
        return listed_image_folder(split_dir, on_bad_image=self.hparams.on_bad_image,
                                   cache_dir=self.hparams.cache_dir)

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before the others set up: it walks each split
        # folder (extracting archives first) and leaves the listing every rank then reads.
        # With the classes given (predict from a checkpoint) no split may be needed or present: setup
        # reads what its stage needs and names what is missing.
        if self.hparams.get("shards") is not None or self.hparams.root is None or self._classes is not None:
            return
        if not Path(self.hparams.root).expanduser().exists():
            return  # setup says so, in the line it always gave
        for split in ("train", "val", "test"):
            name = self._split_name(split)
            if name not in self._splits and self._split_dir(name) is not None:
                self._samples(name)

    def _first_split(self) -> str:
        for name in map(self._split_name, ("train", "val", "test")):
            if self._split_dir(name) is not None:
                return name
        root, train, val = self.hparams.root, self.hparams.train_dir, self.hparams.val_dir
        raise FileNotFoundError(
            f"no image folders under {root}: expected {root}/{train}/<class>/<images> and "
            f"{root}/{val}/<class>/<images> (or {train}.tar.gz / {val}.tar.gz). "
            "ILSVRC-2012's flat validation folder is sorted into class folders by `resnet-lit imagenet-val`."
        )

    @property
    def classes(self) -> list[str]:
        """Class names: the training split's folder names, sorted (the validation split's if there is no
        training split)."""
        if self._classes is None and self.hparams.get("shards") is not None:
            self._classes = self._shards().classes
        if self._classes is None:
            name = self._first_split()
            self._classes, self._splits[name] = self._listing(self._split_dir(name))
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _scanned(self, split: str) -> list[tuple[str, int]]:
        name = self._split_name(split)
        samples = self._samples(name)
        if not self.hparams.scan or name in self._scan_done:
            return samples
        bad = scan_files([p for p, _ in samples], self.num_workers)
        if bad and self.hparams.on_bad_image != "skip":
            raise BadImageError(f"{len(bad)} unreadable image(s) in {self.hparams.root}/{name}; the first: {bad[0][1]}")
        if bad:
            log.warning("scan: dropping %d unreadable image(s) from %s/%s (on_bad_image='skip')",
                        len(bad), self.hparams.root, name)
            self.num_skipped += len(bad)
            drop = {i for i, _ in bad}
            samples = [s for i, s in enumerate(samples) if i not in drop]
        self._splits[name] = samples
        self._scan_done.add(name)  # setup() runs again for test/predict: scan each split once
        return samples

    def _train_transform(self):
        """The per-image training transform: crop and flip at ``train_size``, then the policy if any."""
        hp = self.hparams
        size = self.progressive.size_at(0) if self.progressive is not None else hp.train_size
        if hp.augmentation == "paper":
            crop = PaperTrainTransform(size, reference_size=224)
        else:
            crop = ModernTrainTransform(size, scale=tuple(hp.get("crop_scale", (0.08, 1.0))))
        policy = self.augment.policy(fill=mean_fill(IMAGENET_MEAN))
        return crop if policy is None else PolicyAfter(crop, policy)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        resize, crop = hp.test_resize or round(hp.test_size * 256 / 224), hp.test_size
        test_tf = {"center": CenterCrop(resize, crop), "flip": CenterFlip(resize, crop),
                   "ten_crop": TenCrop(resize, crop), "multi_scale": MultiScale()}[hp.test_mode]
        # decode: cpu | gpu: the workers read bytes, the views are taken after the transfer (jpeg_batch)
        wrap = (lambda view: view) if hp.decode == "pil" else EncodedJpeg
        if stage in ("fit", None):
            self.train_set = self._dataset("train", wrap(self._train_transform()))
        if stage in ("fit", "validate", None):
            self.val_set = self._dataset("val", wrap(CenterCrop(resize, crop)))
        if stage in ("test", None):
            self.test_set = self._dataset("test", wrap(test_tf))
        if stage in ("predict", None) and hp.predict_path is not None:
            view = CenterCrop(resize, crop)
            self.predict_set = ImageFiles(list_predict_files(hp.predict_path), view, hp.on_bad_image)

    # ------------------------------------------------------------------ shards (data/litdata_source.py)
    def _shards(self):
        """The ``shards`` location (its classes and splits), opened once."""
        if self._shard_source is None:
            from .litdata_source import ShardSource

            self._shard_source = ShardSource(self.hparams.shards, self.hparams.cache_dir)
            if self.hparams.classes is not None:
                check_same_classes(self.hparams.classes, self._shard_source.classes, "the given classes",
                                   self.hparams.shards)
        return self._shard_source

    def _dataset(self, split: str, transform):
        """The per-image dataset of ``split``: ImageFiles over the folder, or ShardImages over ``shards``."""
        if self.hparams.get("shards") is not None:
            return self._shards().dataset(self._split_name(split), transform, self.hparams.on_bad_image)
        return ImageFiles(self._scanned(split), transform, self.hparams.on_bad_image)

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: Dataset, batch_size: int, train: bool) -> DataLoader:
        # Training: a ResumableLoader (data/samplers.py), which resumes mid-epoch at the right batch
        # and starts its workers only after Lightning has set the epoch (a plain DataLoader's workers
        # would read the previous epoch's order ahead).
        # Training: each index with its own seed (samplers.SeededShardSampler): exact crops on resume.
        sampler = self._shard(len(ds), train=train, **({"sampler": SeededShardSampler} if train else {}))
        return (ResumableLoader if train else DataLoader)(ds, batch_size=batch_size, sampler=sampler, drop_last=train,
                                                          **self._worker_args(self.pin_memory))

    def _worker_args(self, pin_memory: bool) -> dict:
        args = super()._worker_args(pin_memory)
        if self.hparams.decode != "pil":  # batches of encoded bytes (jpeg_batch.JpegBatch)
            args["collate_fn"] = collate_encoded
        return args

    def train_dataloader(self) -> DataLoader:
        if self.progressive is None:
            return self._loader(self.train_set, self.batch_size, train=True)
        # Each index carries its epoch's size to the worker that reads it (data/resolution.py).
        sampler = self._shard(len(self.train_set), train=True, sampler=SizedShardSampler, schedule=self.progressive)
        return ResumableLoader(AtSize(self.train_set), batch_size=self.batch_size, sampler=sampler, drop_last=True,
                               **self._worker_args(self.pin_memory))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.predict_path is None:
            raise ValueError("predict needs predict_path: an image file, a folder of images or a list of them")
        # A plain sequential loader: Lightning shards it across ranks itself when predicting.
        return DataLoader(self.predict_set, batch_size=self.eval_batch_size, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(self.hparams.seed),
                          worker_init_fn=ignore_stop_signals)

    # ------------------------------------------------------------------ on the device
    def statistics(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.mean, self.std

    def _device_batch(self, batch, train: bool):
        x, target = batch
        if isinstance(x, JpegBatch):  # decode: cpu | gpu (jpeg_batch): decode and take the views here
            x, target, skipped = decode_batch(x, target, decode=self.hparams.decode,
                                              on_bad_image=self.hparams.on_bad_image, evaluating=not train)
            self.num_skipped += skipped  # logged with the next batch's count (_count_skipped)
            if self.trainer is not None and not self.trainer.training and self.pad_eval_batches:
                x, target = pad_eval_batch((x, target), self.eval_batch_size)
        return super()._device_batch((x, target), train)

    def transform_batch(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 [..., 3, H, W] on any device -> float32: PCA colour noise (``train``), then normalisation."""
        mean, std = self.statistics_on(x.device)
        out = x.to(torch.float32).div_(255)
        if train and self.hparams.lighting > 0:
            out = pca_lighting(out, std=self.hparams.lighting)
        out = out.sub_(mean)
        return out.div_(std) if std is not None else out
