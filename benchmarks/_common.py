"""Helpers shared by the benchmark scripts: machine and version facts, tables, JSON output.

Every script records *where* a figure came from (CPU model, cores, GPU, library versions,
command line, date), because a throughput number without its machine is meaningless.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # ../shared/data, as the tests use it


def default_data_root(name: str) -> Path:
    """`.data/<name>` inside the checkout if present (the GPU machine gets a carried copy there),
    else ../shared/data/<name>."""
    local = REPO_ROOT / ".data" / name
    return local if local.is_dir() else SHARED_DATA / name


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "lightning", "torchmetrics", "pillow", "numpy", "resnet-lit"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="tiny step counts: under a minute on a CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")


def setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


class Report:
    """Collects results and (re)writes the JSON file after every addition, so a run killed by a
    time limit still leaves what it had measured."""

    def __init__(self, script: str, args: argparse.Namespace, settings: dict[str, Any]):
        self.path: Path | None = args.out
        self.data: dict[str, Any] = {
            "script": script,
            "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": versions(),
            "settings": settings,
        }
        self.flush()

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def append(self, key: str, record: dict[str, Any]) -> None:
        self.data.setdefault(key, []).append(record)
        self.flush()

    def flush(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.path)


def print_header(report: Report) -> None:
    m, v = report.data["machine"], report.data["versions"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    print(f"# {report.data['script']}  {report.data['date']}")
    print(f"# CPU {m['cpu']} ({m['cpu_cores']} cores, torch threads {m['torch_threads']}){gpu}")
    print(
        "# python {python}, torch {torch}, torchvision {torchvision}, lightning {lightning}".format(**v),
        flush=True,
    )


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain markdown table (pastes into docs/benchmarks.md as is)."""

    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}"
        if isinstance(x, int) and not isinstance(x, bool):
            return f"{x:,}"
        return "" if x is None else str(x)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += ["| " + " | ".join(x.rjust(w) for x, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall-clock seconds of fn() (perf_counter)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out
