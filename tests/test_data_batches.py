"""`DataModule.batches(split)`: training-ready `(x, y)` batches outside a Trainer, for both DataModules,
on real images (CIFAR-10 and the ImageNet subset)."""

from __future__ import annotations

import pytest
import torch
from weights_helpers import extract_folder

from resnet_lit import CIFARDataModule, ImageNetDataModule


def test_cifar_batches_are_normalised_and_training_ones_augmented(cifar_root, shared_decode_cache):
    dm = CIFARDataModule(str(cifar_root), batch_size=64, subset=256, num_workers=0, cache_dir=str(shared_decode_cache))
    x, y = next(dm.batches("train"))
    assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32) and y.dtype == torch.int64 and y.shape == (64,)
    assert abs(float(x.mean())) < 0.2  # the per-pixel mean is subtracted
    val = list(dm.batches("val"))
    assert sum(len(b[1]) for b in val) == 256  # subset caps the evaluation split too
    again = next(dm.batches("val"))  # evaluation is not augmented: the same batch twice
    assert torch.equal(val[0][0], again[0]) and torch.equal(val[0][1], again[1])
    with pytest.raises(ValueError, match="split 'valid': use one of train, val, test, predict"):
        next(dm.batches("valid"))


def test_imagenet_batches_from_a_folder(imagewoof_root, tmp_path):
    root = tmp_path / "woof"
    extract_folder(imagewoof_root, root / "train", per_class=1, split="train")
    extract_folder(imagewoof_root, root / "val", per_class=1, split="val")
    dm = ImageNetDataModule(str(root), batch_size=4, num_workers=0, cache_dir=str(tmp_path / "cache"))
    x, y = next(dm.batches("train"))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 224, 224) and y.dtype == torch.int64
    assert -3 < float(x.mean()) < 3 and float(x.std()) > 0.3  # normalised by the ImageNet statistics
    xv, yv = next(dm.batches("val"))
    assert xv.shape[1:] == (3, 224, 224) and len(yv) == len(xv)
