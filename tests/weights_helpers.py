"""Real images and small models for the weights tests (test_checkpoints, test_export, test_finetune)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # ImageNet RGB means
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def read_imagewoof(imagewoof_root: Path, per_class: int, classes: int = 10,
                   split: str = "val") -> list[tuple[str, str, bytes]]:
    """(class, member name, JPEG bytes) of the first `per_class` images of the first `classes` classes."""
    taken: dict[str, int] = {}
    out = []
    with tarfile.open(imagewoof_root / f"{split}.tar.gz") as tf:
        for m in tf:
            if not m.isfile():
                continue
            cls = Path(m.name).parent.name
            if cls not in taken and len(taken) == classes:
                continue
            if taken.get(cls, 0) < per_class:
                taken[cls] = taken.get(cls, 0) + 1
                out.append((cls, m.name, tf.extractfile(m).read()))
    return out


def to_tensor(jpeg: bytes, size: int = 64) -> torch.Tensor:
    """Decode, resize the whole image to size x size, normalise: [3, size, size] float."""
    img = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD


def real_batch(imagewoof_root: Path, n: int = 4, size: int = 64) -> torch.Tensor:
    """n real ImageNet photographs (one per class) as a normalised batch [n, 3, size, size]."""
    return torch.stack([to_tensor(b, size) for _, _, b in read_imagewoof(imagewoof_root, 1, classes=n)])


def extract_folder(imagewoof_root: Path, dest: Path, per_class: int, classes: int = 10, split: str = "val") -> Path:
    """A small ImageFolder tree `dest/<wnid>/<file>` of real images."""
    for cls, name, data in read_imagewoof(imagewoof_root, per_class, classes, split):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        (dest / cls / Path(name).name).write_bytes(data)
    return dest


def with_trained_bn(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Give every BN non-default running statistics (a loader that drops buffers then shows), return eval model."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    return model.eval()
