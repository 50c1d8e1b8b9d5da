"""Start-up cost of ``resnet-lit``: how long ``--version`` and the help take, and how long a short CPU
``fit`` takes to reach its first training step.

Each command runs in a fresh process, the way a user's shell runs it, ``--repeats`` times; the table
gives the median wall time. The two entry points alternate (A B A B) so that load from other
processes on a shared machine hits both alike:

- ``entry``: ``resnet_lit.runs.entry:main``, the console script since 0.2 (answers ``--version`` and
  the help without importing torch or Lightning);
- ``cli``: ``resnet_lit.runs.cli:main``, the console script before it (imports the whole CLI first),
  still what an install made before the change runs until ``pip install -e .`` again.

The fit is the paper's ResNet-20 recipe with the CPU overlay on ``--subset`` real CIFAR-10 images
(decode cache warmed by one unmeasured run), stopped after 2 steps; a ``FirstStep`` callback
(``_steptimer.py``) stamps the first batch's start and the end of the first optimiser step.

    python benchmarks/startup.py --quick
    python benchmarks/startup.py --repeats 7 --out startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Report, add_common_args, default_data_root, print_header, table  # noqa: E402

ENTRY_POINTS = {"entry": "resnet_lit.runs.entry", "cli": "resnet_lit.runs.cli"}
COMMANDS = {
    "--version": ["--version"],
    "--help": ["--help"],
    "fit --help": ["fit", "--help"],
    "export --help": ["export", "--help"],
    "report --help": ["report", "--help"],
}


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), str(Path(__file__).parent),
                                         env.get("PYTHONPATH", "")])
    return env


def _script(module: str) -> list[str]:
    """What the console script runs: import the entry point's module, call its main with sys.argv."""
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


def time_command(module: str, args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([*_script(module), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


def time_first_step(module: str, args: argparse.Namespace, env: dict[str, str], work: Path, i: int) -> dict:
    stamps = work / f"first-{module}-{i}.json"
    argv = ["fit", "--config", "configs/cifar10/resnet20.yaml", "--config", "configs/trainer/cpu.yaml",
            "--data.root", str(args.data_root), "--data.subset", str(args.subset), "--data.batch_size", "128",
            "--data.cache_dir", str(args.cache_dir), "--run_dir", str(work / f"run-{module}-{i}"),
            "--model.schedule.steps_at_batch", "null", "--trainer.max_steps", "2",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks+=" + json.dumps({"class_path": "_steptimer.FirstStep",
                                                  "init_args": {"path": str(stamps)}})]
    start = time.time()
    done = subprocess.run([*_script(module), *argv], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    end = time.time()
    if done.returncode != 0 or not stamps.is_file():
        raise RuntimeError(f"fit exited {done.returncode}: {done.stderr[-3000:]}")
    first = json.loads(stamps.read_text())
    return {"to_first_batch_s": first["first_batch_start"] - start,
            "to_first_step_end_s": first["first_step_end"] - start, "whole_process_s": end - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command per entry point")
    parser.add_argument("--fit_repeats", type=int, default=3, help="runs of the short fit (entry point only)")
    parser.add_argument("--subset", type=int, default=1024, help="CIFAR-10 training images of the short fit")
    parser.add_argument("--data_root", type=Path, default=default_data_root("cifar10-jpeg"))
    parser.add_argument("--cache_dir", type=Path, default=None, help="decode cache (default: a temporary one)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.fit_repeats = 2, 1
    threads = args.threads or 1
    env = _env(threads)
    report = Report("startup.py", args, {"repeats": args.repeats, "fit_repeats": args.fit_repeats,
                                         "subset": args.subset, "threads": threads})
    print_header(report)
    rows = []
    for name, command in COMMANDS.items():
        times: dict[str, list[float]] = {key: [] for key in ENTRY_POINTS}
        for _ in range(args.repeats):
            for key, module in ENTRY_POINTS.items():  # alternate A B A B
                times[key].append(time_command(module, command, env))
        row = {"command": f"resnet-lit {name}", **{f"{k}_s": statistics.median(v) for k, v in times.items()}}
        rows.append(row)
        report.append("commands", {**row, "all_s": times})
        print(f"{row['command']}: entry {row['entry_s']:.2f} s, cli {row['cli_s']:.2f} s", flush=True)
    print(table(rows, ["command", "entry_s", "cli_s"]))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.cache_dir is None:
            args.cache_dir = work / "cache"
        time_first_step(ENTRY_POINTS["entry"], args, env, work, -1)  # decodes into the cache: not measured
        fits = [time_first_step(ENTRY_POINTS["entry"], args, env, work, i) for i in range(args.fit_repeats)]
    fit = {key: statistics.median(f[key] for f in fits) for key in fits[0]}
    report["first_step"] = {**fit, "all": fits}
    print(table([{"what": "short CPU fit, ResNet-20, batch 128 (warm decode cache)", **fit}],
                ["what", "to_first_batch_s", "to_first_step_end_s", "whole_process_s"]))


if __name__ == "__main__":
    main()
