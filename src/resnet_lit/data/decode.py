"""Image bytes to RGB uint8 tensors, and the error a bad file raises.

Two decoders: ``torchvision.io.decode_jpeg`` (libjpeg-turbo straight into a tensor; about 2.5x
faster than PIL on CIFAR's 32x32 JPEGs, see docs/data.md) for JPEG data only, and PIL for every
other format (torchvision's PNG decoder crashes the process on a corrupt PNG: libpng CRC error,
segmentation fault, torchvision 0.29) and wherever torchvision's image operators are missing.
torchvision >= 0.29 marks its decoders deprecated in favour of TorchCodec; we silence that
warning. Both give 3-channel RGB for greyscale, CMYK and palette images, and for
PNG data behind a ``.JPEG`` name (ImageNet has all of these): the format is read from the
bytes, never from the file name.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

_ADVICE = "Delete or replace the file, or pass on_bad_image='skip' to skip and count such files."


class BadImageError(ValueError):
    """A file that is missing, empty, truncated or not an image; the message names it."""


def bad_image_message(name: str, reason: str) -> str:
    return f"bad image file {name}: {reason}. {_ADVICE}"


def skipped_message(error: BadImageError) -> str:
    """What skip mode logs for a bad file: what is wrong with it, not the advice to turn skip on."""
    return str(error).replace(f" {_ADVICE}", "") + " Skipped (on_bad_image='skip'); replace the file to use it."


def _tv_decode_jpeg(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice (torchvision >= 0.29), non-writable buffer
        return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)


@functools.cache
def torchvision_jpeg_available() -> bool:
    """Whether torchvision's JPEG operator works here (probed once, on first use)."""
    try:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 100, 50)).save(buf, "JPEG")
        return _tv_decode_jpeg(buf.getvalue()).shape == (3, 8, 8)
    except Exception:
        return False


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> RGB uint8 tensor [3, H, W]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def open_image(data: bytes, name: str, *, load: bool = True) -> Image.Image:
    """Open an image with PIL, raising ``BadImageError`` naming ``name``. ``load=False`` reads the header
    only, so that ``Image.draft`` can still pick a reduced JPEG size before anything is decoded."""
    if len(data) == 0:
        raise BadImageError(bad_image_message(name, "the file is empty (0 bytes)"))
    try:
        img = Image.open(io.BytesIO(data))
        if load:
            img.load()
    except UnidentifiedImageError as exc:
        raise BadImageError(bad_image_message(name, "not an image (no known image format in its bytes)")) from exc
    except Exception as exc:  # truncated data (OSError), broken headers, decoder errors, decompression bombs
        raise BadImageError(bad_image_message(name, f"{type(exc).__name__}: {exc}")) from exc
    return img


def decode_rgb(data: bytes, name: str, *, backend: str = "auto") -> torch.Tensor:
    """Decode whole-image bytes to RGB uint8 [3, H, W]; ``BadImageError`` names ``name`` on failure.

    ``backend``: "pil", or "auto" (torchvision for JPEG data when available, else PIL).
    """
    if len(data) == 0:
        raise BadImageError(bad_image_message(name, "the file is empty (0 bytes)"))
    if backend == "auto" and is_jpeg(data) and torchvision_jpeg_available():
        try:
            return _tv_decode_jpeg(data)
        except RuntimeError as exc:
            raise BadImageError(bad_image_message(name, str(exc).rsplit(", ", 1)[-1])) from exc
    return pil_to_tensor(open_image(data, name))
