"""Lightning overhead: the same ResNet training steps through `resnet-lit fit` and a hand loop.

Side A is the real CLI, in-process (`resnet_lit.runs.cli.main`): the recipe config
(configs/cifar10/resnet20.yaml) plus the trainer overlay (cpu.yaml or gpu.yaml), the
CIFARDataModule on the real CIFAR-10 archive (decoded once, then in memory), ImageClassifier with
its torchmetrics, logging, progress, throughput and LR-monitor callbacks, CSV logger and
checkpointing. Side B is a hand-written PyTorch loop with the same model, optimiser (SGD, same
LR schedule function), data loader, batched augmentation (`CIFARDataModule.transform_batch`),
precision, memory format and compile setting, printing the loss every 50 steps.

Both time the same window: `steps` full iterations after `warmup` untimed ones. Runs alternate
(A B A B ...) in one process so that load from other processes on a shared machine hits both
sides alike; the figure is the median of the per-pair ratios A/B.

    python benchmarks/overhead.py --quick
    python benchmarks/overhead.py --pairs 5 --steps 30 --out overhead.json
    # per-step cost, compute taken away:
    python benchmarks/overhead.py --batch 16 --width 0.0625 --steps 150 --warmup 10 --bare

With ``--bare`` a third side runs in each pair: ImageClassifier in a plain Trainer without the
callbacks, logger and checkpointing the CLI adds, which splits the overhead into Lightning's loop
and resnet-lit's additions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Report, add_common_args, default_data_root, median, print_header, setup_threads, table  # noqa: E402
from _steptimer import StepTimer  # noqa: E402


def lightning_run(args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    from resnet_lit.runs.cli import main as cli_main

    overlay = "gpu.yaml" if args.device == "cuda" else "cpu.yaml"
    argv = [
        "fit",
        "--config", str(REPO_ROOT / "configs" / "cifar10" / f"{args.arch}.yaml"),
        "--config", str(REPO_ROOT / "configs" / "trainer" / overlay),
        "--data.root", str(args.data_root),
        "--data.batch_size", str(args.batch),
        "--run_dir", str(run_dir),
        "--trainer.max_steps", str(args.warmup + args.steps + 1),
        "--trainer.limit_val_batches", "0",  # training steps only: the hand loop does no evaluation
        "--trainer.callbacks+=" + '{"class_path": "_steptimer.StepTimer", '
        f'"init_args": {{"start": {args.warmup}, "steps": {args.steps}}}}}',
    ]
    if args.compile is not None:
        argv += ["--model.compile", "true" if args.compile else "false"]
    if args.width != 1.0:
        argv += ["--model.width", str(args.width)]

    def fit() -> None:
        saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees ours too
        try:
            cli_main(argv)
        finally:
            sys.argv = saved_argv

    return timed_fit(fit)


def timed_fit(fit: Callable[[], None]) -> dict[str, float]:
    """Run one fit that carries a StepTimer callback; summarise the window it stamped."""
    n = len(StepTimer.results)
    t0 = time.perf_counter()
    fit()
    if len(StepTimer.results) != n + 1:
        raise RuntimeError("the StepTimer callback did not report: was the fit shorter than warmup + steps?")
    return summarize(StepTimer.results[-1]["stamps"], t0, time.perf_counter())


def bare_run(args: argparse.Namespace, hand: "HandLoop") -> dict[str, float]:
    """Side C (``--bare``): ImageClassifier and CIFARDataModule in a plain ``Trainer`` with no
    callbacks, logger, checkpointing, progress or model summary: Lightning's own loop, without what
    `resnet-lit fit` adds. A minus C is the CLI's additions, C minus B Lightning's loop."""
    import lightning as L

    from resnet_lit.data import CIFARDataModule
    from resnet_lit.training.classifier import ImageClassifier
    from resnet_lit.training.optimizers import OptimizerConfig
    from resnet_lit.training.schedules import ScheduleConfig

    gpu = args.device == "cuda"
    dm = CIFARDataModule(str(args.data_root), batch_size=args.batch)
    model = ImageClassifier(
        arch=args.arch, num_classes=10, width=args.width, compile=hand.compile, channels_last=hand.channels_last,
        optimizer=OptimizerConfig(lr=0.1, reference_batch=128),
        schedule=ScheduleConfig(kind="step", unit="step", milestones=[32000, 48000]),
    )
    timer = StepTimer(start=args.warmup, steps=args.steps)
    trainer = L.Trainer(
        accelerator=args.device, devices=1, precision="bf16-mixed" if hand.bf16 else "32-true", benchmark=gpu,
        max_steps=args.warmup + args.steps + 1, limit_val_batches=0, callbacks=[timer], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    return timed_fit(lambda: trainer.fit(model, datamodule=dm))


def summarize(stamps: list[float], t_start: float, t_end: float) -> dict[str, float]:
    """Window total, median step, and the time outside the window (start-up, compile, tear-down)."""
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    window = stamps[-1] - stamps[0]
    return {"steps_s": window, "median_step_s": median(steps), "fixed_s": (t_end - t_start) - window}


class HandLoop:
    """The plain PyTorch loop. Data module built once (like side A, whose setup is outside the window)."""

    def __init__(self, args: argparse.Namespace):
        from resnet_lit.data import CIFARDataModule

        self.args = args
        self.device = torch.device(args.device)
        self.dm = CIFARDataModule(str(args.data_root), batch_size=args.batch)
        self.dm.setup("fit")
        gpu = self.device.type == "cuda"
        # What side A's trainer overlay sets: bf16 on a GPU (gpu.yaml), fp32 on a CPU (cpu.yaml),
        # the memory layout as the overlay says, compiled on a GPU unless --compile says otherwise.
        overlay = yaml.safe_load((REPO_ROOT / "configs" / "trainer" / ("gpu.yaml" if gpu else "cpu.yaml")).read_text())
        self.bf16 = gpu
        self.channels_last = bool(overlay.get("model", {}).get("channels_last", False))
        self.compile = gpu if args.compile is None else args.compile
        if gpu:
            torch.backends.cudnn.benchmark = True

    def run(self) -> dict[str, float]:
        from resnet_lit.models import create_model
        from resnet_lit.training.schedules import ScheduleConfig, lr_factor

        a, dev = self.args, self.device
        t_start = time.perf_counter()
        torch.manual_seed(0)
        model = create_model(a.arch, num_classes=10, width=a.width).to(dev)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                              **({"fused": True} if dev.type == "cuda" else {}))
        sched_cfg = ScheduleConfig(kind="step", unit="step", milestones=[32000, 48000])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, sched_cfg))
        model.train()
        end = a.warmup + a.steps
        stamps: list[float] = []
        for i, (x, y) in enumerate(self.dm.train_dataloader()):
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            x = self.dm.transform_batch(x, train=True)  # the same batched pad/crop/flip/mean
            if a.warmup <= i <= end:
                stamps.append(self._now())
            if i == end:
                break
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 50 == 0:
                print(f"hand loop step {i} loss {loss.item():.4f}", flush=True)
        if len(stamps) != a.steps + 1:
            raise RuntimeError("the training set is shorter than warmup + steps batches")
        return summarize(stamps, t_start, time.perf_counter())

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()


def profile_lightning(args: argparse.Namespace, rep: Report) -> None:
    """cProfile of one more fit, limited to the training steps' own functions, by cumulative time
    per step: where the framework's per-step time goes (hooks, logging, metrics, optimiser)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="overhead-prof-") as tmp:
        prof.enable()
        lightning_run(args, Path(tmp) / "run")
        prof.disable()
    steps = args.warmup + args.steps + 1
    stats = pstats.Stats(prof)
    keys = ("training_step", "on_after_batch_transfer", "update", "log", "optimizer_step", "step", "backward",
            "on_train_batch_start", "on_train_batch_end", "_call_callback_hooks", "_call_lightning_module_hook",
            "forward", "__call__", "advance", "run", "closure", "zero_grad", "lr_lambda", "<lambda>")
    rows = []
    for (file, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        ours = any(part in file for part in ("lightning", "resnet_lit", "torchmetrics", "torch/optim"))
        if nc >= steps and func in keys and ours:
            rows.append({"function": f"{Path(file).parent.name}/{Path(file).name}:{line} {func}", "calls": nc,
                         "ms_per_step_cumulative": 1e3 * ct / steps, "ms_per_step_own": 1e3 * tt / steps})
    rows.sort(key=lambda r: -r["ms_per_step_cumulative"])
    rows = rows[: args.profile]
    rep["profile"] = rows
    print("\nprofile of one resnet-lit fit (cProfile inflates Python-heavy code; compare rows, not totals):")
    print(table(rows, ["function", "calls", "ms_per_step_cumulative", "ms_per_step_own"]))
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)
    rep["profile_text"] = out.getvalue()


def count_ops(args: argparse.Namespace, rep: Report) -> None:
    """ATen calls per training step on both sides (a ``TorchDispatchMode`` counts every call): on a
    GPU nearly every one is a kernel launch, so the difference is what the framework adds to the
    device's queue. Per step = (count of a 30-step run - count of a 10-step run) / 20, which
    cancels start-up, sanity checks and tear-down."""
    import collections
    import copy

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    def per_step(run) -> collections.Counter:
        counts = []
        for steps in (10, 30):
            a = copy.copy(args)
            a.warmup, a.steps = 2, steps
            with Count() as mode:
                run(a)
            counts.append(mode.calls)
        return collections.Counter({k: (counts[1][k] - counts[0][k]) / 20 for k in counts[1] | counts[0]})

    with tempfile.TemporaryDirectory(prefix="overhead-ops-") as tmp:
        fit = per_step(lambda a: lightning_run(a, Path(tmp) / f"run{a.steps}"))
    hand = per_step(lambda a: HandLoop(a).run())
    diff = {k: fit[k] - hand[k] for k in fit | hand if fit[k] != hand[k]}
    rep["aten_calls_per_step"] = {"lightning": sum(fit.values()), "hand": sum(hand.values()), "difference": diff}
    print(f"\nATen calls per training step: resnet-lit fit {sum(fit.values()):.1f}, hand loop {sum(hand.values()):.1f}")
    print("  resnet-lit fit minus hand loop: " + ", ".join(f"{k} {v:+g}" for k,
                                                           v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--arch", default="resnet20", help="a configs/cifar10/<arch>.yaml recipe")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pairs", type=int, default=None, help="A/B pairs (default 4, quick 2)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed iterations per run (default 20 CPU / 300 GPU, quick 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations first (default 3 CPU / 30 GPU, quick 1)")
    p.add_argument("--compile", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                   help="override the config's compile setting on both sides (true/false)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="CIFAR-10 archive folder (default .data/ or ../shared/data)")
    p.add_argument("--target", type=float, default=1.03)
    p.add_argument("--width", type=float, default=1.0,
                   help="channel multiplier on both sides; e.g. 0.0625 with --batch 8 makes compute negligible, "
                        "so the step times show the framework's own per-step cost (what matters on a GPU)")
    p.add_argument("--bare", action="store_true",
                   help="also time a third side in each pair: ImageClassifier in a plain Trainer with no callbacks, "
                        "logger or checkpointing")
    p.add_argument("--ops", action="store_true",
                   help="after the pairs, count the ATen calls per training step on both sides "
                        "(kernel launches on a GPU)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the pairs, profile one more resnet-lit fit (cProfile) and print its top N functions")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    setup_threads(args.threads if args.threads is not None else (None if gpu else 1))
    args.data_root = args.data_root or default_data_root("cifar10-jpeg")
    args.pairs = args.pairs or (2 if args.quick else 4)
    args.steps = args.steps or (3 if args.quick else 300 if gpu else 20)
    args.warmup = args.warmup or (1 if args.quick else 30 if gpu else 3)

    rep = Report("overhead.py", args, {
        "device": args.device, "arch": args.arch, "batch": args.batch, "pairs": args.pairs,
        "steps": args.steps, "warmup": args.warmup, "compile": args.compile, "width": args.width,
        "threads": torch.get_num_threads(), "data_root": str(args.data_root),
        "order": "alternating A (resnet-lit fit) / B (hand loop) [/ C (bare Trainer) with --bare], "
                 "median of per-pair ratios",
        "bare": args.bare,
    })
    print_header(rep)
    hand = HandLoop(args)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        for i in range(args.pairs):
            a = lightning_run(args, Path(tmp) / f"run{i}")
            b = hand.run()
            c = bare_run(args, hand) if args.bare else None
            row = {
                "pair": i,
                "ratio": a["median_step_s"] / b["median_step_s"],  # robust to bursts of load from others
                "ratio_window": a["steps_s"] / b["steps_s"],  # includes every periodic cost, and every burst
                "lightning_ms_per_step": 1e3 * a["median_step_s"], "hand_ms_per_step": 1e3 * b["median_step_s"],
                "lightning_window_s": a["steps_s"], "hand_window_s": b["steps_s"],
                "lightning_fixed_s": a["fixed_s"], "hand_fixed_s": b["fixed_s"],
            }
            if c is not None:
                row["bare_ms_per_step"] = 1e3 * c["median_step_s"]
            rows.append(row)
            rep.append("pairs", row)
            bare = f", bare Trainer {row['bare_ms_per_step']:.1f} ms/step" if c is not None else ""
            print(f"pair {i}: resnet-lit fit {row['lightning_ms_per_step']:.1f} ms/step, hand loop "
                  f"{row['hand_ms_per_step']:.1f} ms/step{bare}, ratio {row['ratio']:.4f}", flush=True)
    ratio = median(r["ratio"] for r in rows)
    overhead_ms = median(r["lightning_ms_per_step"] - r["hand_ms_per_step"] for r in rows)
    rep["ratio"] = ratio
    rep["ratio_window"] = median(r["ratio_window"] for r in rows)
    rep["overhead_ms_per_step"] = overhead_ms
    rep["images_per_s"] = {"lightning": args.batch * 1e3 / median(r["lightning_ms_per_step"] for r in rows),
                           "hand": args.batch * 1e3 / median(r["hand_ms_per_step"] for r in rows)}
    rep["fixed_cost_s"] = {"lightning": median(r["lightning_fixed_s"] for r in rows),
                           "hand": median(r["hand_fixed_s"] for r in rows)}
    if args.bare:
        rep["bare_overhead_ms_per_step"] = median(r["bare_ms_per_step"] - r["hand_ms_per_step"] for r in rows)
        rep["cli_additions_ms_per_step"] = median(r["lightning_ms_per_step"] - r["bare_ms_per_step"] for r in rows)
    rep["target"] = args.target
    rep["meets_target"] = ratio <= args.target
    if args.ops:
        count_ops(args, rep)
    if args.profile:
        profile_lightning(args, rep)
    print()
    print(table(rows,
                ["pair", "lightning_ms_per_step", "hand_ms_per_step", *(["bare_ms_per_step"] if args.bare else []),
                       "ratio", "ratio_window", "lightning_fixed_s", "hand_fixed_s"]))
    print(f"\nratio (median over {len(rows)} pairs of median step times) = {ratio:.4f}  (target <= {args.target}); "
          f"window-total ratio {rep.data['ratio_window']:.4f}; Lightning overhead {overhead_ms:+.2f} ms/step; "
          f"time outside the window per run (start-up, warm-up, tear-down): "
          f"{rep.data['fixed_cost_s']['lightning']:.1f} s (resnet-lit fit) "
          f"vs {rep.data['fixed_cost_s']['hand']:.1f} s (hand)")
    if args.bare:
        print("of which Lightning's own loop (bare Trainer minus hand loop) "
              f"{rep.data['bare_overhead_ms_per_step']:+.2f} ms/step, "
              "what resnet-lit fit adds to it (callbacks, logger, checkpointing) "
              f"{rep.data['cli_additions_ms_per_step']:+.2f} ms/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
