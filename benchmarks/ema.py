"""The cost of the EMA of the weights (``model.ema``): ResNet-20 training steps on a real CIFAR-10
batch with and without the average's update, in one process.

Three sides per pair, run in turn (A B C A B C ...) so that load from other processes on a shared
machine hits them alike: ``plain`` (forward, loss, backward, SGD step), ``ema`` (the same, then the
update resnet-lit's ``EMAWeights`` callback makes after each step: one multi-tensor lerp over every
parameter and buffer) and ``ema_per_tensor`` (Lightning's ``EMAWeightAveraging`` as shipped, a
Python loop over the tensors). The figures are the medians over pairs of the step-time ratios, and
the update's own time (timed alone, many times) over the plain step's.

    python benchmarks/ema.py --quick
    python benchmarks/ema.py --pairs 7 --steps 10 --out ema.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, add_common_args, default_data_root, median, print_header, setup_threads, table  # noqa: E402

from resnet_lit import CIFARDataModule  # noqa: E402
from resnet_lit.training.classifier import ImageClassifier  # noqa: E402
from resnet_lit.training.ema import EMAConfig, EMAWeights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side and pair")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.steps = 3, 4
    setup_threads(args.threads)
    report = Report("ema.py", args, {k: getattr(args, k) for k in ("arch", "batch", "pairs", "steps")})
    print_header(report)

    dm = CIFARDataModule(str(default_data_root("cifar10-jpeg")), batch_size=args.batch, subset=args.batch)
    x, y = next(dm.batches("train"))
    torch.manual_seed(0)
    module = ImageClassifier(args.arch, 10)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    ours = EMAWeights(EMAConfig(decay=0.9998))
    from lightning.pytorch.callbacks import EMAWeightAveraging

    shipped = EMAWeightAveraging(decay=0.9998)
    for callback in (ours, shipped):
        callback.setup(None, module, "fit")  # builds the AveragedModel from the module, as in fit
        callback._average_model.update_parameters(module)  # the first update only copies
    updates = {"plain": None, "ema": ours._average_model, "ema_per_tensor": shipped._average_model}

    def step() -> None:
        loss = module.criterion(module(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def run(side: str, steps: int) -> float:
        average = updates[side]
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
            if average is not None:
                average.update_parameters(module)
        return (time.perf_counter() - t0) / steps

    module.train()
    for side in updates:
        run(side, 2)  # warm-up
    times: dict[str, list[float]] = {side: [] for side in updates}
    for _ in range(args.pairs):
        for side in updates:
            times[side].append(run(side, args.steps))
    update_ms = {}
    for side in ("ema", "ema_per_tensor"):
        n = 200
        t0 = time.perf_counter()
        for _ in range(n):
            updates[side].update_parameters(module)
        update_ms[side] = 1000 * (time.perf_counter() - t0) / n
    step_ms = 1000 * median(times["plain"])
    rows = []
    for side in updates:
        ratio = median(a / b for a, b in zip(times[side], times["plain"]))
        row = {"side": side, "step_ms": 1000 * median(times[side]), "ratio_to_plain": ratio,
               "update_ms": update_ms.get(side), "update_share_pct": 100 * update_ms[side] / step_ms
               if side in update_ms else None}
        rows.append(row)
        report.append("results", row)
    print(table(rows, ["side", "step_ms", "ratio_to_plain", "update_ms", "update_share_pct"]))


if __name__ == "__main__":
    main()
