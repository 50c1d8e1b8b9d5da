"""An independent ResNet-20 on CIFAR-10 in plain PyTorch: the check that resnet-lit's distance to
the paper is the data's and not the code's.

Nothing here imports resnet-lit. It reads the same JPEG archive, builds the paper's ResNet-20
(section 4.2: 3x3 stem with 16 filters, three stages of 3 basic blocks at 16/32/64 filters,
option A shortcuts: stride-2 subsampling and zero-padded channels), trains it with the paper's
recipe (SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at the milestones,
per-pixel mean subtraction, 4-pixel zero padding + random 32x32 crop + horizontal flip, done on
whole batches) and evaluates the 10,000 test images every epoch, as `resnet-lit fit` does with
`configs/cifar10/resnet20.yaml`.

    python benchmarks/reference_cifar.py --steps 16000 --milestones 8000 12000 --threads 1 \
        --out /tmp/reference-16k

writes `metrics.csv` (step, epoch, lr, train loss, test error, seconds) and `summary.json`
(final test error, wall time, images/s) into `--out`. docs/results.md sets it beside resnet-lit.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# ---------------------------------------------------------------------------------------------- data


def read_split(archive: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A tar.gz of `<class>/<file>.jpg` -> uint8 images [N, 3, 32, 32], labels [N], class names.

    Classes are the sorted folder names (for CIFAR-10 that is the data set's own label order)."""
    images: list[np.ndarray] = []
    names: list[str] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = Path(member.name).parts
            if len(parts) < 2 or parts[-1].startswith("."):
                continue
            data = tar.extractfile(member).read()
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            names.append(parts[-2])
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([index[n] for n in names], dtype=torch.long)
    return x, y, classes


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad 4 zeros on each side (after mean subtraction), crop 32x32 at random, flip half."""
    b, c, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), generator=generator)
    dx = torch.randint(0, 9, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # [B, 1, 1, W]
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows, cols]


# ---------------------------------------------------------------------------------------------- model


class Block(nn.Module):
    """Two 3x3 convs with BN; option A shortcut where the shape changes (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = x[:, :, :: self.stride, :: self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class ResNet20(nn.Module):
    def __init__(self, n: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


# ---------------------------------------------------------------------------------------------- loop


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, bf16: bool) -> float:
    """Top-1 error in percent over all of x (batches of 1,000)."""
    model.eval()
    wrong = 0
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        for i in range(0, len(x), 1000):
            xb = (x[i : i + 1000].float() / 255 - mean).contiguous(memory_format=torch.channels_last)
            wrong += int((model(xb).argmax(1) != y[i : i + 1000]).sum())
    model.train()
    return 100.0 * wrong / len(x)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/cifar10-jpeg", help="folder with train.tar.gz and test.tar.gz")
    p.add_argument("--steps", type=int, default=64000, help="iterations (the paper: 64k)")
    p.add_argument("--milestones", type=int, nargs="*", default=[32000, 48000], help="iterations where lr /= 10")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_every", type=int, default=0, help="iterations between test evaluations; 0 = every epoch")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.csv and summary.json")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    bf16 = not args.fp32
    args.out.mkdir(parents=True, exist_ok=True)

    t_load = time.perf_counter()
    train_x, train_y, classes = read_split(Path(args.data) / "train.tar.gz")
    test_x, test_y, test_classes = read_split(Path(args.data) / "test.tar.gz")
    assert classes == test_classes, (classes, test_classes)
    mean = train_x.float().div(255).mean(0)  # per-pixel mean [3, 32, 32] (section 4.2)
    print(f"read {len(train_x)} train / {len(test_x)} test images in {time.perf_counter() - t_load:.0f}s", flush=True)

    model = ResNet20(num_classes=len(classes)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, args.milestones, 0.1)
    per_epoch = len(train_x) // args.batch  # drop the short last batch
    eval_every = args.eval_every or per_epoch

    rows, step, epoch, t0 = [], 0, 0, time.perf_counter()
    train_time = 0.0
    loss_sum, loss_n = 0.0, 0
    while step < args.steps:
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(per_epoch):
            if step >= args.steps:
                break
            t_step = time.perf_counter()
            idx = order[i * args.batch : (i + 1) * args.batch]
            xb = augment(train_x[idx].float() / 255 - mean, gen).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(xb), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            train_time += time.perf_counter() - t_step
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            if step % eval_every == 0 or step == args.steps:
                err = evaluate(model, test_x, test_y, mean, bf16)
                row = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / loss_n,
                       "test_error": err, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
                rows.append(row)
                loss_sum, loss_n = 0.0, 0
                shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                print(" ".join(shown), flush=True)
        epoch += 1

    wall = time.perf_counter() - t0
    with open(args.out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {
        "final_test_error": rows[-1]["test_error"], "steps": step, "milestones": args.milestones,
        "wall_s": round(wall, 1), "train_images_per_s": round(step * args.batch / train_time, 1),
        "threads": args.threads, "bf16": bf16, "seed": args.seed, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
