"""What the data recipe options cost on CIFAR-10: each against the paper's batched default, in one process.

Per variant, the time to make one training batch as the model takes it (batch 128 on --device):
CIFARDataModule's loader (one in-memory gather; with ``auto_augment`` / ``random_erasing`` also
the torchvision policy on each uint8 image, on the host) then the batch hook on the device
(with ``policy_groups`` the policy on groups of the batch; mean, pad-4 crop and flip; MixUp / CutMix
when on). As a yardstick, one ResNet-20 training
step (forward, backward, SGD; channels-last, 32-bit) on the same batch and device.

Variants run in turn within each repeat (A B C ... A B C ...); figures are medians over repeats.
``ratio`` is a variant's batch time over the default's; ``of_step`` its batch time over the
ResNet-20 step's (how much of a step the data side would add with no workers to hide it).

    python benchmarks/recipes_data.py --quick
    python benchmarks/recipes_data.py --out recipes_data.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, add_common_args, default_data_root, median, print_header, setup_threads, table  # noqa: E402

from resnet_lit.data import CIFARDataModule  # noqa: E402
from resnet_lit.data.augment import AugmentConfig  # noqa: E402
from resnet_lit.models import create_model  # noqa: E402

VARIANTS = {
    "default (paper)": {},
    "mixup 0.2 + cutmix 1.0": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    "random_erasing 0.25": {"random_erasing": 0.25},
    "auto_augment ta_wide": {"auto_augment": "ta_wide"},
    "auto_augment ra (m9)": {"auto_augment": "ra"},
    "auto_augment aa (cifar10)": {"auto_augment": "aa"},
    "ta_wide, 16 groups on device": {"auto_augment": "ta_wide", "policy_groups": 16},
    "ra (m9), 16 groups on device": {"auto_augment": "ra", "policy_groups": 16},
}


def batch_time(dm: CIFARDataModule, device: torch.device, batches: int) -> float:
    """Seconds per training batch: loader + transfer + device hook."""
    it = iter(dm.train_dataloader())
    x, y = next(it)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
        x = dm._device_batch((x.to(device), y.to(device)), train=True)[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / batches


def step_time(dm: CIFARDataModule, device: torch.device, steps: int) -> float:
    """Seconds per ResNet-20 training step (the yardstick) on an already-made batch."""
    model = create_model("resnet20", num_classes=10).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = next(dm.batches("train", device))
    x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return median(times[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=None, help="batches per measurement (default 20, quick 6)")
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3, quick 2)")
    p.add_argument("--cifar-root", type=Path, default=None)
    args = p.parse_args(argv)
    setup_threads(args.threads if args.threads is not None else 1)
    args.batches = args.batches or (6 if args.quick else 20)
    args.repeats = args.repeats or (2 if args.quick else 3)
    root = args.cifar_root or default_data_root("cifar10-jpeg")
    device = torch.device(args.device)
    rep = Report("recipes_data.py", args,
                 {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"})
    print_header(rep)
    modules = {}
    for name, options in VARIANTS.items():
        dm = CIFARDataModule(str(root), batch_size=args.batch, augment=AugmentConfig(**options))
        dm.setup("fit")
        modules[name] = dm
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, dm in modules.items():
            times[name].append(batch_time(dm, device, args.batches))
    step = step_time(modules["default (paper)"], device, max(3, args.batches // 2))
    base = median(times["default (paper)"])
    rows = []
    for name in VARIANTS:
        t = median(times[name])
        rows.append({"variant": name, "ms_per_batch": round(1000 * t, 2), "ratio": round(t / base, 2),
                     "of_step": round(t / step, 3)})
    rep["rows"] = rows
    rep["resnet20_step_ms"] = round(1000 * step, 1)
    print(f"\nResNet-20 training step, batch {args.batch} on {device}: {1000 * step:.1f} ms")
    print(table(rows, ["variant", "ms_per_batch", "ratio", "of_step"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
