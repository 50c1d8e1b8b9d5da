"""Input pipeline throughput: ours against torchvision's usual recipes, on the real data.

CIFAR-10 (train split, batch 128, the same DataLoader workers on both sides):
  ours         CIFARDataModule.train_dataloader() (one in-memory gather per batch, uint8), moved
               to --device, then CIFARDataModule.transform_batch (mean, pad 4, crop, flip) on
               the whole batch there
  torchvision  torchvision.datasets.CIFAR10's per-sample path on the same uint8 images
               (Image.fromarray, RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
               Normalize) through a DataLoader, moved to --device
ImageNet (../shared/data/imagewoof-mini train, 800 real photographs; one process, one thread =
one DataLoader worker):
  ours         read the file, resnet_lit.data.transforms.ModernTrainTransform (random-resized
               crop + flip, crop before resize, JPEG draft decoding) -> uint8 [3, 224, 224];
               mean/std happen on the batch on the device, so they are not a worker's cost
  torchvision  torchvision's reference preset: PIL loader (open, convert RGB),
               RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize
  (also reported: ours + Normalize on the CPU, and the paper's scale augmentation PaperTrainTransform)

Decode (``--parts decode``, benchmarks/_decode.py): today's PIL worker path, the same without
JPEG draft decoding, and ``decode: cpu`` (batched decode_jpeg + views), per core, on imagewoof-mini
as it is and re-encoded at 1024 px; ``decode: gpu`` (nvJPEG) too where CUDA is present.
Shards (--parts shards; needs pip install 'resnet-lit[shards]'): imagewoof-mini's training images
converted by `resnet-lit shards` (original bytes) and by `--max_side 512`, read in a shuffled order,
one process and one thread (= one worker), all with ModernTrainTransform(224) (what ImageNetDataModule
runs in a worker):
  folder       ImageFiles over the extracted tree (open + read each file): today's path
  shards       ShardImages (LitData chunks, read by index)
  shards_512   the same over the --max_side 512 conversion
  torchvision  torchvision's ImageFolder preset (PIL loader, RandomResizedCrop, flip, ToTensor, Normalize)
Listing (--parts listing): seconds to list a synthetic ImageFolder tree of --listing-files empty files
in 1000 class folders (scan_image_folder, what every rank does at start-up), and to open a shards
location (read resnet_lit_shards.json and index.json, nothing per image).

Runs alternate A B A B; ratios are medians over the repeats.

    python benchmarks/data.py --quick
    python benchmarks/data.py --workers 4 --device cuda --out data.json
    python benchmarks/data.py --parts decode --images 256 --out decode.json
"""

from __future__ import annotations

import argparse
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, add_common_args, default_data_root, median, print_header, setup_threads, table  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------ CIFAR
class TorchvisionCIFAR(Dataset):
    """What torchvision.datasets.CIFAR10.__getitem__ does: HWC uint8 array -> PIL -> transforms."""

    def __init__(self, images_nchw: torch.Tensor, labels: torch.Tensor):
        from torchvision import transforms as T

        self.data = images_nchw.permute(0, 2, 3, 1).contiguous().numpy()  # [N, 32, 32, 3], as torchvision keeps it
        self.targets = labels.tolist()
        self.transform = T.Compose([
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR_MEAN, CIFAR_STD),
        ])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def time_loader(batches: Callable[[], Any], seconds: float, device: torch.device) -> float:
    """Images/s over whole batches for about ``seconds`` (after one warm-up batch)."""
    it = iter(batches())
    x = next(it)  # warm-up: worker start, first gather
    n, t0 = 0, time.perf_counter()
    for x in it:
        n += x.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if n == 0:
        raise RuntimeError("the loader ran out of batches before the timing started")
    return n / dt


def cifar(args: argparse.Namespace, rep: Report, workers: int) -> dict[str, Any]:
    from resnet_lit.data import CIFARDataModule

    device = torch.device(args.device)
    pin = device.type == "cuda"
    dm = CIFARDataModule(str(args.cifar_root), batch_size=args.batch, num_workers=workers, pin_memory=pin)
    dm.setup("fit")
    tv_set = TorchvisionCIFAR(dm.train_set.x, dm.train_set.y)
    tv_loader = DataLoader(tv_set, batch_size=args.batch, shuffle=True, num_workers=workers, drop_last=True,
                           pin_memory=pin, persistent_workers=workers > 0)

    def ours():
        for x, y in dm.train_dataloader():
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield dm.transform_batch(x, train=True)

    def theirs():
        for x, y in tv_loader:
            yield x.to(device, non_blocking=True)

    rows = []
    for r in range(args.repeats):
        a = time_loader(ours, args.seconds, device)
        b = time_loader(theirs, args.seconds, device)
        rows.append({"part": "cifar", "workers": workers, "repeat": r, "ours_images_per_s": a,
                     "torchvision_images_per_s": b, "ratio": a / b})
        rep.append("cifar_runs", rows[-1])
        print(f"cifar, {workers} workers, repeat {r}: ours {a:,.0f} img/s, torchvision {b:,.0f} img/s, "
              f"ratio {a / b:.1f}", flush=True)
    return {"ours_images_per_s": median(r["ours_images_per_s"] for r in rows),
            "torchvision_images_per_s": median(r["torchvision_images_per_s"] for r in rows),
            "ratio": median(r["ratio"] for r in rows), "workers": workers, "batch": args.batch, "device": args.device}


# ---------------------------------------------------------------------------------- ImageNet
def extract_images(archive: Path, dest: Path, limit: int | None) -> list[Path]:
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and not Path(m.name).name.startswith(".")]
        members.sort(key=lambda m: m.name)
        if limit:
            step = max(1, len(members) // limit)  # spread over the classes
            members = members[::step][:limit]
        for m in members:
            tar.extract(m, dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extract(m, dest)
    return [dest / m.name for m in members]


def imagenet_pipelines() -> dict[str, Callable[[Path], torch.Tensor]]:
    from PIL import Image
    from torchvision import transforms as T

    from resnet_lit.data.transforms import ModernTrainTransform, PaperTrainTransform

    reference = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def pil_loader(path: Path) -> Image.Image:  # torchvision.datasets.folder.pil_loader
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")

    modern, paper = ModernTrainTransform(224), PaperTrainTransform(224)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return {
        "ours": lambda p: modern(p.read_bytes(), str(p)),
        "torchvision": lambda p: reference(pil_loader(p)),
        "ours+cpu_normalize": lambda p: (modern(p.read_bytes(), str(p)).float().div_(255) - mean) / std,
        "ours_paper_scale_aug": lambda p: paper(p.read_bytes(), str(p)),
    }


def imagenet(args: argparse.Namespace, rep: Report) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    pipes = imagenet_pipelines()
    with tempfile.TemporaryDirectory(prefix="imagewoof-") as tmp:
        files = extract_images(args.imagenet_root / "train.tar.gz", Path(tmp), args.images)
        for f in files[:4]:  # warm-up: imports, first-call costs, page cache
            for fn in pipes.values():
                fn(f)
        rows = []
        for r in range(args.repeats):
            # Interleaved image by image (in a shuffled pipeline order), so bursts of load from
            # other processes hit every pipeline alike.
            spent = dict.fromkeys(pipes, 0.0)
            order = list(pipes)
            for i, f in enumerate(files):
                random.Random(i + 1000 * r).shuffle(order)
                for name in order:
                    t0 = time.perf_counter()
                    x = pipes[name](f)
                    spent[name] += time.perf_counter() - t0
                    assert x.shape[-2:] == (224, 224), f"{name}: got {tuple(x.shape)} for {f}"
            row: dict[str, Any] = {"part": "imagenet", "repeat": r}
            row.update({f"{k}_images_per_s": len(files) / v for k, v in spent.items()})
            row["ratio"] = row["ours_images_per_s"] / row["torchvision_images_per_s"]
            rows.append(row)
            rep.append("imagenet_runs", row)
            print(f"imagenet repeat {r}: " + ", ".join(f"{k} {len(files) / v:,.0f} img/s" for k, v in spent.items())
                  + f", ratio {row['ratio']:.2f}", flush=True)
    torch.set_num_threads(threads)
    ratio = median(r["ratio"] for r in rows)
    summary: dict[str, Any] = {k: median(r[k] for r in rows) for k in rows[0] if k.endswith("_images_per_s")}
    summary.update({"images": len(files), "per": "one process, one thread (one DataLoader worker)"})
    rep["imagenet"] = summary
    rep["imagenet_ratio"] = ratio
    return ratio


def decode_part(args: argparse.Namespace, rep: Report) -> None:
    import _decode

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    with tarfile.open(args.imagenet_root / "train.tar.gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".JPEG")), key=lambda m: m.name)
        step = max(1, len(members) // args.images) if args.images else 1  # spread over the classes
        datas = [tar.extractfile(m).read() for m in members[::step][:args.images]]
    summary = _decode.run({"woof320": datas, "woof1024": _decode.large_copies(datas)}, args.repeats, args.chunk,
                          rep, median)
    torch.set_num_threads(threads)
    rows = []
    for key, s in summary.items():
        if isinstance(s, dict):
            rows.append({"images": key, **{k: v for k, v in s.items() if k.endswith(("_per_s", "_vs_pil"))},
                         "draft_mean_abs_diff": s["draft_mean_abs_diff"]})
    print()
    print(table(rows, list(rows[0])))


# ------------------------------------------------------------------------------------ shards
def shards(args: argparse.Namespace, rep: Report) -> dict[str, float]:
    from resnet_lit.commands.shards import main as convert
    from resnet_lit.data.folder import ImageFiles, scan_image_folder
    from resnet_lit.data.litdata_source import ShardSource
    from resnet_lit.data.transforms import ModernTrainTransform

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="imagewoof-shards-") as tmp:
        tree = Path(tmp) / "tree"
        extract_images(args.imagenet_root / "train.tar.gz", tree / "train", None)
        split = tree / "train" / "train" if (tree / "train" / "train").is_dir() else tree / "train"
        _, samples = scan_image_folder(split)
        started = time.perf_counter()
        for out, extra in (("full", []), ("max512", ["--max_side", "512"])):
            assert convert([str(split.parent), str(Path(tmp) / out), "--splits", split.name, "--workers",
                            str(args.convert_workers), *extra]) == 0
        rep["shards_convert_s"] = time.perf_counter() - started
        torch.set_num_threads(1)  # a DataLoader worker runs with one thread
        tf = ModernTrainTransform(224)
        sets = {"folder": ImageFiles(samples, tf),
                "shards": ShardSource(str(Path(tmp) / "full")).dataset(split.name, tf),
                "shards_512": ShardSource(str(Path(tmp) / "max512")).dataset(split.name, tf)}
        tv = imagenet_pipelines()["torchvision"]
        pipes: dict[str, Callable[[int], torch.Tensor]] = {k: (lambda i, d=d: d[i][0]) for k, d in sets.items()}
        pipes["torchvision"] = lambda i: tv(Path(samples[i][0]))
        n = min(len(samples), args.images or len(samples))
        for i in range(4):  # warm-up: imports, chunk maps, page cache
            for fn in pipes.values():
                fn(i)
        rows = []
        for r in range(args.repeats):
            order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(r))[:n].tolist()
            spent = dict.fromkeys(pipes, 0.0)
            names = list(pipes)
            for k, i in enumerate(order):  # interleaved image by image, as in imagenet()
                random.Random(k + 1000 * r).shuffle(names)
                for name in names:
                    t0 = time.perf_counter()
                    x = pipes[name](i)
                    spent[name] += time.perf_counter() - t0
                    assert x.shape[-2:] == (224, 224), name
            row: dict[str, Any] = {"part": "shards", "repeat": r}
            row.update({f"{k}_images_per_s": n / v for k, v in spent.items()})
            row["shards_ratio"] = row["shards_images_per_s"] / row["folder_images_per_s"]
            row["shards_512_ratio"] = row["shards_512_images_per_s"] / row["folder_images_per_s"]
            rows.append(row)
            rep.append("shards_runs", row)
            print(f"shards repeat {r}: " + ", ".join(f"{k} {n / v:,.0f} img/s" for k, v in spent.items()), flush=True)
    torch.set_num_threads(threads)
    summary = {k: median(r[k] for r in rows) for k in rows[0] if k.endswith(("_images_per_s", "_ratio"))}
    summary.update({"images": n, "per": "one process, one thread (one DataLoader worker)",
                    "augmentation": "ModernTrainTransform(224) (torchvision: its RandomResizedCrop preset)"})
    rep["shards"] = summary
    return summary


def listing(args: argparse.Namespace, rep: Report) -> dict[str, float]:
    from resnet_lit.commands.shards import main as convert
    from resnet_lit.data.folder import scan_image_folder
    from resnet_lit.data.litdata_source import ShardSource

    with tempfile.TemporaryDirectory(prefix="listing-") as tmp:
        split, per = Path(tmp) / "tree" / "train", -(-args.listing_files // 1000)
        started = time.perf_counter()
        for c in range(1000):
            d = split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(per):
                (d / f"n{c:08d}_{i}.JPEG").touch()
        made = time.perf_counter() - started
        started = time.perf_counter()
        _, samples = scan_image_folder(split)
        listed = time.perf_counter() - started
        tiny = Path(tmp) / "tiny" / "train" / "a"  # a real one-image shards location, to time opening one
        tiny.mkdir(parents=True)
        extract = Path(tmp) / "one"
        jpeg = extract_images(args.imagenet_root / "val.tar.gz", extract, 1)[0]
        (tiny / "0.JPEG").write_bytes(jpeg.read_bytes())
        assert convert([str(tiny.parent.parent), str(Path(tmp) / "shards"), "--splits", "train", "--workers", "1"]) == 0
        started = time.perf_counter()
        ds = ShardSource(str(Path(tmp) / "shards")).dataset("train", lambda data, name: data)
        ds.sample(0)
        opened = time.perf_counter() - started
    out = {"listing_files": len(samples), "listing_create_s": made, "listing_scan_s": listed, "shards_open_s": opened}
    rep["listing"] = out
    print(f"listing: {len(samples):,} files listed in {listed:.1f} s (created in {made:.0f} s); "
          f"a shards location opened in {opened:.2f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--device", default="cpu", help="where the CIFAR batch augmentation runs (cpu or cuda)")
    p.add_argument("--workers", default="0", help="DataLoader workers for both CIFAR pipelines; a comma list "
                   "measures each (cifar_ratio is the first: 0 is what CIFARDataModule uses by default)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=None, help="per CIFAR measurement (default 4, quick 1.5)")
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3, quick 2)")
    p.add_argument("--images", type=int, default=None, help="ImageNet images per pass (default all 800, quick 120)")
    p.add_argument("--parts", default="cifar,imagenet", help="comma list of cifar, imagenet, decode, shards, listing")
    p.add_argument("--chunk", type=int, default=32, help="decode part: images per batch decode (and per turn)")
    p.add_argument("--cifar-root", type=Path, default=None)
    p.add_argument("--imagenet-root", type=Path, default=None)
    p.add_argument("--convert-workers", type=int, default=2, help="--parts shards: processes of `resnet-lit shards`")
    p.add_argument("--listing-files", type=int, default=1_281_167,
                   help="--parts listing: empty files in the synthetic tree (default: ImageNet's training set)")
    args = p.parse_args(argv)
    setup_threads(args.threads if args.threads is not None else 1)
    args.seconds = args.seconds or (1.5 if args.quick else 4.0)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.images = args.images or (120 if args.quick else None)
    args.cifar_root = args.cifar_root or default_data_root("cifar10-jpeg")
    args.imagenet_root = args.imagenet_root or default_data_root("imagewoof-mini")
    parts = args.parts.split(",")
    rep = Report("data.py", args,
                 {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"})
    print_header(rep)
    rows = []
    if "cifar" in parts:
        results = []
        for w in (int(v) for v in str(args.workers).split(",")):
            c = cifar(args, rep, w)
            results.append(c)
            rep["cifar_by_workers"] = results
            rows.append({"pipeline": f"CIFAR-10 train, batch {args.batch}, {w} workers, aug on {args.device}",
                         "ours_images_per_s": c["ours_images_per_s"],
                         "torchvision_images_per_s": c["torchvision_images_per_s"],
                         "ratio": c["ratio"], "target": ">= 20"})
        rep["cifar"] = results[0]
        rep["cifar_ratio"] = results[0]["ratio"]
    if "imagenet" in parts:
        r = imagenet(args, rep)
        c = rep.data["imagenet"]
        rows.append({"pipeline": "ImageNet decode+augment (imagewoof-mini), per worker",
                     "ours_images_per_s": c["ours_images_per_s"],
                     "torchvision_images_per_s": c["torchvision_images_per_s"],
                     "ratio": r, "target": ">= 1.5"})
    if "decode" in parts:
        decode_part(args, rep)
    if "shards" in parts:
        c = shards(args, rep)
        for key, target in (("shards", ">= 1.3"), ("shards_512", ">= 2")):
            rows.append({"pipeline": f"ImageNet {key} vs folder, same transform, per worker",
                         "ours_images_per_s": c[f"{key}_images_per_s"],
                         "torchvision_images_per_s": c["folder_images_per_s"], "ratio": c[f"{key}_ratio"],
                         "target": target})
    if "listing" in parts:
        listing(args, rep)
    if rows:
        print()
        print(table(rows, ["pipeline", "ours_images_per_s", "torchvision_images_per_s", "ratio", "target"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
