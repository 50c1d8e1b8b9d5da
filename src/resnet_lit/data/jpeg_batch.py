"""``decode: cpu | gpu``: the workers only read JPEG bytes; the training process decodes whole batches.

With ``decode: pil`` (the default) each DataLoader worker decodes, crops and resizes its images
(``transforms``). With ``cpu`` or ``gpu`` a worker only reads the file: ``EncodedJpeg`` hands on the
bytes as a uint8 tensor, ``collate_encoded`` packs a batch of them into one ``JpegBatch`` (one flat
tensor and its offsets, so one shared-memory block and one pinned copy per batch), and after the
transfer ``decode_batch`` decodes the whole list with ``torchvision.io.decode_jpeg(list, device=...)``
(nvJPEG on a CUDA device, libjpeg-turbo on the CPU), then takes each image's views with the same
transform objects the workers use in the PIL path (their ``views`` methods: same crop boxes, same
random draws, same antialiased resize), on that device, into the same static batch shape. A
training image's draws come from its own seed (``samplers.SeededShardSampler``), which the worker's
``EncodedJpeg`` passes on with its bytes, so the crops are the PIL path's and survive a resume.

Colour modes: ``mode=RGB`` turns greyscale and CMYK JPEGs into 3 channels. Data that is not JPEG
(PNG behind a ``.JPEG`` name: one file in ImageNet's training set) is re-encoded as JPEG (quality 95)
by the worker, so the batch decoder sees JPEG only. Bad files keep the ``on_bad_image`` policy: an
empty or non-image file fails in the worker as in the PIL path (``ImageFiles`` substitutes the next
readable file under "skip"); a JPEG whose data is corrupt fails at the batch decode, which then
decodes the batch image by image to name it: "error" raises ``BadImageError`` naming the file,
"skip" warns, counts it and puts a readable image of the same batch in its row (training learns
from it with its label; evaluation masks the row with ``SKIPPED_LABEL``). An image nvJPEG refuses
but libjpeg-turbo reads is decoded on the CPU and moved to the device.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import warnings
from typing import Any

import torch
from torch.utils.data import default_collate

from .decode import BadImageError, bad_image_message, is_jpeg, open_image, skipped_message
from .labels import SKIPPED_LABEL
from .transforms import as_bytes, seeded_draws

log = logging.getLogger(__name__)

DECODE_CHOICES = ("pil", "cpu", "gpu")


class EncodedJpeg:
    """Worker transform for ``ImageFiles``: ``(bytes, name) -> (uint8 [n] JPEG bytes, name, view)``.

    ``view`` is the per-image transform whose ``views`` method the training process applies after
    decoding (``PaperTrainTransform``, ``CenterCrop``, ...); it travels with the batch, so the crop
    size set by progressive resizing (``AtSize`` sets ``size`` here, in the worker) reaches it.
    """

    def __init__(self, view: Any) -> None:
        self.view = view
        self.seed: int | None = None  # the image's own seed (ImageFiles sets it): its views draw from it

    @property
    def size(self) -> int:
        return self.view.size

    @size.setter
    def size(self, value: int) -> None:
        self.view.size = value

    def __call__(self, data: bytes, name: str = "<bytes>") -> tuple[torch.Tensor, str, Any, int | None]:
        data, name = as_bytes(data, name)
        if not data:
            raise BadImageError(bad_image_message(name, "the file is empty (0 bytes)"))
        if not is_jpeg(data):  # PNG (or any format PIL reads) behind a JPEG name: re-encode, rare
            buf = io.BytesIO()
            img = open_image(data, name)  # BadImageError names the file when it is no image at all
            img.convert("RGB").save(buf, "JPEG", quality=95)
            data = buf.getvalue()
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), name, self.view, self.seed


class JpegBatch:
    """A batch of encoded JPEGs: ``flat`` (all bytes, uint8) cut at ``offsets`` [B + 1], the files'
    ``names``, the ``view`` transform, each image's ``seeds`` (None: draws from the process's streams),
    and ``device``, where the decoded batch goes.

    ``to(device)`` (Lightning's batch transfer) only records the device: the decoder reads host
    memory (nvJPEG copies the bytes itself), so the bytes stay on the host, pinned if the loader pins.
    """

    __slots__ = ("flat", "offsets", "names", "view", "seeds", "device")

    def __init__(self, flat: torch.Tensor, offsets: torch.Tensor, names: list[str], view: Any,
                 seeds: list[int | None] | None = None, device: torch.device | None = None) -> None:
        self.flat, self.offsets, self.names, self.view = flat, offsets, names, view
        self.seeds = seeds if seeds is not None else [None] * len(names)
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return len(self.names)

    def images(self) -> list[torch.Tensor]:
        """Each file's bytes, a 1-D uint8 view of ``flat``."""
        bounds = self.offsets.tolist()
        return [self.flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def to(self, device: torch.device | str, **kwargs: Any) -> JpegBatch:
        return JpegBatch(self.flat, self.offsets, self.names, self.view, self.seeds, torch.device(device))

    def pin_memory(self, *args: Any) -> JpegBatch:
        return JpegBatch(self.flat.pin_memory(*args), self.offsets, self.names, self.view, self.seeds, self.device)


def collate_encoded(samples: list[tuple[tuple[torch.Tensor, str, Any, int | None], Any, int]]
                    ) -> tuple[JpegBatch, Any, Any]:
    """``collate_fn`` for ``ImageFiles`` over ``EncodedJpeg``: ``(JpegBatch, targets, bad)``."""
    encoded, targets, bad = zip(*samples)
    data = [e[0] for e in encoded]
    offsets = torch.tensor([0, *itertools.accumulate(len(d) for d in data)], dtype=torch.int64)
    batch = JpegBatch(torch.cat(data), offsets, [e[1] for e in encoded], encoded[0][2], [e[3] for e in encoded])
    return batch, default_collate(list(targets)), default_collate(list(bad))


def _decode(data: torch.Tensor | list[torch.Tensor], device: torch.device):
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        return _decode_cuda(data, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29's deprecation notice
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def _decode_cuda(data: torch.Tensor | list[torch.Tensor], device: torch.device):
    """nvJPEG decoding, kept off the memory the training stream's queued kernels still use.

    torchvision's CUDA decoder allocates its outputs on the current stream but writes them from a
    private stream that does not wait for it, so a block freed on the training stream, which queued
    kernels still read, could be overwritten (pytorch/vision PR 9606). Allocating on a side stream of
    our own, used by nothing else, and marking each output as used by the training stream
    (``record_stream``, so the allocator reuses its block only after that stream's kernels are done)
    avoids that without a host synchronisation.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    main, side = torch.cuda.current_stream(device), _side_stream(device)
    with torch.cuda.stream(side), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    main.wait_stream(side)
    for image in out if isinstance(out, list) else [out]:
        image.record_stream(main)
    return out


def _reason(exc: Exception) -> str:
    return str(exc).rsplit(", ", 1)[-1].strip() or type(exc).__name__


def decode_images(batch: JpegBatch, device: torch.device) -> tuple[list[torch.Tensor | None], dict[int, str]]:
    """Every image of ``batch`` decoded to RGB uint8 [3, H, W] on ``device`` in one call; when that
    fails, one by one: None and the decoder's reason for each image that does not decode."""
    data = batch.images()
    try:
        return list(_decode(data, device)), {}
    except RuntimeError:
        pass  # at least one bad image (the call returns nothing then): find which
    images: list[torch.Tensor | None] = []
    errors: dict[int, str] = {}
    for i, d in enumerate(data):
        try:
            images.append(_decode(d, device))
            continue
        except RuntimeError as exc:
            error: Exception = exc
        if device.type != "cpu":  # what nvJPEG refuses, libjpeg-turbo may read
            try:
                images.append(_decode(d, torch.device("cpu")).to(device))
                continue
            except RuntimeError as exc:
                error = exc
        images.append(None)
        errors[i] = _reason(error)
    return images, errors


def _stack(views: list[Any]) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(views[0], (list, tuple)):  # multi-scale: one batch per scale
        return [torch.stack(v) for v in zip(*views)]
    return torch.stack(views)


def _views(view: Any, image: torch.Tensor, seed: int | None) -> Any:
    with seeded_draws(seed):  # the image's own draws, as the PIL path makes them in the worker
        return view.views(image)


def decode_batch(batch: JpegBatch, target: Any, *, decode: str, on_bad_image: str,
                 evaluating: bool) -> tuple[torch.Tensor | list[torch.Tensor], Any, int]:
    """``(views, target, skipped)``: the batch decoded on the CPU (``decode="cpu"``) or on its own
    device (``"gpu"``), each image's ``batch.view.views``, stacked, on ``batch.device``; ``target``
    with the rows of skipped images fixed (see the module's docstring) and how many there were."""
    if decode == "gpu" and batch.device.type != "cuda":
        raise ValueError(f"decode='gpu' decodes on the training device, but the batch is on {batch.device}: "
                         "train on a CUDA GPU (trainer.accelerator: gpu) or use decode='cpu' or 'pil'")
    device = batch.device if decode == "gpu" else torch.device("cpu")
    images, errors = decode_images(batch, device)
    if errors:
        target = _skip(images, errors, batch.names, target, on_bad_image, evaluating)
    views = _stack([_views(batch.view, im, seed) for im, seed in zip(images, batch.seeds)])
    if device != batch.device:
        views = [v.to(batch.device) for v in views] if isinstance(views, list) else views.to(batch.device)
    return views, target, len(errors)


def _skip(images: list[torch.Tensor | None], errors: dict[int, str], names: list[str], target: Any,
          on_bad_image: str, evaluating: bool) -> Any:
    """Apply ``on_bad_image`` to the images that did not decode; fills their rows in place."""
    failures = [BadImageError(bad_image_message(names[i], reason)) for i, reason in errors.items()]
    if on_bad_image != "skip":
        raise failures[0]
    for exc in failures:
        log.warning("%s", skipped_message(exc))
    n = len(images)
    if len(errors) == n:
        raise BadImageError(f"no image of a batch of {n} decodes (the first: {names[0]}): "
                            "the data set is mostly unreadable")
    if isinstance(target, torch.Tensor):
        target = target.clone()
    else:
        target = list(target)
    for i in errors:
        j = next((i + k) % n for k in range(1, n) if images[(i + k) % n] is not None and (i + k) % n not in errors)
        images[i] = images[j]
        if not evaluating:  # training learns from the stand-in, with its label
            target[i] = target[j]
        elif isinstance(target, torch.Tensor):  # evaluation never counts it
            target[i] = SKIPPED_LABEL
        else:  # predict: no row for it
            target[i] = None
    return target
