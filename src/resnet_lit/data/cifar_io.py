"""CIFAR-10/100 from disk into uint8 tensors, decoded once and cached.

Three source forms under ``root`` (detected in this order):

* torchvision's pickled batches: ``root/cifar-10-batches-py`` or ``root/cifar-100-python``
  (or ``root`` being that folder);
* ``root/train.tar.gz`` and ``root/test.tar.gz``, archives of ImageFolder trees
  (``airplane/0000.jpg`` ...), the form in ``../shared/data/cifar10-jpeg``;
* an ImageFolder tree ``root/train/<class>/*`` and ``root/test/<class>/*`` (PNG or JPEG).

The result is a dict of plain tensors and strings (``train_x`` uint8 [N, 3, 32, 32], ``train_y``
int64 [N], ``test_x``, ``test_y``, ``classes``, ``skipped``), saved with ``torch.save`` under the
cache directory and read back with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .cache import cache_root, load_tensors, save_tensors, source_key
from .decode import BadImageError, bad_image_message, decode_rgb, skipped_message
from .folder import check_same_classes, find_archive, iter_tar_images, progress, scan_image_folder, shown

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PICKLE_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CACHE_VERSION = "cifar-v1"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only: the CIFAR batch files need nothing
    else, and refusing other globals keeps a tampered file from running code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of the CIFAR format")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = _ArrayUnpickler(f, encoding="latin1").load()
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _pickle_dir(root: Path) -> tuple[str, Path] | None:
    for name, sub in PICKLE_DIRS.items():
        if (root / sub).is_dir():
            return name, root / sub
        if root.name == sub and root.is_dir():
            return name, root
    if (root / "data_batch_1").is_file():
        return "cifar10", root
    if (root / "train").is_file() and (root / "meta").is_file():
        return "cifar100", root
    return None


def detect_source(root: Path) -> tuple[str, list[Path]]:
    """``(kind, paths)`` with kind in pickle10 / pickle100 / archive / folder; a clear error if none."""
    if not root.exists():
        raise FileNotFoundError(
            f"CIFAR root {shown(root)} does not exist. Point root at a folder holding cifar-10-batches-py/ "
            "(or cifar-100-python/), train.tar.gz + test.tar.gz, or train/<class>/ + test/<class>/; "
            "or fetch it with `--data.download true` (download=True in Python) on a machine with internet access."
        )
    found = _pickle_dir(root)
    if found is not None:
        kind, d = found
        files = [d / f"data_batch_{i}" for i in range(1, 6)] + [d / "test_batch", d / "batches.meta"]
        if kind == "cifar100":
            files = [d / "train", d / "test", d / "meta"]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"CIFAR pickle file {f} is missing; re-download the data set into {d.parent}")
        return ("pickle10" if kind == "cifar10" else "pickle100"), files
    train_ar, test_ar = find_archive(root, "train"), find_archive(root, "test")
    if train_ar and test_ar:
        return "archive", [train_ar, test_ar]
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder", [root / "train", root / "test"]
    raise FileNotFoundError(
        f"no CIFAR data found in {root}: expected cifar-10-batches-py/ or cifar-100-python/ "
        "(torchvision's format), train.tar.gz + test.tar.gz, or train/<class>/ + test/<class>/ folders"
        + (f" (found {train_ar or test_ar} without its partner)" if (train_ar or test_ar) else "")
        + ". Fetch CIFAR with torchvision when online: `--data.download true` (download=True in Python)."
    )


def _read_pickles(kind: str, files: list[Path]) -> dict:
    def arrays(ds: list[dict], key: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.concatenate([np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for d in ds])
        y = np.concatenate([np.asarray(d[key], dtype=np.int64) for d in ds])
        return torch.from_numpy(x.copy()), torch.from_numpy(y)

    if kind == "pickle10":
        *train_files, test_file, meta_file = files
        key, classes = "labels", list(_unpickle(meta_file)["label_names"])
        train, test = [_unpickle(f) for f in train_files], [_unpickle(test_file)]
    else:
        train_file, test_file, meta_file = files
        key, classes = "fine_labels", list(_unpickle(meta_file)["fine_label_names"])
        train, test = [_unpickle(train_file)], [_unpickle(test_file)]
    train_x, train_y = arrays(train, key)
    test_x, test_y = arrays(test, key)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "classes": classes,
            "skipped": 0}


def _decode_all(items, on_bad_image: str, source: object = "", every_s: float = 10.0
                ) -> tuple[list[torch.Tensor], list[str], int]:
    """Decode ``(class, name, bytes)`` items to [3, 32, 32]; bad files raise or are skipped and counted.
    A line every ``every_s`` seconds says how far the decoding of ``source`` is (done once, then cached)."""
    images, labels, skipped = [], [], 0
    started = last = time.perf_counter()
    for cls, name, data in items:
        if time.perf_counter() - last >= every_s:
            last = time.perf_counter()
            progress(f"decoding {source}: {len(images):,} images so far ({last - started:.0f} s; once, then cached)")
        try:
            x = decode_rgb(data, name)
            if x.shape[-2:] != (32, 32):
                raise BadImageError(bad_image_message(name, f"it is {x.shape[2]}x{x.shape[1]}, CIFAR images are 32x32"))
        except BadImageError as exc:
            if on_bad_image != "skip":
                raise
            log.warning("%s", skipped_message(exc))
            skipped += 1
            continue
        images.append(x)
        labels.append(cls)
    return images, labels, skipped


def _folder_items(split_dir: Path, on_bad_image: str):
    classes, samples = scan_image_folder(split_dir, on_bad_image=on_bad_image)
    for path, label in samples:
        with open(path, "rb") as f:
            yield classes[label], path, f.read()


def _read_images(kind: str, files: list[Path], on_bad_image: str) -> dict:
    splits = {}
    for split, src in zip(("train", "test"), files):
        items = iter_tar_images(src) if kind == "archive" else _folder_items(src, on_bad_image)
        images, names, skipped = _decode_all(items, on_bad_image, src)
        if not images:
            raise ValueError(f"{src} holds no readable images")
        splits[split] = (images, names, skipped, sorted(set(names)))
    check_same_classes(splits["train"][3], splits["test"][3], str(files[0]), str(files[1]))
    classes = splits["train"][3]
    if kind == "folder":  # folders give classes even when empty: keep their order
        classes = scan_image_folder(files[0], on_bad_image=on_bad_image)[0]
    index = {c: i for i, c in enumerate(classes)}
    out: dict = {"classes": classes, "skipped": 0}
    for split, (images, names, skipped, _) in splits.items():
        out[f"{split}_x"] = torch.stack(images)
        out[f"{split}_y"] = torch.tensor([index[n] for n in names], dtype=torch.int64)
        out["skipped"] += skipped
    return out


def load_cifar(root: str | os.PathLike, *, cache_dir: str | None = None, on_bad_image: str = "error") -> dict:
    """All of CIFAR under ``root`` as uint8 tensors, from the cache when the source is unchanged."""
    root = Path(root).expanduser()
    kind, files = detect_source(root)
    if kind.startswith("pickle"):
        return _read_pickles(kind, files)  # already arrays: reading them is as fast as a cache
    key = source_key(*files, extra=f"{CACHE_VERSION}:{on_bad_image}")
    path = cache_root(cache_dir) / f"cifar-{key}.pt"
    cached = load_tensors(path)
    if cached is not None:
        log.info("CIFAR: loaded decoded images from cache %s", path)
        return cached
    started = time.perf_counter()
    progress(f"decoding the CIFAR images of {root} (once; cached in {path}) ...")
    data = _read_images(kind, files, on_bad_image)
    save_tensors(data, path)
    progress(f"decoded {len(data['train_y']) + len(data['test_y']):,} images in {time.perf_counter() - started:.0f} s")
    return data


def class_names(root: str | os.PathLike) -> list[str] | None:
    """The class names in label order from torchvision's pickles' meta file, without reading the images;
    None for archives and folders (their names come with the decoded data, which checks them)."""
    kind, files = detect_source(Path(root).expanduser())
    if kind == "pickle10":
        return [str(c) for c in _unpickle(files[-1])["label_names"]]
    if kind == "pickle100":
        return [str(c) for c in _unpickle(files[-1])["fine_label_names"]]
    return None


class DownloadError(RuntimeError):
    """CIFAR could not be downloaded: one line naming the URL and the folder, and what to do instead."""


def ensure_downloaded(root: str | os.PathLike, dataset: str) -> None:
    """Download ``dataset`` into ``root`` unless data is there, once however many processes ask: they
    take turns on a lock file in ``root``, and the ones after the first find the data. A failed or
    interrupted download leaves nothing behind: no partial file, no lock file, no empty folder."""
    import fcntl

    root = Path(root).expanduser()
    created = [p for p in (root, *root.parents) if not p.exists()]  # deepest first: removed in this order
    root.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(root))
    try:
        with open(root / ".resnet_lit-download.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not _has_data(root):
                download_cifar(root, dataset)
    except BaseException:
        for name in set(os.listdir(root)) - before:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty: another process put something there
                break
        raise


def _has_data(root: Path) -> bool:
    try:
        detect_source(root)
    except FileNotFoundError:
        return False
    return True


def download_cifar(root: str | os.PathLike, dataset: str) -> None:
    """Fetch torchvision's pickled CIFAR into ``root``; ``DownloadError`` (one line) when that fails."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # URLError, socket errors, checksum failures
        reason = " ".join(str(getattr(exc, "reason", exc)).split()) or type(exc).__name__
        raise DownloadError(
            f"could not download {dataset} from {cls.url} into {root} ({type(exc).__name__}: {reason}). "
            f"Without internet access here, download {cls.url} on another machine and unpack it into {root} "
            f"(it holds {PICKLE_DIRS[dataset]}/), or put train.tar.gz + test.tar.gz of class folders there "
            "(the layout of ../shared/data/cifar10-jpeg, docs/data.md); then run without --data.download."
        ) from None
