"""Small ImageFolder trees of real photographs, and the bad files the bad-data tests put in them
(tests/test_data_bad.py: the PIL path; tests/test_data_decode.py: the batch decode)."""

from __future__ import annotations

from pathlib import Path


def write_tree(root: Path, jpegs: list[bytes], classes=("a", "b"), per_class: int = 3, splits=("train", "val")) -> Path:
    """``root/<split>/<class>/<i>.JPEG``, cycling through ``jpegs``."""
    k = 0
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (root / split / c / f"{i}.JPEG").write_bytes(jpegs[k % len(jpegs)])
                k += 1
    return root


def bad_files(jpeg: bytes) -> dict[str, bytes]:
    """Four ways a file is not a readable JPEG: the first and last fail at the batch decode, the middle
    two (no bytes, not an image) already in the worker."""
    corrupt = bytearray(jpeg)
    corrupt[20:400] = bytes(380)  # header kept, tables and scan start zeroed
    return {
        "truncated.JPEG": jpeg[: len(jpeg) // 2],
        "zero.JPEG": b"",
        "notes.JPEG": b"this is a text file, not an image\n" * 20,
        "corrupt.JPEG": bytes(corrupt),
    }
