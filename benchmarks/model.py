"""Model throughput: training and inference images/s and peak memory, synthetic data.

Each (model, batch, setting) is timed in the same process on fresh weights. A setting is a
"+"-joined list of options, so the GPU run can tell which fast-path step pays for itself:

    eager       fp32, NCHW (the baseline)
    cl          channels_last weights and inputs
    bf16        torch.autocast(bfloat16) around forward and loss (what Lightning's bf16-mixed does)
    compile     nn.Module.compile() on the backbone, in place (as ImageClassifier does);
                compile:MODE picks a mode, e.g. compile:reduce-overhead (CUDA graphs),
                compile:max-autotune-no-cudagraphs
    fused       SGD(fused=True) (default: foreach)

    python benchmarks/model.py --quick
    python benchmarks/model.py --device cuda --models resnet50:256 \
        --settings bf16+cl,bf16+cl+fused,bf16+cl+compile+fused --out r50.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, add_common_args, print_header, setup_threads, table  # noqa: E402

CPU_MODELS = "resnet20:128,resnet20:512,resnet50:32"
GPU_MODELS = "resnet20:128,resnet20:512,resnet50:256"
CPU_SETTINGS = "eager,cl,cl+compile"
GPU_SETTINGS = "eager,cl,bf16,bf16+cl,bf16+cl+fused,bf16+cl+compile+fused"
QUICK_MODELS = "resnet20:128,resnet50:2"
QUICK_SETTINGS = "eager,cl"
OPTIONS = ("eager", "cl", "bf16", "compile", "fused")


@dataclass(frozen=True)
class Setting:
    name: str
    channels_last: bool = False
    bf16: bool = False
    compile_mode: str | None = None  # None: eager; "default": torch.compile's default mode
    fused: bool = False


def parse_setting(text: str) -> Setting:
    opts: dict[str, Any] = {}
    for tok in text.split("+"):
        key, _, arg = tok.partition(":")
        if key not in OPTIONS:
            raise SystemExit(f"unknown setting option {tok!r} in {text!r}: choose from {', '.join(OPTIONS)}")
        if key == "cl":
            opts["channels_last"] = True
        elif key == "bf16":
            opts["bf16"] = True
        elif key == "fused":
            opts["fused"] = True
        elif key == "compile":
            opts["compile_mode"] = arg or "default"
    return Setting(name=text, **opts)


def parse_models(text: str) -> list[tuple[str, int, int]]:
    """'resnet20:128,resnet50:256[:224]' -> [(name, batch, image size)]; CIFAR nets default to 32 px."""
    out = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise SystemExit(f"bad model spec {item!r}: use NAME:BATCH or NAME:BATCH:SIZE, e.g. resnet50:256")
        name, batch = parts[0], int(parts[1])
        size = int(parts[2]) if len(parts) == 3 else (32 if is_cifar(name) else 224)
        out.append((name, batch, size))
    return out


def is_cifar(name: str) -> bool:
    """The 6n+2 CIFAR nets (32 px input, 10 classes); the rest are ImageNet nets (224 px, 1000)."""
    return name.removeprefix("resnet").removeprefix("plain") in {"20", "32", "44", "56", "110", "1202"}


class PeakMemory:
    """Peak memory of one measurement: CUDA allocator peak on a GPU; on a CPU the process's
    resident-set high-water mark, reset through /proc/self/clear_refs (Linux), so it also
    counts the Python process itself (reported as a delta over the RSS at the start)."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        return 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            gc.collect()
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed blocks back, so the RSS delta is this run's
            except OSError:
                pass
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.base = self._status("VmRSS:")

    def peak_mib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        peak = self._status("VmHWM:")
        return (peak - self.base) / 2**20 if peak else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(name: str, s: Setting, device: torch.device, num_classes: int) -> nn.Module:
    from resnet_lit.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes).to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if s.compile_mode is not None:
        model.compile(**({} if s.compile_mode == "default" else {"mode": s.compile_mode}))
    return model


def bench_train(name: str, batch: int, size: int, s: Setting, device: torch.device, warmup: int, steps: int) -> dict:
    num_classes = 10 if is_cifar(name) else 1000
    model = build(name, s, device, num_classes).train()
    opt_kw: dict[str, Any] = {"fused": True} if s.fused else ({"foreach": True} if device.type == "cuda" else {})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, **opt_kw)
    mf = torch.channels_last if s.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=mf)
    y = torch.randint(0, num_classes, (batch,), device=device)
    graphs = s.compile_mode is not None and "reduce-overhead" in s.compile_mode

    def step() -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: earlier graph outputs may be reused
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    mem = PeakMemory(device)
    mem.start()
    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    loss.item()
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    dt = time.perf_counter() - t0
    assert torch.isfinite(loss).item(), f"{name} {s.name}: loss is not finite"
    return {
        "task": "train",
        "images_per_s": batch * steps / dt,
        "ms_per_step": 1e3 * dt / steps,
        "warmup_s": warm_s,
        "peak_mem_mib": mem.peak_mib(),
    }


def bench_infer(name: str, batch: int, size: int, s: Setting, device: torch.device, warmup: int, steps: int) -> dict:
    num_classes = 10 if is_cifar(name) else 1000
    model = build(name, s, device, num_classes).eval()
    mf = torch.channels_last if s.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=mf)
    graphs = s.compile_mode is not None and "reduce-overhead" in s.compile_mode

    def step() -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.bf16):
            return model(x)

    mem = PeakMemory(device)
    mem.start()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "task": "infer",
        "images_per_s": batch * steps / dt,
        "ms_per_step": 1e3 * dt / steps,
        "warmup_s": warm_s,
        "peak_mem_mib": mem.peak_mib(),
    }


def cudagraph_skips() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"].get("cudagraph_skips", 0))
    except Exception:  # private API: absent in some versions
        return -1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=None, help=f"NAME:BATCH[:SIZE],... (CPU default {CPU_MODELS}; GPU {GPU_MODELS})")
    p.add_argument("--settings", default=None, help=f"comma list (CPU default {CPU_SETTINGS}; GPU {GPU_SETTINGS})")
    p.add_argument("--tasks", default="train,infer", help="train, infer or both")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 20, quick 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default 5, quick 1; compile happens here)")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="leave torch.backends.cudnn.benchmark off")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not args.no_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    models = parse_models(args.models or (QUICK_MODELS if args.quick else GPU_MODELS if gpu else CPU_MODELS))
    default = QUICK_SETTINGS if args.quick else GPU_SETTINGS if gpu else CPU_SETTINGS
    settings = [parse_setting(t) for t in (args.settings or default).split(",")]
    tasks = args.tasks.split(",")
    steps = args.steps or (2 if args.quick else 20)
    warmup = args.warmup or (1 if args.quick else 5)
    if any(s.bf16 for s in settings) and not gpu:
        print("# note: bf16 autocast on a CPU measures CPU bf16 kernels, not what a GPU does", flush=True)

    rep = Report(
        "model.py",
        args,
        {"device": str(device), "models": [list(m) for m in models], "settings": [s.name for s in settings],
         "tasks": tasks, "steps": steps, "warmup": warmup, "cudnn_benchmark": torch.backends.cudnn.benchmark,
         "data": "synthetic (torch.randn inputs, random labels)", "optimizer": "SGD momentum 0.9 wd 1e-4"},
    )
    print_header(rep)
    rows: list[dict] = []
    cases = [(m, st, t) for m in models for st in settings for t in tasks]
    for (name, batch, size), s, task in cases:
        fn = bench_train if task == "train" else bench_infer
        rec: dict[str, Any] = {"model": name, "batch": batch, "image_size": size, "setting": s.name, "task": task}
        skips0 = cudagraph_skips()
        interrupted = False
        try:
            rec.update(fn(name, batch, size, s, device, warmup, steps))
        except KeyboardInterrupt:  # gpu.sh's time limit (SIGINT): keep what was measured
            rec.update({"error": "interrupted (time limit)", "images_per_s": None})
            interrupted = True
        except Exception as e:  # one failing setting (e.g. compile on an old stack) must not lose the rest
            rec.update({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                        "images_per_s": None})
        if s.compile_mode and "reduce-overhead" in s.compile_mode:
            rec["cudagraph_skips"] = cudagraph_skips() - skips0
        rows.append(rec)
        rep.append("results", rec)
        err = f"  ERROR {rec['error']}" if "error" in rec else ""
        ips = rec.get("images_per_s")
        print(f"{name:>9} b{batch:<4} {s.name:<34} {task:<5} "
              f"{(f'{ips:10,.1f} img/s' if ips else '          -'):>16}  warmup {rec.get('warmup_s', 0):6.1f} s"
              f"  peak {rec.get('peak_mem_mib') or 0:8,.0f} MiB{err}", flush=True)
        if interrupted:
            break
        if "compile" in s.name:
            torch._dynamo.reset()  # a fresh compile cache for the next measurement
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    print()
    print(table(rows,
                ["model", "batch", "image_size", "setting", "task", "images_per_s", "ms_per_step", "warmup_s",
                 "peak_mem_mib"]))
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
