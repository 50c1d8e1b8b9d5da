"""An independent ImageNet-style pipeline in plain PyTorch + torchvision: the check that resnet-lit's
ImageNet path (JPEG decode, RandomResizedCrop, flip, normalise, the bottleneck ResNet, SGD, the
schedule) trains as well and as fast as the pipeline everyone knows.

Nothing here imports resnet-lit. It reads an ImageFolder tree (`<root>/train/<class>/*`,
`<root>/val/<class>/*`; the tar.gz archives of ../shared/data/imagewoof2-160 extracted), builds
torchvision's `resnet50` (v1.5, default initialisation), decodes with PIL through `ImageFolder`,
augments with `transforms.v2` (RandomResizedCrop over `--crop-scale` of the area + flip, normalise
with ImageNet's mean and std), evaluates with Resize(`--test-resize`) + CenterCrop(`--size`), and
trains with SGD (momentum, weight decay off for batch norm and biases, label smoothing, a linear
warm-up then cosine decay to 0, stepped per optimiser step; the last partial batch dropped). These
are the settings of `configs/experiments/imagewoof/resnet50_128px_5ep.yaml`:

    python benchmarks/reference_imagenet.py --root /data/imagewoof2-160 --epochs 5 --threads 1 \
        --workers 1 --out /tmp/reference-imagewoof-5ep

writes `metrics.csv` (one row per epoch: step, lr, train loss, validation top-1, seconds) and
`summary.json` (final top-1, wall time, training images/s) into `--out`.

`--evaluate WEIGHTS.safetensors` trains nothing: it loads weights with torchvision's parameter
names (resnet-lit's published weights have them) into torchvision's network and evaluates the
validation split with the same PIL decode, Resize, CenterCrop and normalisation, writing
`predictions.csv` (file, label, predicted class) and `summary.json`:

    python benchmarks/reference_imagenet.py --root /data/imagewoof2-160 --out /tmp/eval \
        --evaluate results/imagewoof-resnet50-128px-5ep-cpu/resnet50.safetensors
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def loaders(args) -> tuple[DataLoader, DataLoader]:
    norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    train_tf = v2.Compose([v2.RandomResizedCrop(args.size, scale=tuple(args.crop_scale), antialias=True),
                           v2.RandomHorizontalFlip(), *norm])
    val_tf = v2.Compose([v2.Resize(args.test_resize, antialias=True), v2.CenterCrop(args.size), *norm])
    train = datasets.ImageFolder(str(Path(args.root) / "train"), transform=train_tf)
    val = datasets.ImageFolder(str(Path(args.root) / "val"), transform=val_tf)
    if train.classes != val.classes:
        raise SystemExit(f"{args.root}: train and val hold different class folders")
    g = torch.Generator().manual_seed(args.seed)
    kw = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
    return (DataLoader(train, args.batch, shuffle=True, drop_last=True, generator=g, **kw),
            DataLoader(val, args.eval_batch, shuffle=False, **kw))


def lr_at(step: int, total: int, warmup: int, factor: float) -> float:
    """Linear warm-up from ``factor`` to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return factor + (1 - factor) * step / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = seen = 0
    for x, y in loader:
        out = model(x.contiguous(memory_format=torch.channels_last))
        right += (out.argmax(1) == y).sum().item()
        seen += len(y)
    model.train()
    return 100.0 * right / seen


def evaluate_weights(args, val_loader: DataLoader) -> None:
    """Top-1 of published weights on the validation split, image by image (``predictions.csv``)."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(args.evaluate).items()}
    num_classes = state["fc.weight"].shape[0]
    model = getattr(torchvision.models, args.arch)(num_classes=num_classes)
    model.load_state_dict(state, strict=True)
    model = model.to(memory_format=torch.channels_last).eval()
    files = [Path(p) for p, _ in val_loader.dataset.samples]
    classes = val_loader.dataset.classes
    out, rows, i = Path(args.out), [], 0
    with torch.no_grad():
        for x, y in val_loader:
            pred = model(x.contiguous(memory_format=torch.channels_last)).argmax(1)
            for label, p in zip(y.tolist(), pred.tolist()):
                rows.append((f"{files[i].parent.name}/{files[i].name}", classes[label], classes[p]))
                i += 1
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "predicted"])
        w.writerows(rows)
    right = sum(label == p for _, label, p in rows)
    summary = {"weights": str(args.evaluate), "val_acc1": 100.0 * right / len(rows), "right": right,
               "val_images": len(rows), "size": args.size, "test_resize": args.test_resize,
               "torch": torch.__version__, "torchvision": torchvision.__version__}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder holding train/<class>/* and val/<class>/*")
    p.add_argument("--out", required=True, help="folder for metrics.csv and summary.json")
    p.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.2, help="per --reference-batch images, scaled linearly")
    p.add_argument("--reference-batch", type=int, default=256)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--warmup-factor", type=float, default=0.01)
    p.add_argument("--size", type=int, default=128, help="training and evaluation crop side")
    p.add_argument("--test-resize", type=int, default=146, help="shorter side before the evaluation crop")
    p.add_argument("--crop-scale", type=float, nargs=2, default=[0.35, 1.0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch")
    p.add_argument("--workers", type=int, default=1, help="DataLoader decoding processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluate", help="evaluate these weights (.safetensors, torchvision names) instead of training")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_loader, val_loader = loaders(args)
    if args.evaluate:
        evaluate_weights(args, val_loader)
        return
    num_classes = len(train_loader.dataset.classes)
    model = getattr(torchvision.models, args.arch)(num_classes=num_classes).to(memory_format=torch.channels_last)
    decay = [q for q in model.parameters() if q.ndim > 1]
    no_decay = [q for q in model.parameters() if q.ndim <= 1]
    lr = args.lr * args.batch / args.reference_batch
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=args.momentum)
    per_epoch = len(train_loader)
    total, warmup = per_epoch * args.epochs, round(args.warmup_epochs * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, warmup, args.warmup_factor))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    rows, step, train_s, start = [], 0, 0.0, time.perf_counter()
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "lr", "train_loss", "val_acc1", "train_images_per_s", "seconds"])
        for epoch in range(args.epochs):
            t0, loss_sum = time.perf_counter(), 0.0
            for x, y in train_loader:
                loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum += loss.item()
            epoch_s = time.perf_counter() - t0
            train_s += epoch_s
            acc = evaluate(model, val_loader)
            row = [epoch, step, opt.param_groups[0]["lr"], loss_sum / per_epoch, acc,
                   per_epoch * args.batch / epoch_s, time.perf_counter() - start]
            w.writerow(row)
            f.flush()
            rows.append(row)
            print(f"epoch {epoch}: step {step}, train loss {row[3]:.4f}, val top-1 {acc:.2f} %, "
                  f"{row[5]:.1f} images/s", flush=True)
    summary = {
        "val_acc1": rows[-1][4], "epochs": args.epochs, "steps": step, "wall_s": time.perf_counter() - start,
        "train_images_per_s": step * args.batch / train_s, "val_images": len(val_loader.dataset),
        "args": vars(args), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
