"""The paper's augmentations and test-time crops, as plain functions and callables.

Two kinds, split by where they run:

* batch functions on tensors, run on the accelerator after the batch is transferred (the
  DataModules' ``on_after_batch_transfer``): ``normalize``, ``cifar_augment`` (``normalize_padded`` +
  ``crop_and_flip``), ``pca_lighting``.
  Workers then ship uint8 (4x fewer bytes than float) and the GPU does the arithmetic.
* per-image callables ``(bytes or path, name) -> uint8``, run in DataLoader workers, that decode
  and crop one ImageNet image: ``PaperTrainTransform``, ``ModernTrainTransform``, ``CenterCrop``,
  ``CenterFlip``, ``TenCrop``, ``MultiScale``. They crop *before* resizing, decode JPEG with
  libjpeg-turbo straight into a tensor, and for large images let PIL's JPEG decoder drop resolution it will not need
  (``draft``), which is why they beat torchvision's resize-then-crop presets (docs/data.md).
  Each also has ``views(x)``: the same view(s), same random draws, of an image already decoded to a
  tensor on any device, which ``decode: cpu | gpu`` applies after decoding whole batches (``jpeg_batch``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from .decode import BadImageError, bad_image_message, decode_rgb, open_image, pil_to_tensor, torchvision_jpeg_available

# ImageNet RGB statistics on the 0..1 scale (the values torchvision's weights were trained with).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# AlexNet's PCA of ImageNet RGB pixels (Krizhevsky et al. 2012), 0..1 scale, as fb.resnet.torch uses them.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
MULTI_SCALE_SIZES = (224, 256, 384, 480, 640)  # shorter sides of the paper's fully-convolutional test


# ---------------------------------------------------------------- batch functions (any device)
def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images [..., 3, H, W] -> float32 ``(x / 255 - mean) / std``; ``mean`` broadcasts
    ([3, H, W] per-pixel or [3, 1, 1] per-channel, 0..1 scale)."""
    out = x.to(torch.float32).div_(255).sub_(mean.to(x.device))
    if std is not None:
        out = out.div_(std.to(x.device))
    return out


def cifar_augment(x: torch.Tensor, pad: int = 4, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's CIFAR augmentation on a whole batch [B, C, H, W] (any dtype, any device).

    Zero-pads ``pad`` pixels on each side, takes a random H x W crop of the padded image and
    mirrors it with probability 1/2, each image independently; one gather does crop and flip.
    Applied after mean subtraction, so the padding is zero in the normalised space (as in
    fb.resnet.torch), i.e. pixels equal to the data set's mean.
    """
    return crop_and_flip(F.pad(x, (pad, pad, pad, pad)), pad, flip=flip, generator=generator)


def crop_and_flip(padded: torch.Tensor, pad: int, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random (H - 2 pad) x (W - 2 pad) crops of a padded batch [B, C, H, W], each mirrored with
    probability 1/2: ``cifar_augment`` after its padding."""
    b, c, hp, wp = padded.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = padded.device
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    rows = dy + torch.arange(h, device=dev)  # [B, H]
    cols = dx + torch.arange(w, device=dev)  # [B, W]
    if flip:
        mirror = torch.rand(b, 1, device=dev, generator=generator) < 0.5
        cols = torch.where(mirror, cols.flip(1), cols)
    # One flat gather over each padded plane (3-4x faster than 4-index advanced indexing on a CPU,
    # same output for the same draws): index = row * padded width + column, shared by the channels.
    index = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, index).view(b, c, h, w)


def normalize_padded(x: torch.Tensor, mean: torch.Tensor, pad: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 [B, C, H + 2 pad, W + 2 pad]: ``normalize(x, mean)`` inside a
    border of zeros, i.e. ``F.pad(normalize(x, mean), pad)`` with the same values, in one pass.

    ``out``, an earlier result of the same shape and device, is reused: only its interior is
    written, its border is still zero (1.4-1.6x faster than normalising then padding on a CPU).
    """
    b, c, h, w = x.shape
    shape = (b, c, h + 2 * pad, w + 2 * pad)
    if out is None or tuple(out.shape) != shape or out.device != x.device or out.dtype != torch.float32:
        out = torch.zeros(shape, dtype=torch.float32, device=x.device)
    out[:, :, pad : pad + h, pad : pad + w].copy_(x).div_(255).sub_(mean.to(x.device))
    return out


@contextlib.contextmanager
def seeded_draws(seed: int | None) -> Iterator[None]:
    """Inside: Python's ``random`` and torch's CPU generator seeded with ``seed`` (one image's draws:
    ``samplers.SeededShardSampler``); after: both streams as they were. ``seed`` None: nothing changes."""
    if seed is None:
        yield
        return
    # The CPU generator itself: torch.manual_seed also visits every accelerator backend (0.7 ms an image
    # measured, against about 0.08 ms for all of this).
    generator = torch.default_generator
    state, torch_state = random.getstate(), generator.get_state()
    random.seed(seed)
    generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(state)
        generator.set_state(torch_state)


@functools.lru_cache(maxsize=8)
def _pca_tensors(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(PCA_EIGVAL, device=device), torch.tensor(PCA_EIGVEC, device=device)


def pca_lighting(x: torch.Tensor, std: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """AlexNet colour augmentation on a float batch [B, 3, H, W] on the 0..1 scale (before normalising).

    Adds ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, std)`` per image and component.
    """
    b = x.shape[0]
    eigval, eigvec = _pca_tensors(x.device)
    alpha = torch.randn(b, 3, device=x.device, generator=generator) * std
    rgb = (alpha * eigval) @ eigvec.T  # [B, 3]: rgb[b, i] = sum_j eigvec[i, j] alpha[b, j] eigval[j]
    return x + rgb.view(b, 3, 1, 1).to(x.dtype)


# ---------------------------------------------------------------- per-image callables (workers)
def _draft(img: Image.Image, scale: float) -> tuple[Image.Image, float, float]:
    """Let the JPEG decoder shrink by 1/2, 1/4 or 1/8 while staying >= ``scale`` of full size.

    Returns the image and the factors (x, y) by which its size now differs from the original
    (they differ slightly: the decoder rounds each side up).
    """
    if img.format == "JPEG" and scale < 0.5:
        w, h = img.size
        img.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        return img, img.size[0] / w, img.size[1] / h
    return img, 1.0, 1.0


def crop_tensor(x: torch.Tensor, box: tuple[float, float, float, float], size: tuple[int, int]) -> torch.Tensor:
    """The region ``box`` (left, top, right, bottom; rounded to whole pixels) of a decoded image
    [3, H, W] on any device, resized (antialiased) to ``size`` (w, h) -> [3, h, w], same dtype.

    The tensor half of ``resize_region``, and what ``decode: cpu | gpu`` applies to each image the
    batch decoder returns (``jpeg_batch``): the same pixels on the CPU.
    """
    left, top, right, bottom = box
    h, w = x.shape[-2:]
    t, lf = min(max(0, round(top)), h - 1), min(max(0, round(left)), w - 1)
    b, r = max(t + 1, min(h, round(bottom))), max(lf + 1, min(w, round(right)))
    return TF.resize(x[:, t:b, lf:r], [size[1], size[0]], antialias=True)


def resize_region(
    img: Image.Image, name: str, box: tuple[float, float, float, float], size: tuple[int, int],
    data: bytes | None = None
) -> torch.Tensor:
    """Resize the region ``box`` (left, top, right, bottom; full-resolution pixels) of a lazily
    opened image to ``size`` (w, h) -> RGB uint8 [3, h, w].

    Two paths, whichever is faster (docs/data.md): when the output needs at least half the
    resolution, torchvision's libjpeg-turbo decoder and an antialiased tensor resize of the crop
    (``data`` must be the JPEG bytes); when it needs less, PIL decoding at 1/2..1/8 size (``draft``).
    """
    left, top, right, bottom = box
    scale = min(size[0] / max(right - left, 1e-6), size[1] / max(bottom - top, 1e-6))
    if data is not None and scale >= 0.5 and img.format == "JPEG" and torchvision_jpeg_available():
        return crop_tensor(decode_rgb(data, name), box, size)  # BadImageError names the file
    try:
        img, kx, ky = _draft(img, scale)
        if img.mode != "RGB":
            img = img.convert("RGB")  # greyscale, CMYK, palette -> 3 channels (also forces the decode)
        w, h = img.size
        box = (max(0.0, left * kx), max(0.0, top * ky), min(w, right * kx), min(h, bottom * ky))
        out = img.resize(size, Image.BILINEAR, box=box, reducing_gap=None)
    except Exception as exc:  # truncated or corrupt data surfaces here, at decode time
        raise BadImageError(bad_image_message(name, f"{type(exc).__name__}: {exc}")) from exc
    return pil_to_tensor(out)


def as_bytes(data: bytes | str | os.PathLike, name: str) -> tuple[bytes, str]:
    """The transforms take encoded bytes (what workers read) or, for convenience, a file path."""
    if isinstance(data, (str, os.PathLike)):
        name = str(data)
        try:
            with open(data, "rb") as f:
                return f.read(), name
        except OSError as exc:
            raise BadImageError(bad_image_message(name, f"cannot read it ({exc})")) from exc
    return data, name


def crop_resize(data: bytes, name: str, box_fn, size: tuple[int, int]) -> torch.Tensor:
    """Decode ``data`` and resize the region ``box_fn(w, h)`` to ``size`` (w, h) -> uint8 [3, h, w]."""
    data, name = as_bytes(data, name)
    img = open_image(data, name, load=False)  # reads the header only: the size, for the box
    return resize_region(img, name, box_fn(*img.size), size, data)


class PaperTrainTransform:
    """He et al.: shorter side resized to S ~ U[256, 480], random 224 crop, horizontal flip -> uint8.

    Implemented as crop-then-resize: the 224 crop of the S-resized image is the region of side
    224 * short / S of the original, resized to 224 (same pixels up to interpolation).
    Colour (PCA lighting) and mean subtraction follow on the batch (``pca_lighting``, ``normalize``).
    """

    def __init__(self, size: int = 224, scale_range: tuple[int, int] = (256, 480), flip: bool = True,
                 reference_size: int | None = None) -> None:
        # reference_size: the crop covers what a reference_size crop of the S-resized image covers,
        # resampled to ``size`` (train at 176 px on the paper's 224-px views); None: size itself.
        self.size, self.scale_range, self.flip = size, scale_range, flip
        self.reference_size = reference_size

    def sample(self, w: int, h: int) -> tuple[tuple[float, float, float, float], bool]:
        """The crop box in a ``w`` x ``h`` image and whether to mirror it (Python's ``random``)."""
        s = random.randint(*self.scale_range)
        side = (self.reference_size or self.size) * min(w, h) / s  # crop side in original pixels
        left = random.uniform(0, w - side)
        top = random.uniform(0, h - side)
        return (left, top, left + side, top + side), self.flip and random.random() < 0.5

    def __call__(self, data: bytes, name: str = "<bytes>") -> torch.Tensor:
        data, name = as_bytes(data, name)
        img = open_image(data, name, load=False)  # reads the header only: the size, for the box
        box, flip = self.sample(*img.size)
        x = resize_region(img, name, box, (self.size, self.size), data)
        return x.flip(-1) if flip else x

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The same view of an image already decoded to [3, H, W] (any device), same random draws."""
        box, flip = self.sample(x.shape[-1], x.shape[-2])
        x = crop_tensor(x, box, (self.size, self.size))
        return x.flip(-1) if flip else x


class ModernTrainTransform:
    """RandomResizedCrop (area 8..100 %, aspect 3/4..4/3) to 224 and horizontal flip -> uint8."""

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio

    def _box(self, w: int, h: int) -> tuple[float, float, float, float]:
        # torchvision's RandomResizedCrop.get_params, on sizes only.
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            ar = math.exp(random.uniform(*log_ratio))
            cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = random.randint(0, w - cw), random.randint(0, h - ch)
                return left, top, left + cw, top + ch
        in_ratio = w / h  # fallback: central crop of the whole image, aspect clamped
        if in_ratio < self.ratio[0]:
            cw, ch = w, round(w / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            cw, ch = round(h * self.ratio[1]), h
        else:
            cw, ch = w, h
        left, top = (w - cw) // 2, (h - ch) // 2
        return left, top, left + cw, top + ch

    def __call__(self, data: bytes, name: str = "<bytes>") -> torch.Tensor:
        x = crop_resize(data, name, self._box, (self.size, self.size))
        return x.flip(-1) if random.random() < 0.5 else x

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The same view of an image already decoded to [3, H, W] (any device), same random draws."""
        x = crop_tensor(x, self._box(x.shape[-1], x.shape[-2]), (self.size, self.size))
        return x.flip(-1) if random.random() < 0.5 else x


def _center_box(resize: int, crop: int):
    def box(w: int, h: int) -> tuple[float, float, float, float]:
        side = crop * min(w, h) / resize
        return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2

    return box


class CenterCrop:
    """Evaluation view: shorter side resized to ``resize`` (256), centre ``crop`` x ``crop`` (224) ->
    uint8 [3, 224, 224]."""

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        self.resize, self.crop = resize, crop

    def __call__(self, data: bytes, name: str = "<bytes>") -> torch.Tensor:
        return crop_resize(data, name, _center_box(self.resize, self.crop), (self.crop, self.crop))

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The same view of an image already decoded to [3, H, W] (any device)."""
        return crop_tensor(x, _center_box(self.resize, self.crop)(x.shape[-1], x.shape[-2]), (self.crop, self.crop))


class CenterFlip(CenterCrop):
    """Test-time flip averaging: the centre view and its mirror image -> uint8 [2, 3, crop, crop]
    (the model averages the two views' probabilities, as 10-crop's ten)."""

    def __call__(self, data: bytes, name: str = "<bytes>") -> torch.Tensor:
        x = super().__call__(data, name)
        return torch.stack((x, x.flip(-1)))

    def views(self, x: torch.Tensor) -> torch.Tensor:
        x = super().views(x)
        return torch.stack((x, x.flip(-1)))


class TenCrop:
    """Standard 10-crop test (AlexNet): shorter side ``resize``, four corners and centre of
    ``crop`` x ``crop``, and their mirror images -> uint8 [10, 3, crop, crop] (5 crops, then 5 flipped)."""

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        self.resize, self.crop = resize, crop

    def __call__(self, data: bytes, name: str = "<bytes>") -> torch.Tensor:
        data, name = as_bytes(data, name)
        img = open_image(data, name, load=False)
        w, h = img.size
        return self._crops(resize_region(img, name, (0, 0, w, h), self._size(w, h), data))

    def _size(self, w: int, h: int) -> tuple[int, int]:
        f = self.resize / min(w, h)
        return max(self.crop, round(w * f)), max(self.crop, round(h * f))

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The same ten views of an image already decoded to [3, H, W] (any device)."""
        h, w = x.shape[-2:]
        return self._crops(crop_tensor(x, (0, 0, w, h), self._size(w, h)))

    def _crops(self, full: torch.Tensor) -> torch.Tensor:
        """[3, H, W] with shorter side ``resize`` -> [10, 3, crop, crop]."""
        c, (hh, ww) = self.crop, full.shape[-2:]
        tops = (0, 0, hh - c, hh - c, (hh - c) // 2)
        lefts = (0, ww - c, 0, ww - c, (ww - c) // 2)
        crops = torch.stack([full[:, t : t + c, lf : lf + c] for t, lf in zip(tops, lefts)])
        return torch.cat([crops, crops.flip(-1)])


class MultiScale:
    """Fully-convolutional multi-scale test views: for each shorter side S in ``sizes``, the
    image resized so its shorter side is S and centre-cropped to S x S -> list of uint8 [3, S, S].

    The square crop is our choice so images batch (the paper runs whole non-square images one
    by one); it keeps the full shorter side and the centre of the longer one.
    """

    def __init__(self, sizes: Sequence[int] = MULTI_SCALE_SIZES) -> None:
        self.sizes = tuple(sizes)

    def __call__(self, data: bytes, name: str = "<bytes>") -> list[torch.Tensor]:
        return [crop_resize(data, name, _center_box(s, s), (s, s)) for s in self.sizes]

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The same views of an image already decoded to [3, H, W] (any device)."""
        return [crop_tensor(x, _center_box(s, s)(x.shape[-1], x.shape[-2]), (s, s)) for s in self.sizes]
