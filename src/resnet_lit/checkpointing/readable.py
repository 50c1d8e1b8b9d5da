"""Why a checkpoint or weights file cannot be read: one line that names the file and what to do.

``torch.load`` reports a file cut short (a copy that stopped, a full disk) as "PytorchStreamReader
failed reading zip archive: failed finding central directory", an empty file as an ``EOFError``
without a message, and a text file as a ``KeyError: 101``; none names the file. ``unreadable``
turns those into a ``CheckpointFileError`` saying which file and what is wrong with it, from the
file's own first bytes: ``torch.save`` writes a zip archive (a pickle in older torch), safetensors
an 8-byte header length and a JSON header.
"""

from __future__ import annotations

import pathlib
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

_ZIP = b"PK\x03\x04"
_PICKLE = b"\x80"  # a pickle's PROTO opcode: torch.save's format before torch 1.6
# Harmless classes that Lightning hyperparameters may contain (a path is rebuilt from a string).
_SAFE_GLOBALS = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
ADVICE = "Use an intact copy: copy the file again, or take another checkpoint of the run (checkpoints/best-*.ckpt)."


class CheckpointFileError(ValueError):
    """A checkpoint or weights file that cannot be used: empty, cut short, not a checkpoint, or written
    by a newer resnet-lit. The message is one line that names the file and what to do."""


class UnsafeCheckpointError(ValueError):
    """The file is a pickle that would import or call arbitrary objects when loaded."""


def safe_torch_load(path: str | Path) -> Any:
    """`torch.load` restricted to tensors and plain containers, memory-mapped where the format allows.
    `CheckpointFileError` when the file is empty, cut short or not a torch file at all."""
    path = Path(path)
    empty = empty_file_error(path)
    if empty is not None:
        raise empty
    safe = getattr(torch.serialization, "safe_globals", None)

    def load(mmap: bool) -> Any:
        kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": True}
        if mmap:
            kwargs["mmap"] = True
        if safe is None:  # torch < 2.5: no context manager; the allow-list is then simply not used
            return torch.load(path, **kwargs)
        with safe(_SAFE_GLOBALS):
            return torch.load(path, **kwargs)

    try:
        try:
            return load(mmap=True)
        except RuntimeError as e:
            # mmap needs the zip format (torch >= 1.6 default); legacy files load without it.
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            return load(mmap=False)
    except Exception as e:  # noqa: BLE001 - garbage makes the unpickler fail in any way (KeyError, IndexError...)
        if not isinstance(e, pickle.UnpicklingError) or not (is_torch_zip(path) or "GLOBAL" in str(e)):
            if is_torch_zip(path):
                raise  # a whole torch file that fails for another reason: torch's own message
            raise unreadable(path, e) from None
        first = str(e).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        detail = detail.split(". Please use", 1)[0]  # not torch's advice to allow-list what the file asks for
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it is a pickle that needs more than tensors and plain containers to be "
            f"read ({detail.strip()}). Unpickling such a file can run arbitrary code, so resnet-lit only loads "
            f"with torch.load(weights_only=True). If you trust the file and its author, convert it once to a "
            f"plain state dict, e.g.\n"
            f"  python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
            f"sd = c.get('state_dict', c) if isinstance(c, dict) else c.state_dict(); "
            f"torch.save({{k: v for k, v in sd.items() if hasattr(v, 'shape')}}, '{path.with_suffix('.clean.pt')}')\"\n"
            f"and pass the new file (or export it to .safetensors)."
        ) from None


def empty_file_error(path: Path) -> CheckpointFileError | None:
    """The error for an empty file, or None; checked before reading (memory-mapping fails on 0 bytes)."""
    if path.is_file() and path.stat().st_size == 0:
        return CheckpointFileError(f"{path} is empty (0 bytes): a copy or a save that did not finish. {ADVICE}")
    return None


def is_torch_zip(path: Path) -> bool:
    """A complete zip archive as ``torch.save`` writes it (``<name>/data.pkl`` inside)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def unreadable(path: Path, error: BaseException) -> CheckpointFileError:
    """The one-line error for a file that ``torch.load`` (or safetensors) failed to read with ``error``."""
    empty = empty_file_error(path)
    if empty is not None:
        return empty
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    reason = _first_sentence(error)
    if head.startswith(_ZIP):
        if zipfile.is_zipfile(path) and not is_torch_zip(path):
            what = "is a zip archive but not a PyTorch checkpoint (no data.pkl inside)"
        else:
            what = f"is cut short or damaged ({size} bytes; {reason})"
    elif head.startswith(_PICKLE):
        what = f"is cut short or damaged ({size} bytes, an old-format torch file; {reason})"
    elif path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        what = f"is not a readable safetensors file ({size} bytes; {reason})"
    else:
        what = f"is not a PyTorch checkpoint or weights file (it begins with {head[:12]!r})"
    return CheckpointFileError(f"{path} {what}. {ADVICE}")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_len < size


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text.split(". ", 1)[0].split(" This is an internal", 1)[0].rstrip(".")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
