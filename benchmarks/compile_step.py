"""The whole training step compiled as one function (``--model.compile_step true``) against the
default path (the backbone compiled alone), through the same plain Trainer fit, in one process.

Both sides: ImageClassifier on real CIFAR-10 (CIFARDataModule, augmentation on the device), the same
compile backend and options, ``steps`` timed steps after ``warmup`` untimed ones (the compilation).
Sides alternate (A B A B ...) so that load on a shared machine hits both alike; the figure is the
median of the per-pair ratios fast / default (below 1: the compiled step is faster).

    python benchmarks/compile_step.py --backend eager --pairs 3 --steps 30     # loop overhead, CPU
    python benchmarks/compile_step.py --device cuda --mode reduce-overhead      # a GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data_root, median  # noqa: E402
from _steptimer import StepTimer  # noqa: E402


def fit(args: argparse.Namespace, compile_step: bool, run_dir: Path) -> float:
    """Median seconds of one timed step."""
    import lightning.pytorch as pl

    from resnet_lit.data import CIFARDataModule
    from resnet_lit.training.classifier import ImageClassifier

    options = {"backend": args.backend} if args.mode is None else {"backend": args.backend, "mode": args.mode}
    module = ImageClassifier(arch=args.arch, num_classes=10, width=args.width, compile=options,
                             compile_step=compile_step, schedule={"unit": "step", "milestones": [10**9]})
    images = args.batch * (args.warmup + args.steps + 2)
    data = CIFARDataModule(str(args.data_root), batch_size=args.batch, subset=images)
    timer = StepTimer(start=args.warmup, steps=args.steps)
    trainer = pl.Trainer(accelerator=args.device, devices=1, max_steps=args.warmup + args.steps + 1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, log_every_n_steps=50, callbacks=[timer], default_root_dir=run_dir)
    trainer.fit(module, data)
    stamps = StepTimer.results[-1]["stamps"]
    return median(b - a for a, b in zip(stamps, stamps[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--mode", default=None)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data-root", type=Path, default=default_data_root("cifar10-jpeg"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            default = fit(args, False, Path(tmp) / f"default{i}")
            fast = fit(args, True, Path(tmp) / f"fast{i}")
            ratios.append(fast / default)
            print(f"pair {i}: default {1000 * default:.2f} ms/step, compile_step {1000 * fast:.2f} ms/step, "
                  f"ratio {fast / default:.3f}", flush=True)
    print(f"median ratio compile_step / default: {median(ratios):.3f} ({args.arch} width {args.width}, batch "
          f"{args.batch}, backend {args.backend}, mode {args.mode}, {args.device})")


if __name__ == "__main__":
    main()
