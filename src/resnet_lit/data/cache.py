"""Where decoded data sets and extracted archives are kept between runs.

The cache directory is ``cache_dir`` if given, else ``$RESNET_LIT_CACHE``, else
``~/.cache/resnet_lit``. Entries are keyed by the source's resolved path, size and modification
time, so editing or replacing the data invalidates them. Writes go to a temporary name first and
are renamed into place, so concurrent DDP processes and interrupted runs never leave a half file.
Tensors are stored with ``torch.save`` and read with ``weights_only=True`` (no arbitrary unpickling).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RESNET_LIT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "resnet_lit"


def source_key(*paths: str | os.PathLike, extra: str = "") -> str:
    """A short hash of the paths' resolved names, sizes and mtimes (directories: of their files)."""
    h = hashlib.sha1(extra.encode())
    for path in paths:
        p = Path(path).resolve()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        h.update(str(p).encode())
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(p) if f != p else ''}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def save_tensors(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_tensors(path: Path) -> dict | None:
    """The cached dict, or None when absent or unreadable (then the caller rebuilds it)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a stale or foreign file: rebuild rather than fail
        return None


def publish_dir(tmp: Path, final: Path) -> Path:
    """Rename a fully written temporary folder into place; if another process won the race, keep its copy."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final
