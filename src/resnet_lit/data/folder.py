"""Reading ImageFolder trees (``<split>/<class>/<image>``) and tar archives of them: scanning,
extensions, archives, and the per-image dataset ImageNetDataModule reads through.

Class names are folder names, sorted, as torchvision's ``ImageFolder`` orders them. Files whose
extension is not an image extension (README.txt, .DS_Store) are ignored; files with an image
extension that do not decode are bad images (see ``decode.py`` and the ``on_bad_image`` policy).

A split is ``root/<split>/`` (a folder tree) or ``root/<split>.tar.gz`` (extracted once into the
cache directory, as ../shared/data/imagewoof-mini ships). Each sample is read as bytes and handed
to a transform from ``transforms.py`` that decodes and crops it to uint8.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .cache import cache_root, publish_dir, source_key
from .decode import BadImageError, bad_image_message, skipped_message
from .transforms import seeded_draws

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def shown(path: Path) -> str:
    """``path`` for an error message; a relative one also as the absolute path it was read as."""
    return str(path) if path.is_absolute() else f"{path} (read as {path.absolute()})"


def progress(message: str) -> None:
    """A line on stderr about slow one-time data work (extracting, decoding), where a user waits for it."""
    print(f"resnet-lit: {message}", file=sys.stderr, flush=True)


def require_path(path: Path, what: str, hint: str = "") -> Path:
    """``path`` if it exists, else a ``FileNotFoundError`` saying what was expected there."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {shown(path)} does not exist. {hint}".rstrip())
    return path


def find_archive(root: Path, split: str) -> Path | None:
    """``root/<split>.tar.gz`` (or .tgz, .tar) if present."""
    for suffix in ARCHIVE_SUFFIXES:
        p = root / f"{split}{suffix}"
        if p.is_file():
            return p
    return None


def scan_image_folder(
    split_dir: Path, *, on_bad_image: str = "error"
) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted folder names) and ``(path, label)`` samples of one split folder.

    An empty class folder is an error naming it (with ``on_bad_image="skip"``: a warning, and the
    class keeps its index so labels still line up with the other split).
    """
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"image folder {split_dir} does not exist or is not a folder: expected "
            f"{split_dir}/<class>/<image files>"
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"no class folders in {split_dir}: expected {split_dir}/<class>/<image files> "
            "(one sub-folder per class)"
        )
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames.sort()
            files += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f)]
        if not files:
            msg = (
                f"empty class folder {split_dir / cls}: it holds no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}). Add its images or remove the folder"
            )
            if on_bad_image != "skip":
                raise ValueError(msg + ".")
            log.warning("%s; on_bad_image='skip': the class is kept, with no images in this split.", msg)
        samples += [(f, label) for f in files]
    return classes, samples


def listed_image_folder(
    split_dir: Path, *, on_bad_image: str = "error", cache_dir: str | None = None
) -> tuple[list[str], list[tuple[str, int]]]:
    """``scan_image_folder``, walked by one process and read by the others: the listing is kept in the
    cache (``listings/<hash of the folder>.json``), valid while the split folder and its class folders
    keep their modification times (adding or removing an image changes its class folder's). On a
    cluster ``ImageNetDataModule.prepare_data`` writes it once per node and every rank reads it,
    instead of every rank walking all of ImageNet (1.28 M files) on a shared file system. A cache it
    cannot write to only costs the walk."""
    import hashlib
    import json

    split_dir = Path(split_dir)
    try:
        stamp = [split_dir.stat().st_mtime_ns] + sorted(
            (e.name, e.stat().st_mtime_ns) for e in os.scandir(split_dir) if e.is_dir())
    except OSError:
        return scan_image_folder(split_dir, on_bad_image=on_bad_image)  # names the missing folder
    key = hashlib.sha1(f"{split_dir.resolve()}|{on_bad_image}".encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "listings" / f"{key}.json"
    try:
        kept = json.loads(path.read_text())
        if kept["stamp"] == json.loads(json.dumps(stamp)):
            root = str(split_dir)
            return kept["classes"], [(os.path.join(root, f), label) for f, label in kept["samples"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    classes, samples = scan_image_folder(split_dir, on_bad_image=on_bad_image)
    root = str(split_dir)
    listing = {"stamp": stamp, "classes": classes,
               "samples": [(os.path.relpath(f, root), label) for f, label in samples]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(listing))
        os.replace(tmp, path)  # readers see the old file or the whole new one
    except OSError:
        pass
    return classes, samples


def check_same_classes(a: list[str], b: list[str], a_where: str, b_where: str) -> None:
    """Train and evaluation splits must name the same classes, or labels would mean different things."""
    if a == b:
        return
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    raise ValueError(
        f"class folders differ between {a_where} and {b_where}: only in {a_where}: {only_a or 'none'}; "
        f"only in {b_where}: {only_b or 'none'}. Both splits need the same class folders "
        "(create the missing ones, even if empty, or remove the extra ones)."
    )


def iter_tar_images(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """``(class_name, member_name, data)`` for each image file in a tar archive, in archive order.

    The class is the member's parent folder: ``airplane/0000.jpg`` and ``train/airplane/0000.jpg``
    both give ``airplane``. Reads the archive once, sequentially (fast for .tar.gz).
    """
    with tarfile.open(path) as tf:
        for m in tf:
            if not m.isfile() or not is_image_name(m.name):
                continue
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if len(parts) < 2:
                raise ValueError(
                    f"{path}: member {m.name} is not inside a class folder; the archive must hold "
                    "<class>/<image> entries (an ImageFolder tree)"
                )
            f = tf.extractfile(m)
            yield parts[-2], f"{path}:{m.name}", f.read() if f is not None else b""


def extract_archive(path: Path, dest: Path) -> None:
    """Extract a tar archive of an ImageFolder tree into ``dest``, refusing paths that escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tf:
        members = []
        for m in tf:
            target = os.path.normpath(os.path.join(dest, m.name))
            if not target.startswith(os.path.normpath(dest) + os.sep) and target != os.path.normpath(dest):
                raise ValueError(f"{path}: member {m.name} would extract outside {dest}; refusing this archive")
            if m.isfile() or m.isdir():
                members.append(m)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: no links out, no device files
            tf.extractall(dest, members=members, filter="data")
        else:
            tf.extractall(dest, members=members)



def resolve_split(root: Path, split: str, cache_dir: str | None) -> Path | None:
    """The folder of ``split`` under ``root``: ``root/split`` or the extracted ``root/split.tar.gz``; None if
    neither."""
    if (root / split).is_dir():
        return root / split
    archive = find_archive(root, split)
    if archive is None:
        return None
    final = cache_root(cache_dir) / f"imagefolder-{source_key(archive)}" / split
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    progress(f"extracting {archive} to {final} (once; later runs reuse it) ...")
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{split}-"))
    extract_archive(archive, tmp)
    progress(f"extracted {archive} in {time.perf_counter() - started:.0f} s")
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
            raise FileNotFoundError(
                f"predict_path {path} does not exist: give an image file, a folder of images, or a list of them"
            )
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

    An item is an index, or ``(index, seed)`` from ``samplers.SeededShardSampler`` (training): the
    transform's random draws (crop, flip: python's ``random`` and torch's global generator) then come
    from that seed alone, and the process's own streams are left as they were.

    ``bad`` is 1 when the requested file was unreadable and ``on_bad_image="skip"`` substituted the
    next readable file (so batch shapes stay static); it travels with the batch so the count
    reaches the main process from any worker, and so evaluation can leave the substitute out
    (``ImageDataModule.on_before_batch_transfer``): training learns from it, evaluation never counts it.
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

    def _read(self, i: int) -> tuple[bytes, Any, str]:
        """``(file bytes, target, name for messages)`` of sample ``i``; ``BadImageError`` when it cannot be read."""
        path = self._path(i)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise BadImageError(bad_image_message(path, f"cannot read it ({exc})")) from exc
        return data, self._target(i), path

    def _where(self) -> str:
        """Where the samples are, for the message when none near an index can be read ('' for files)."""
        return ""

    def _seeded_item(self, i: int, seed: int | None) -> tuple[Any, Any]:
        if hasattr(self.transform, "seed"):  # decode cpu|gpu: the draws happen after the batch decode
            self.transform.seed = seed
        # Read first, outside the seeded streams: only the transform's draws are the image's (a storage
        # client may draw random numbers too: boto3 does for its retries).
        data, target, name = self._read(i)
        with seeded_draws(seed):
            return self.transform(data, name), target

    def __getitem__(self, item: int | tuple[int, int]):
        i, seed = item if isinstance(item, tuple) else (item, None)
        try:
            return (*self._seeded_item(i, seed), 0)
        except BadImageError as exc:
            if self.on_bad_image != "skip":
                raise
            log.warning("%s", skipped_message(exc))
        for k in range(1, min(len(self), 100)):  # substitute the next readable image
            try:
                return (*self._seeded_item((i + k) % len(self), seed), 1)
            except BadImageError:
                continue
        raise BadImageError(f"no readable image near index {i} of {len(self)}{self._where()}: "
                            "the data set is mostly unreadable")


def default_num_workers() -> int:
    """min(8, CPUs this process may use): enough to keep one GPU fed by PIL decoding in most setups."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return min(8, cpus)
