"""Convert an ImageFolder tree (or its train.tar.gz / val.tar.gz) into LitData shards (``resnet-lit shards``).

    resnet-lit shards /data/imagenet /data/imagenet-shards                  # JPEG bytes kept as they are
    resnet-lit shards /data/imagenet /data/imagenet-512 --max_side 512      # resized once, JPEG quality 90
    resnet-lit fit --config configs/r50.yaml --config configs/data/imagenet_shards.yaml \
        --data.shards /data/imagenet-shards

Each split (``SRC/train/<class>/*`` or ``SRC/train.tar.gz``, extracted once into the cache) is first
listed and checked (every image decoded at 1/8 size in ``--workers`` threads: a bad image stops the
conversion with its path, or with ``--on_bad_image skip`` is left out and listed), then written by
``litdata.optimize`` in ``--workers`` processes into ``OUT/.<split>.partial/``, read back in full (count,
order, label and path of every sample against the source), renamed to ``OUT/<split>/`` and only then
entered in ``OUT/resnet_lit_shards.json`` (the classes, the counts per class, the images left out).
Resuming is per split: a rerun skips the splits the JSON lists and converts the others from the
start; nothing of an interrupted split is ever read as data.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from resnet_lit.data.decode import BadImageError, bad_image_message, skipped_message
from resnet_lit.data.folder import check_same_classes, progress, resolve_split, scan_files, scan_image_folder
from resnet_lit.data.litdata_source import FORMAT, FORMAT_VERSION, META_NAME, ShardImages, require_litdata, write_meta
from resnet_lit.runs.exit_codes import OK, USAGE

JPEG_QUALITY = 90  # FFCV's default for its resized JPEGs


class ConvertSample:
    """What ``litdata.optimize`` calls for sample ``k``: the file's bytes (resized with ``max_side``), label, path."""

    def __init__(self, split_dir: str, samples: list[tuple[str, int]], max_side: int | None, quality: int) -> None:
        self.split_dir, self.samples, self.max_side, self.quality = split_dir, samples, max_side, quality

    def __call__(self, k: int) -> dict[str, Any]:
        path, label = self.samples[k]
        with open(path, "rb") as f:
            data = f.read()
        if self.max_side is not None:
            data = shrink(data, path, self.max_side, self.quality)
        rel = os.path.relpath(path, self.split_dir).replace(os.sep, "/")
        return {"image": data, "label": label, "path": rel.encode()}


def shrink(data: bytes, name: str, max_side: int, quality: int) -> bytes:
    """``data`` with its longer side at most ``max_side`` (aspect kept; re-encoded as JPEG ``quality``),
    or unchanged when it is already that small."""
    from PIL import Image

    from resnet_lit.data.decode import open_image

    img = open_image(data, name, load=False)
    if max(img.size) <= max_side:
        return data
    try:
        img.draft("RGB", (max_side, max_side))  # DCT-domain downscaling first, for JPEG: never below max_side
        img = img.convert("RGB")
        w, h = img.size
        s = max_side / max(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    except Exception as exc:
        raise BadImageError(bad_image_message(name, f"{type(exc).__name__}: {exc}")) from exc
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def check_split(out_dir: Path, samples: list[tuple[str, int]], split_dir: Path, resized: bool) -> Counter:
    """Read every sample of the written split back: count, order, label and path against the source."""
    ds = ShardImages(str(out_dir.parent), out_dir.name, lambda data, name: data)
    if len(ds.reader) != len(samples):
        raise RuntimeError(f"{out_dir}: {len(ds.reader)} samples written, {len(samples)} in the source {split_dir}")
    counts: Counter = Counter()
    for i, (path, label) in enumerate(samples):
        data, got_label, name = ds.sample(i)
        rel = os.path.relpath(path, split_dir).replace(os.sep, "/")
        if not name.endswith(":" + rel) or got_label != label:
            raise RuntimeError(f"{out_dir}: sample {i} is {name} label {got_label}; the source has {rel} label {label}")
        if not data or (not resized and len(data) != os.path.getsize(path)):
            raise RuntimeError(f"{out_dir}: sample {i} ({rel}) holds {len(data)} bytes; the source file differs")
        counts[label] += 1
    return counts


def convert_split(src: Path, out: Path, split: str, args: argparse.Namespace, classes: list[str] | None,
                  meta: dict[str, Any]) -> list[str] | None:
    """Convert one split; returns its classes (None when the source has no such split)."""
    split_dir = resolve_split(src, split, args.cache_dir)
    if split_dir is None:
        return None
    found, samples = scan_image_folder(split_dir, on_bad_image=args.on_bad_image)
    if classes is not None:
        check_same_classes(classes, found, f"{src} (first split)", f"{src}/{split}")
    progress(f"{split}: checking {len(samples)} images of {split_dir} ({args.workers} threads) ...")
    bad = scan_files([p for p, _ in samples], args.workers)
    if bad and args.on_bad_image != "skip":
        raise BadImageError(f"{len(bad)} unreadable image(s) in {split_dir}; the first: {bad[0][1]} "
                            "(resnet-lit shards: --on_bad_image skip leaves them out and lists them)")
    skipped = [samples[i][0] for i, _ in bad]
    for _, msg in bad:
        progress(skipped_message(BadImageError(msg)))
    drop = {i for i, _ in bad}
    samples = [s for i, s in enumerate(samples) if i not in drop]
    if not samples:
        raise ValueError(f"{split_dir}: no readable images to convert")

    partial, final = out / f".{split}.partial", out / split
    for stale in (partial, final):  # an interrupted earlier attempt: start this split again
        shutil.rmtree(stale, ignore_errors=True)
    litdata = require_litdata()
    started = time.perf_counter()
    progress(f"{split}: writing {len(samples)} samples with {args.workers} process(es) ...")
    litdata.optimize(
        fn=ConvertSample(str(split_dir), samples, args.max_side, args.quality),
        inputs=list(range(len(samples))),  # indices, not paths: LitData would copy path inputs to a cache first
        output_dir=str(partial),
        chunk_bytes=args.chunk_bytes,
        num_workers=args.workers,
        reorder_files=False,
        keep_data_ordered=True,  # contiguous slices per worker: sample i is the source's image i
        start_method="fork" if sys.platform == "linux" else None,  # spawn costs ~15 s of imports per worker
        verbose=False,  # LitData's progress bars (escape codes in a log) and its cloud banner: our lines say it
    )
    progress(f"{split}: wrote {len(samples)} samples in {time.perf_counter() - started:.0f} s; reading them back ...")
    counts = check_split(partial, samples, split_dir, resized=args.max_side is not None)
    source = Counter(label for _, label in samples)
    if counts != source:
        raise RuntimeError(f"{partial}: images per class {dict(counts)} differ from the source's {dict(source)}")
    os.replace(partial, final)
    meta["splits"][split] = {
        "images": len(samples), "per_class": [counts.get(i, 0) for i in range(len(found))],
        "skipped": [os.path.relpath(p, split_dir) for p in skipped], "source": str(split_dir),
        "max_side": args.max_side, "jpeg_quality": args.quality if args.max_side else None,
    }
    meta["classes"] = meta["classes"] or found
    write_meta(out, meta)
    progress(f"{split}: {len(samples)} images, {len(found)} classes, checked -> {final}"
             + (f"; {len(skipped)} unreadable left out (listed in {out / META_NAME})" if skipped else ""))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="resnet-lit shards", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("src", type=Path, help="folder with train/ and val/ class folders, or train.tar.gz / val.tar.gz")
    p.add_argument("out", type=Path, help="output folder (local; copy it to object storage afterwards if wanted)")
    p.add_argument("--splits", default="train,val", help="comma-separated split names (default: train,val)")
    p.add_argument("--max_side", type=int, default=None,
                   help=f"resize images whose longer side exceeds N to N (aspect kept; JPEG quality {JPEG_QUALITY}); "
                        "default: keep the original bytes")
    p.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality of --max_side's re-encoded images")
    p.add_argument("--workers", type=int, default=_cpus(),
                   help="processes writing shards, threads checking images (default: the CPUs)")
    p.add_argument("--chunk_bytes", default="64MB", help="bytes per chunk file (LitData's chunk_bytes; default 64MB)")
    p.add_argument("--on_bad_image", choices=["error", "skip"], default="error")
    p.add_argument("--cache_dir", default=None, help="where a .tar.gz source is extracted (default: the cache)")
    args = p.parse_args(argv)
    if args.max_side is not None and args.max_side < 16:
        p.error(f"--max_side {args.max_side}: give the longer side in pixels, >= 16 (e.g. 512)")
    if not args.src.is_dir():
        p.error(f"{args.src} is not a folder: give the folder holding train/ and val/ (or train.tar.gz / val.tar.gz)")
    try:
        require_litdata()
        args.out.mkdir(parents=True, exist_ok=True)
        meta_path = args.out / META_NAME
        meta = _load_meta(meta_path) or {"format": FORMAT, "version": FORMAT_VERSION, "classes": None, "splits": {}}
        classes = meta["classes"]
        converted = 0
        for split in [s for s in args.splits.split(",") if s]:
            if split in meta["splits"] and (args.out / split / "index.json").is_file():
                progress(f"{split}: already converted in {args.out / split} (listed in {META_NAME}); skipped")
                converted += 1
                continue
            found = convert_split(args.src, args.out, split, args, classes, meta)
            if found is None:
                progress(f"{split}: no {args.src}/{split}/ folder or {split}.tar.gz; skipped")
                continue
            converted += 1
            classes = meta["classes"]
        if not converted:
            p.error(f"none of the splits {args.splits} is in {args.src} (as a folder or .tar.gz)")
    except (BadImageError, FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        print(f"resnet-lit shards: {exc}", file=sys.stderr)
        return USAGE  # a missing source, a bad image, no litdata: the input, not a run
    print(f"shards of {args.src} in {args.out}: " + ", ".join(
        f"{s} {v['images']} images" for s, v in meta["splits"].items()) + f", {len(classes)} classes")
    return OK


def _load_meta(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    from resnet_lit.data.litdata_source import read_meta

    return read_meta(str(path.parent))


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
