"""The per-image side of ImageNetDataModule: resolving ImageFolder roots, the dataset, bad-file handling.

A split is ``root/<split>/`` (a folder tree) or ``root/<split>.tar.gz`` (extracted once into the
cache directory, as ../shared/data/imagewoof-mini ships). Each sample is read as bytes and handed
to a transform from ``transforms.py`` that decodes and crops it to uint8.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .cache import cache_root, publish_dir, source_key
from .decode import BadImageError, bad_image_message
from .folder import extract_archive, find_archive, is_image_name

log = logging.getLogger(__name__)


def resolve_split(root: Path, split: str, cache_dir: str | None) -> Path | None:
    """The folder of ``split`` under ``root``: ``root/split`` or the extracted ``root/split.tar.gz``; None if neither."""
    if (root / split).is_dir():
        return root / split
    archive = find_archive(root, split)
    if archive is None:
        return None
    final = cache_root(cache_dir) / f"imagefolder-{source_key(archive)}" / split
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("extracting %s to %s (once)", archive, final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{split}-"))
    extract_archive(archive, tmp)
    inner = [p for p in tmp.iterdir()]
    # an archive that wraps the tree in one folder named after the split (train/<class>/...) is unwrapped
    src = inner[0] if len(inner) == 1 and inner[0].name == split and inner[0].is_dir() else tmp
    publish_dir(src, final)
    if src is not tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def list_predict_files(paths: str | list[str]) -> list[str]:
    """Image files named by ``predict_path``: a folder (searched recursively, sorted) or a list of files/folders."""
    out: list[str] = []
    for p in [paths] if isinstance(paths, str) else paths:
        path = Path(p).expanduser()
        if path.is_dir():
            out += sorted(str(f) for f in path.rglob("*") if f.is_file() and is_image_name(f.name))
        elif path.is_file():
            out.append(str(path))
        else:
            raise FileNotFoundError(f"predict_path {path} does not exist: give an image file, a folder of images, or a list of them")
    if not out:
        raise FileNotFoundError(f"predict_path {paths} holds no image files")
    return out


def check_file(path: str) -> str | None:
    """Why ``path`` is not a readable image (decoded at 1/8 size for JPEG: fast but complete), or None."""
    from .transforms import crop_resize  # decodes through the same code as training

    try:
        with open(path, "rb") as f:
            data = f.read()
        crop_resize(data, path, lambda w, h: (0, 0, w, h), (8, 8))
    except (BadImageError, OSError) as exc:
        return str(exc)
    return None


def scan_files(paths: list[str], workers: int) -> list[tuple[int, str]]:
    """``(index, message)`` of every unreadable file, checked in ``workers`` threads (PIL releases the GIL)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(check_file, paths, chunksize=64))
    return [(i, msg) for i, msg in enumerate(results) if msg is not None]


class ImageFiles(Dataset):
    """``(uint8 image(s), target, bad)`` per sample; ``target`` is the label, or the path when predicting.

    ``bad`` is 1 when the requested file was unreadable and ``on_bad_image="skip"`` substituted the
    next readable file (so batch shapes stay static); it travels with the batch so the count
    reaches the main process from any worker.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]] | list[str],
        transform: Callable[[bytes, str], torch.Tensor | list[torch.Tensor]],
        on_bad_image: str = "error",
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.samples)

    def _target(self, i: int):
        s = self.samples[i]
        return s if isinstance(s, str) else s[1]

    def _path(self, i: int) -> str:
        s = self.samples[i]
        return s if isinstance(s, str) else s[0]

    def _read(self, i: int):
        path = self._path(i)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise BadImageError(bad_image_message(path, f"cannot read it ({exc})")) from exc
        return self.transform(data, path)

    def __getitem__(self, i: int):
        try:
            return self._read(i), self._target(i), 0
        except BadImageError as exc:
            if self.on_bad_image != "skip":
                raise
            log.warning("skipping %s", exc)
        for k in range(1, min(len(self), 100)):  # substitute the next readable image
            j = (i + k) % len(self)
            try:
                return self._read(j), self._target(j), 1
            except BadImageError:
                continue
        raise BadImageError(f"no readable image near index {i} of {len(self)}: the data set is mostly unreadable")


def default_num_workers() -> int:
    """min(8, CPUs this process may use): enough to keep one GPU fed by PIL decoding in most setups."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return min(8, cpus)
