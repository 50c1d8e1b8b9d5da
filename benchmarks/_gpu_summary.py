"""Helpers for gpu.sh: read the CSV logs of `resnet-lit fit/test` runs and write the summary.

    python benchmarks/_gpu_summary.py fit RUN_DIR CLOCK_JSON WALL_S BATCH OUT_JSON  -> prints the projected 64k time (s)
    python benchmarks/_gpu_summary.py test RUN_DIR OUT_JSON KEY                 -> adds test/error to OUT_JSON
    python benchmarks/_gpu_summary.py summary OUT_DIR                           -> OUT_DIR/summary.md
    python benchmarks/_gpu_summary.py nest OUT_JSON KEY PART_JSON  -> PART_JSON's figures under KEY in OUT_JSON
    python benchmarks/_gpu_summary.py faster_eval RO_JSON  -> "eager" or "compiled": the faster projection
    python benchmarks/_gpu_summary.py elapsed CKPT  -> training seconds Lightning's Timer recorded
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

PAPER_STEPS = 64_000
EPOCH_STEPS = 390  # 50,000 / 128, drop_last


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    out = []
    for r in rows:
        v = r.get(key)
        if v not in (None, ""):
            out.append((int(float(r.get("step") or 0)), float(v)))
    return out


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def fit(run_dir: Path, clock: Path, wall_s: float, batch: int, out: Path) -> None:
    """Summarise one `resnet-lit fit` (its RunClock JSON and metrics.csv); print the projected
    wall time of the paper's 64k-iteration schedule in seconds (10**9 when unknown)."""
    res: dict[str, Any] = {"run_dir": str(run_dir), "wall_s": wall_s, "batch": batch}
    c = load(clock)
    res["clock"] = c
    if c.get("mean_step_s"):
        its = 1 / c["mean_step_s"]
        res["iterations_per_s"] = its
        res["images_per_s"] = its * batch
        epoch_end = c.get("epoch_end_s") or c.get("validation_s") or 0.0
        # Process start-up and tear-down outside the callback's view (imports, CLI parsing, exit),
        # start-up until batch 0 (data, model), the warm-up steps (compile, cudnn autotuning),
        # then steady steps and the per-epoch validation + checkpoint time.
        outside = max(0.0, wall_s - (c.get("train_wall_s") or 0.0))
        res["projected_64k_s"] = (outside + (c.get("startup_s") or 0) + (c.get("warm_steps_s") or 0)
                                  + PAPER_STEPS * c["mean_step_s"] + (PAPER_STEPS // EPOCH_STEPS) * max(0.0, epoch_end))
        res["projected_64k_steps_only_s"] = PAPER_STEPS * c["mean_step_s"]
    config = run_dir / "config.yaml"  # what the run used, as LightningCLI saved it
    if config.is_file():
        import yaml

        cfg = yaml.safe_load(config.read_text()) or {}
        model, data = cfg.get("model") or {}, (cfg.get("data") or {}).get("init_args") or {}
        res["settings"] = {
            "precision": (cfg.get("trainer") or {}).get("precision"), "compile": model.get("compile"),
            "compile_eval": model.get("compile_eval"), "compile_step": model.get("compile_step"),
            "channels_last": model.get("channels_last"),
            "batch_size": data.get("batch_size"), "eval_batch_size": data.get("eval_batch_size"),
        }
    rows = read_metrics(run_dir)
    ips = column(rows, "train/images_per_s")
    if ips:  # the product's own Throughput callback, for comparison
        res["logged_images_per_s_median"] = statistics.median(v for _, v in ips[len(ips) // 2:])
    for key in ("val/error", "train/error", "train/loss"):
        col = column(rows, key)
        if col:
            res[f"last_{key.replace('/', '_')}"] = col[-1][1]
            res[f"last_{key.replace('/', '_')}_step"] = col[-1][0]
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(int(res.get("projected_64k_s", 10**9)))


def test(run_dir: Path, out: Path, key: str) -> None:
    # `resnet-lit test` writes <run_dir>/test/metrics.csv (older CLI versions: <run_dir>/metrics.csv)
    rows = [r for p in sorted(run_dir.rglob("metrics.csv")) for r in read_metrics(p.parent)]
    res = load(out)
    for name in ("test/error", "test/error5", "test/acc1"):
        col = column(rows, name)
        if col:
            res[f"{key}_{name.replace('/', '_')}"] = col[-1][1]
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(res.get(f"{key}_test_error", "no test/error logged"))


def fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def summary(out_dir: Path) -> None:
    lines = ["# GPU benchmark summary (benchmarks/gpu.sh)", ""]
    for name in ("model_resnet50.json", "model_resnet20.json"):
        d = load(out_dir / name)
        if not d:
            lines += [f"{name}: not produced", ""]
            continue
        m, v = d["machine"], d["versions"]
        lines += [f"## {name}",
                  f"{m.get('gpu')} | torch {v.get('torch')} | lightning {v.get('lightning')} | {d['date']}",
                  f"`{d['command']}`", "",
                  "| model | batch | setting | task | images/s | ms/step | warm-up s | peak MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in d.get("results", []):
            lines.append(f"| {r['model']} | {r['batch']} | {r['setting']} | {r['task']} | "
                         f"{fmt(r.get('images_per_s'))} | {fmt(r.get('ms_per_step'), 2)} | {fmt(r.get('warmup_s'))} | "
                         f"{fmt(r.get('peak_mem_mib'), 0)} |"
                         + (f" {r['error']}" if r.get("error") else ""))
        lines.append("")
    for name in ("cifar_short.json", "cifar_reduce_overhead.json", "cifar_full.json"):
        d = load(out_dir / name)
        lines += [f"## {name}", "```", json.dumps(d, indent=2) if d else "not produced", "```", ""]
    d = load(out_dir / "data.json")
    if d:
        lines += ["## data.json",
                  f"cifar_ratio {fmt(d.get('cifar_ratio'))}, imagenet_ratio {fmt(d.get('imagenet_ratio'), 2)}",
                  "```", json.dumps({k: d.get(k) for k in ("cifar", "imagenet")}, indent=2), "```", ""]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def nest(out: Path, key: str, part: Path) -> None:
    res = load(out)
    res[key] = load(part) or "not produced"
    out.write_text(json.dumps(res, indent=2) + "\n")


def faster_eval(ro_json: Path) -> str:
    """Which validation the cifar_ro step projected faster for the 64k schedule ("compiled" if unknown)."""
    d = load(ro_json)
    part = d.get("eager_eval")  # a dict, or "not produced"
    eager = part.get("projected_64k_s") if isinstance(part, dict) else None
    compiled = d.get("projected_64k_s")
    return "eager" if eager is not None and compiled is not None and eager < compiled else "compiled"


def elapsed(ckpt: Path) -> int:
    """Seconds of training that Lightning's Timer callback (trainer.max_time) saved in a checkpoint."""
    import torch

    c = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    timers = [v for k, v in c.get("callbacks", {}).items() if str(k).startswith("Timer")]
    print(f"{ckpt}: global_step {c.get('global_step')}", file=sys.stderr)
    return int(timers[0].get("time_elapsed", {}).get("train", 0)) if timers else 0


if __name__ == "__main__":
    cmd, *a = sys.argv[1:]
    if cmd == "fit":
        fit(Path(a[0]), Path(a[1]), float(a[2]), int(a[3]), Path(a[4]))
    elif cmd == "test":
        test(Path(a[0]), Path(a[1]), a[2])
    elif cmd == "summary":
        summary(Path(a[0]))
    elif cmd == "nest":
        nest(Path(a[0]), a[1], Path(a[2]))
    elif cmd == "faster_eval":
        print(faster_eval(Path(a[0])))
    elif cmd == "elapsed":
        print(elapsed(Path(a[0])))
    else:
        raise SystemExit(f"unknown command {cmd!r}: fit, test, summary, nest, faster_eval or elapsed")
