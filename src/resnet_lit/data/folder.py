"""Reading ImageFolder trees (``<split>/<class>/<image>``) and tar archives of them.

Class names are folder names, sorted, as torchvision's ``ImageFolder`` orders them. Files whose
extension is not an image extension (README.txt, .DS_Store) are ignored; files with an image
extension that do not decode are bad images (see ``decode.py`` and the ``on_bad_image`` policy).
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def shown(path: Path) -> str:
    """``path`` for an error message; a relative one also as the absolute path it was read as."""
    return str(path) if path.is_absolute() else f"{path} (read as {path.absolute()})"


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
