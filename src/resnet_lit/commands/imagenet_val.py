"""Sort ILSVRC-2012's flat validation folder into class folders (``resnet-lit imagenet-val``).

The 50,000 validation images ship as one flat folder (``ILSVRC2012_val_00000001.JPEG`` ...);
their labels are in the devkit: ``data/ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID
per line, in file order) and ``data/meta.mat`` (ILSVRC2012_ID -> WordNet id). Reading meta.mat
needs scipy (as torchvision's ImageNet does); without it, pass ``--synsets`` (a text file of the
1000 WordNet ids in ILSVRC2012_ID order) or ``--labels`` (Kaggle's ``LOC_val_solution.csv``, or
lines of ``<file> <wnid>``).

    resnet-lit imagenet-val /data/imagenet/val --devkit ILSVRC2012_devkit_t12.tar.gz
    resnet-lit imagenet-val /data/imagenet/val --labels LOC_val_solution.csv --mode symlink --out /data/in/val
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from resnet_lit.runs.exit_codes import OK


def _devkit_data(devkit: Path, tmp: str) -> Path:
    """The devkit's ``data/`` folder, extracting a .tar.gz devkit into ``tmp`` first."""
    if devkit.is_file():
        with tarfile.open(devkit) as tf:
            members = [m for m in tf if m.name.endswith(("validation_ground_truth.txt", "meta.mat"))]
            tf.extractall(tmp, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        devkit = Path(tmp)
    hits = list(devkit.rglob("ILSVRC2012_validation_ground_truth.txt"))
    if not hits:
        raise FileNotFoundError(
            f"{devkit} holds no ILSVRC2012_validation_ground_truth.txt: is it the ILSVRC2012 devkit?"
        )
    return hits[0].parent


def _wnids_from_meta(meta: Path) -> list[str]:
    try:
        from scipy import io as sio
    except ImportError as exc:
        raise RuntimeError(
            f"reading {meta} needs scipy (pip install scipy), or pass --synsets FILE with the 1000 "
            "WordNet ids in ILSVRC2012_ID order, or --labels LOC_val_solution.csv"
        ) from exc
    synsets = sio.loadmat(str(meta), squeeze_me=True)["synsets"]
    ids = {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}  # ILSVRC2012_ID, WNID; leaves only
    return [ids[i] for i in sorted(ids)]


def labels_from_devkit(devkit: Path, synsets: Path | None = None) -> dict[str, str]:
    """``{file name: wnid}`` for the 50,000 validation images from the devkit."""
    with tempfile.TemporaryDirectory() as tmp:
        data = _devkit_data(devkit, tmp)
        gt = [int(line) for line in (data / "ILSVRC2012_validation_ground_truth.txt").read_text().split()]
        if synsets is not None:
            wnids = synsets.read_text().split()
        else:
            wnids = _wnids_from_meta(data / "meta.mat")
    if max(gt) > len(wnids):
        raise ValueError(f"ground truth names class {max(gt)} but only {len(wnids)} WordNet ids are known")
    return {f"ILSVRC2012_val_{i:08d}.JPEG": wnids[c - 1] for i, c in enumerate(gt, start=1)}


def labels_from_file(path: Path) -> dict[str, str]:
    """``{file name: wnid}`` from Kaggle's LOC_val_solution.csv or ``<file> <wnid>`` lines."""
    out: dict[str, str] = {}
    with open(path, newline="") as f:
        if path.suffix == ".csv":
            for row in csv.DictReader(f):
                out[f"{row['ImageId']}.JPEG"] = row["PredictionString"].split()[0]
        else:
            for line in f:
                if line.strip():
                    name, wnid = line.split()[:2]
                    out[Path(name).name] = wnid
    if not out:
        raise ValueError(f"{path} holds no labels")
    return out


def sort_val(val_dir: Path, labels: dict[str, str], out: Path | None = None, mode: str = "move") -> int:
    """Put every labelled image of ``val_dir`` into ``<out or val_dir>/<wnid>/``; returns how many."""
    out = out or val_dir
    missing = [n for n in labels if not (val_dir / n).is_file()]
    if len(missing) == len(labels):
        raise FileNotFoundError(f"none of the labelled images is in {val_dir} (first expected: {next(iter(labels))})")
    n = 0
    for name, wnid in sorted(labels.items()):
        src = val_dir / name
        if not src.is_file():
            continue
        (out / wnid).mkdir(parents=True, exist_ok=True)
        dst = out / wnid / name
        if mode == "move":
            os.replace(src, dst)
        elif mode == "copy":
            shutil.copy2(src, dst)
        else:
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(src.resolve())
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="resnet-lit imagenet-val", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("val_dir", type=Path, help="the flat folder of ILSVRC2012_val_*.JPEG files")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--devkit", type=Path, help="ILSVRC2012_devkit_t12 folder or .tar.gz")
    src.add_argument("--labels", type=Path, help="LOC_val_solution.csv or a '<file> <wnid>' text file")
    p.add_argument("--synsets", type=Path,
                   help="with --devkit: the 1000 WordNet ids in ILSVRC2012_ID order (instead of meta.mat)")
    p.add_argument("--out", type=Path, help="write the class folders here (default: inside val_dir)")
    p.add_argument("--mode", choices=["move", "copy", "symlink"], default="move")
    args = p.parse_args(argv)
    if not args.val_dir.is_dir():
        p.error(f"{args.val_dir} is not a folder")
    labels = labels_from_devkit(args.devkit, args.synsets) if args.devkit else labels_from_file(args.labels)
    n = sort_val(args.val_dir, labels, args.out, args.mode)
    verb = {"move": "moved", "copy": "copied", "symlink": "linked"}[args.mode]
    print(f"{verb} {n} images into {len(set(labels.values()))} class folders under {args.out or args.val_dir}")
    return OK
