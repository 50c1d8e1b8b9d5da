"""Reading ImageFolder data converted to LitData's chunked format (``resnet-lit shards``).

A shards location (a local folder, or a URL LitData reads: ``s3://bucket/imagenet``, ``gs://``...)
holds one LitData data set per split, ``<location>/train/`` and ``<location>/val/`` (``index.json``
plus ``chunk-*.bin`` files of ~64 MB), and ``resnet_lit_shards.json`` beside them: the class names,
and per split the image count, the count per class and the images left out at conversion. A split
is complete only once the converter has listed it there, so an interrupted conversion is never read.

Each sample is ``{"image": the original file's bytes (or its ``--max_side`` rendition), "label":
int, "path": its path relative to the split folder, utf-8}``, in the order the folder path lists
them (class folders sorted, files sorted): sample i of a split is the folder path's image i, so the
same ``ShardSampler`` permutation trains on the same images in the same order.

Samples are read by index (``StreamingDataset.__getitem__``) under the project's own
``ShardSampler`` / ``ResumableLoader`` (data/samplers.py), not through LitData's own
shuffling, distributed split and loader state, because those do not give exact evaluation counts
or exact mid-epoch resume (measured: docs/data.md, "Shards"). Chunks are memory-mapped in place
for a local folder; for a URL, LitData (0.2.76) keeps only ``index.json`` in ``cache_dir`` and reads
each sample with two HTTP range requests, every epoch (counted: docs/data.md, "Object storage").
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .folder import ImageFiles

META_NAME = "resnet_lit_shards.json"
FORMAT = "resnet-lit-shards"
FORMAT_VERSION = 1
INSTALL_HINT = "pip install 'resnet-lit[shards]'"


def require_litdata() -> Any:
    """The ``litdata`` module, or an ImportError in one line saying how to install it."""
    try:
        import litdata
    except ImportError as exc:
        raise ImportError(f"reading or writing ImageNet shards needs LitData: {INSTALL_HINT} "
                          f"(or pip install litdata); import failed: {exc}") from None
    return litdata


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts]) if is_url(location) else str(Path(location, *parts))


def read_meta(location: str, cache_dir: str | None = None) -> dict[str, Any]:
    """``resnet_lit_shards.json`` of a shards location (downloaded first for a URL)."""
    path = join(location, META_NAME)
    if is_url(location):
        require_litdata()
        from litdata.streaming.fs_provider import _get_fs_provider

        local = Path(cache_dir or tempfile.gettempdir()).expanduser() / f"resnet_lit_shards_meta_{os.getpid()}.json"
        local.parent.mkdir(parents=True, exist_ok=True)  # a cache_dir not made yet (a first run)
        try:
            _get_fs_provider(path).download_file(path, str(local))
        except Exception as exc:
            raise FileNotFoundError(f"cannot read {path} ({type(exc).__name__}: {exc}): is {location} the "
                                    "output folder of `resnet-lit shards`, and are its credentials set?") from exc
        text = local.read_text()
        local.unlink(missing_ok=True)
    else:
        if not Path(location).expanduser().is_dir():
            raise FileNotFoundError(f"shards location {location} does not exist: give the OUT folder of "
                                    "`resnet-lit shards SRC OUT` (or an s3://... URL of one)")
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{location} holds no {META_NAME}: it is not the output of `resnet-lit shards`, "
                                    "or its conversion never finished a split (run it again: it resumes)")
        text = p.read_text()
    meta = json.loads(text)
    if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; this resnet-lit "
                         f"reads {FORMAT!r} up to version {FORMAT_VERSION} (convert again, or upgrade resnet-lit)")
    return meta


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    """Write ``resnet_lit_shards.json`` atomically (a temporary name, then a rename)."""
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{META_NAME}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, out / META_NAME)


def as_bytes(value: Any) -> bytes:
    """LitData hands ``bytes`` fields back as memoryviews into the chunk: a copy that outlives it."""
    return bytes(value)


def _open_streaming_dataset(url: str, cache_dir: str | None, wait_s: float = 60.0) -> Any:
    """``litdata.StreamingDataset`` of one split, read one item at a time (``batch_decode=0``: the default
    decodes a window of 256 items around each read, for streaming).

    For a URL, LitData fetches ``index.json`` into a cache directory that every rank and DataLoader worker
    of a node shares, and a process that starts while another is still setting that directory up can find
    it without the index and fail ("doesn't contain any index.json"; seen once in the full test suite under
    load, two workers starting together). ``ShardImages`` opens a URL in the main process first, so its
    workers find the index in place; ranks starting together still can race, so such a start is tried
    again until ``wait_s`` has passed."""
    litdata = require_litdata()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return litdata.StreamingDataset(url, cache_dir=cache_dir, batch_decode=0)
        except ValueError as exc:
            if not is_url(url) or "index.json" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class ShardImages(ImageFiles):
    """``(uint8 image(s), label, bad)`` per sample of one split of a shards location, read by index.

    ``folder.ImageFiles`` with the bytes, label and name read from LitData's chunks instead of a file:
    the same ``transform(bytes, name)``, the same ``(index, seed)`` items from ``SeededShardSampler``, the
    same stand-in for an unreadable sample with ``on_bad_image="skip"``. LitData's reader is opened
    lazily in each process that reads (each DataLoader worker its own).
    """

    def __init__(self, location: str, split: str, transform: Callable[[bytes, str], Any], on_bad_image: str = "error",
                 cache_dir: str | None = None, length: int | None = None) -> None:
        super().__init__([], transform, on_bad_image)
        self.location, self.split = location, split
        self.cache_dir = cache_dir
        self._reader: Any = None
        self._pid: int | None = None
        if is_url(location):  # fetch index.json into cache_dir now, in the main process, before any worker
            _ = self.reader
        self._len = length if length is not None else len(self.reader)

    @property
    def reader(self) -> Any:
        if self._reader is None or self._pid != os.getpid():  # one per process: never a forked parent's handles
            self._reader = _open_streaming_dataset(join(self.location, self.split), self.cache_dir)
            self._pid = os.getpid()
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None, "_pid": None}

    def __len__(self) -> int:
        return self._len

    def sample(self, i: int) -> tuple[bytes, int, str]:
        """``(image bytes, label, name)``; name: ``<location>/<split>:<relative path>`` for messages."""
        item = self.reader[i]
        return as_bytes(item["image"]), int(item["label"]), f"{join(self.location, self.split)}:" + \
            as_bytes(item["path"]).decode()

    _read = sample  # ImageFiles reads a sample through this

    def _where(self) -> str:
        return f" in {join(self.location, self.split)}"


class ShardSource:
    """A shards location: its classes and, per split, a ``ShardImages`` (what ImageNetDataModule reads)."""

    def __init__(self, location: str, cache_dir: str | None = None) -> None:
        require_litdata()
        self.location = location if is_url(location) else str(Path(location).expanduser())
        self.cache_dir = cache_dir
        self.meta = read_meta(self.location, cache_dir)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def has_split(self, split: str) -> bool:
        return split in self.meta.get("splits", {})

    def dataset(self, split: str, transform: Callable[[bytes, str], Any], on_bad_image: str = "error") -> ShardImages:
        if not self.has_split(split):
            done = ", ".join(self.meta.get("splits", {})) or "none"
            raise FileNotFoundError(f"no finished '{split}' split in the shards at {self.location} (finished: {done}); "
                                    f"convert it with `resnet-lit shards SRC {self.location} --splits {split}`")
        n = int(self.meta["splits"][split]["images"])
        ds = ShardImages(self.location, split, transform, on_bad_image, self.cache_dir, length=n)
        return ds
