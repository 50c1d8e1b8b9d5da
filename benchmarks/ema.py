"""The cost of the EMA of the weights (``model.ema``): ResNet-20 training steps on a real CIFAR-10
batch with and without the average's update, in one process.

Each iteration times a training step (forward, loss, backward, SGD step) and, right after it, the
update each EMA callback makes after a step: ``ema`` is resnet-lit's ``EMAWeights`` (one
multi-tensor lerp over every parameter and buffer), ``ema_per_tensor`` Lightning's
``EMAWeightAveraging`` as shipped (a Python loop over the tensors). The figure is the median over
iterations of update time / step time: adjacent timings, so that load from other processes on a
shared machine hits both alike; ``min_*`` are the least of the timings (the updates then timed 100
more times back to back), each one's own cost with what other processes took out.

    python benchmarks/ema.py --quick
    python benchmarks/ema.py --steps 20 --out ema.json
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
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    args = parser.parse_args()
    if args.quick:
        args.steps = 5
    setup_threads(args.threads)
    report = Report("ema.py", args, {k: getattr(args, k) for k in ("arch", "batch", "steps")})
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
    averages = {"ema": ours._average_model, "ema_per_tensor": shipped._average_model}

    def step() -> None:
        loss = module.criterion(module(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    module.train()
    step()  # warm-up
    times: dict[str, list[float]] = {"step": [], **{side: [] for side in averages}}
    for i in range(args.steps):
        t0 = time.perf_counter()
        step()
        times["step"].append(time.perf_counter() - t0)
        for side, average in averages.items():  # right after the step, as the callback does
            t0 = time.perf_counter()
            average.update_parameters(module)
            times[side].append(time.perf_counter() - t0)
        print(f"step {i + 1}/{args.steps}: " + ", ".join(f"{s} {1000 * t[-1]:.1f} ms" for s, t in times.items()),
              flush=True)
    # the least of many back-to-back timings: each one's own cost, with what other processes took out
    best = {"step": min(times["step"])}
    for side, average in averages.items():
        for _ in range(100):
            t0 = time.perf_counter()
            average.update_parameters(module)
            times[side].append(time.perf_counter() - t0)
        best[side] = min(times[side])
    rows = [{"side": "step (forward, backward, SGD)", "ms": 1000 * median(times["step"]),
             "min_ms": 1000 * best["step"]}]
    for side in averages:
        share = median(100 * u / s for u, s in zip(times[side], times["step"]))
        rows.append({"side": f"{side} update", "ms": 1000 * median(times[side][: args.steps]),
                     "share_of_step_pct": share, "min_ms": 1000 * best[side],
                     "min_share_pct": 100 * best[side] / best["step"]})
    for row in rows:
        report.append("results", row)
    print(table(rows, ["side", "ms", "share_of_step_pct", "min_ms", "min_share_pct"]))


if __name__ == "__main__":
    main()
