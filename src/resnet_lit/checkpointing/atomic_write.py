"""Crash-safe checkpoint writes: temp file in the same folder, fsync, rename.

Lightning's ``TorchCheckpointIO`` writes through ``_atomic_save``: in lightning 2.4 that opens the
final path and writes into it, so a SIGKILL (preemption, OOM killer, node loss) mid-write leaves
a truncated ``last.ckpt`` that ``--ckpt_path last`` then fails to load; newer versions stage the
bytes in the system temp dir and ``shutil.move`` them, which is a copy (not atomic) when /tmp is
another filesystem, and neither fsyncs. Here the bytes go to a hidden temp file beside the target,
are fsynced, then ``os.replace``d over it (atomic on POSIX within one filesystem), and the folder
is fsynced so the rename survives a power loss. A reader therefore sees the old checkpoint or the
new one, never half of one. Remote paths (``s3://`` ...) keep Lightning's behaviour.

A write that runs out of space (a full disk or quota) leaves the previous file as it was, removes
its temp file and raises :class:`OutOfSpaceError`, which names the file; ``torch.save`` itself would
report "unexpected pos 704 vs 598" from its zip writer, with the ``OSError`` only in the chain.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

TMP_PREFIX = ".tmp-"  # hidden and not ending in .ckpt, so ModelCheckpoint's globs never match it
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full file system, an exceeded quota


class OutOfSpaceError(OSError):
    """A checkpoint write ran out of space; whatever was at ``filename`` before is untouched."""

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror, str(path))

    def __str__(self) -> str:
        path = Path(self.filename)
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there now"
        except OSError:
            free = "free space unknown"
        return (f"out of space writing {path} ({self.strerror}; {free}); the files already there are intact "
                f"(the write went to a temp file, now removed)")


def no_space_error(error: BaseException | None) -> OSError | None:
    """The out-of-space ``OSError`` in ``error``'s chain (causes and contexts), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return error
        error = error.__cause__ or error.__context__
    return None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        cause = no_space_error(error)
        if cause is not None and not isinstance(error, OutOfSpaceError):
            raise OutOfSpaceError(path, cause) from error
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for a whole new version of a small file (metrics.csv rewritten with a new
    header): written beside it, fsynced, then renamed over it, so a full disk or a kill mid-write
    leaves the old file as it was."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable (see the module docstring).

    Register it with ``Trainer(plugins=[AtomicCheckpointIO()])``; in a YAML config::

        trainer:
          plugins:
            - class_path: resnet_lit.checkpointing.atomic_write.AtomicCheckpointIO
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`. Please implement your custom `CheckpointIO`"
                " to define how you'd like to use `storage_options`."
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
