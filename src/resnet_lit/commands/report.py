"""Turn training logs into the paper's Figure 6 and a table of final errors.

`resnet-lit report RUN [RUN ...] --out DIR` reads the Lightning CSV logs (`metrics.csv`) of runs,
draws training error (dashed) and test/validation error (solid) against iterations, plain nets on
the left and ResNets on the right as in Figure 6 of He et al. 2015, and writes a markdown table
of the final errors next to the paper's numbers. It reads only the csv module and matplotlib's
Agg canvas (no pandas, no pyplot global state), so it runs on a login node while training goes on.

A run is a folder holding a `metrics.csv` somewhere below it (or the csv path itself). Its arch
comes from the `config.yaml` LightningCLI saves next to the logs (`model.arch`), else from the
folder name (`resnet56`, `plain20-cpu`, ...).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Column names ImageClassifier logs (errors in percent, top-1). The `_epoch` spellings are what
# Lightning writes when a metric is logged with both on_step and on_epoch; accepted as fallbacks.
TRAIN_ERROR = ("train/error", "train/error_epoch")
VAL_ERROR = ("val/error", "val/error_epoch")
TEST_ERROR = ("test/error",)

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)

# Paper numbers, top-1 error %. CIFAR-10: Table 6 test error (110 is best of 5). ImageNet:
# 10-crop validation error, Table 2 (plain-18/34 and ResNet-18 with option A) and Table 3.
# Plain CIFAR nets have only curves (Figure 6), no table number.
PAPER_ERRORS: dict[str, float | dict[str, float] | None] = {
    "resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
    "resnet110": 6.43, "resnet1202": 7.93,
    "plain20": None, "plain32": None, "plain44": None, "plain56": None,
    "plain110": None, "plain1202": None,
    "plain18": 27.94, "plain34": 28.54, "resnet18": 27.88,
    "resnet34": {"A": 25.03, "B": 24.52, "C": 24.19},
    "resnet50": 22.85, "resnet101": 21.75, "resnet152": 21.43,
}
PAPER_SOURCE = {"cifar10": "Table 6, test error", "imagenet": "Tables 2-3, 10-crop top-1 val error"}

_ARCH_RE = re.compile(r"(plain|resnet)[-_]?(\d+)", re.IGNORECASE)
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


class ReportError(ValueError):
    """A run path or log that cannot be read; the message names the path and what was expected."""


@dataclass
class Run:
    """One run's logs: every metric as a (step, value) series, plus what its config says."""

    name: str
    csv_path: Path
    arch: str | None
    shortcut: str | None = None
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    last_step: int = -1  # the largest `step` in any row
    last_epoch: int = -1
    max_steps: int | None = None  # from config.yaml trainer.max_steps (None or -1: unset)
    max_epochs: int | None = None
    dropped_partial_line: bool = False  # a half-written last line was skipped (run still going)

    def column(self, names: tuple[str, ...]) -> list[tuple[int, float]]:
        """The first of `names` that was logged, as (step, value) pairs; [] if none was."""
        for name in names:
            if self.series.get(name):
                return self.series[name]
        return []

    @property
    def depth(self) -> int | None:
        match = _ARCH_RE.search(self.arch or "")
        return int(match.group(2)) if match else None

    @property
    def is_plain(self) -> bool:
        return (self.arch or "").lower().startswith("plain")

    @property
    def family(self) -> str:
        """'cifar10', 'imagenet' or 'other', decided by the depth in the arch name."""
        if self.depth in CIFAR_DEPTHS:
            return "cifar10"
        if self.depth in IMAGENET_DEPTHS:
            return "imagenet"
        return "other"

    @property
    def finished(self) -> bool | None:
        """True when the logs reach the configured length; None when the config does not say."""
        if self.max_steps is not None and self.max_steps > 0:
            return self.last_step >= self.max_steps - 1
        if self.max_epochs is not None and self.max_epochs > 0:
            return self.last_epoch >= self.max_epochs - 1
        return None

    @property
    def paper_error(self) -> float | None:
        paper = PAPER_ERRORS.get(_canonical_arch(self.arch))
        if isinstance(paper, dict):  # ResNet-34: one number per shortcut option; B is the default
            return paper.get((self.shortcut or "B").upper())
        return paper


def _canonical_arch(arch: str | None) -> str:
    match = _ARCH_RE.search(arch or "")
    return f"{match.group(1).lower()}{match.group(2)}" if match else ""


def find_metrics(path: str | Path) -> list[Path]:
    """All `metrics.csv` files a path stands for (itself, or every one below it, sorted)."""
    path = Path(path)
    if not path.exists():
        raise ReportError(
            f"{path} does not exist: expected a run folder (with a metrics.csv below it) or a metrics.csv file"
        )
    if path.is_file():
        if path.suffix != ".csv":
            raise ReportError(f"{path} is not a .csv file: expected a run folder or the run's metrics.csv")
        return [path]
    found = sorted(path.rglob("metrics.csv"))
    if not found:
        raise ReportError(
            f"{path} holds no metrics.csv: expected a run folder written by `resnet-lit fit` (CSV logger), "
            "e.g. runs/<name>/"
        )
    return found


def _read_config(csv_path: Path, stop_at: Path) -> dict[str, Any]:
    """The nearest config.yaml from the csv's folder up to `stop_at` (LightningCLI writes one per run)."""
    import yaml  # PyYAML comes with jsonargparse

    folder = csv_path.resolve().parent
    while True:
        candidate = folder / "config.yaml"
        if candidate.is_file():
            try:
                loaded = yaml.safe_load(candidate.read_text())
            except yaml.YAMLError as err:
                raise ReportError(f"{candidate} is not valid YAML ({err}): fix or remove it") from err
            return loaded if isinstance(loaded, dict) else {}
        if folder == stop_at or folder.parent == folder:
            return {}
        folder = folder.parent


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    """`config[key]`, looking inside `init_args` when the section was saved in class_path form."""
    section = config.get(key) or {}
    if isinstance(section, dict) and isinstance(section.get("init_args"), dict):
        section = {**section, **section["init_args"]}
    return section if isinstance(section, dict) else {}


def _to_float(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read one run: a metrics.csv path or a folder with exactly one metrics.csv below it.

    Sparse rows (Lightning writes only the columns logged at that step) are fine. A last line
    without its newline is a row still being written by a running job: it is dropped. The
    `test/*` metrics of a `resnet-lit test` of the run (its `test/metrics.csv`) are merged in.
    """
    path = Path(path)
    found = [p for p in find_metrics(path) if not _is_evaluation_log(p)] or find_metrics(path)
    if len(found) > 1:
        listing = ", ".join(str(p) for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise ReportError(
            f"{path} holds {len(found)} metrics.csv files ({listing}): pass one of them, or use load_runs()"
        )
    csv_path = found[0]
    folder_name = csv_path.resolve().parent.name
    stop_at = path.resolve() if path.is_dir() else csv_path.resolve().parent
    if re.fullmatch(r"version_\d+", folder_name):  # CSVLogger's default layout name/version_N
        folder_name = csv_path.resolve().parent.parent.name
        if not path.is_dir():
            stop_at = stop_at.parent
    config = _read_config(csv_path, stop_at)
    model, trainer = _section(config, "model"), _section(config, "trainer")
    run = Run(
        name=name or (path.name if path.is_dir() else folder_name),
        csv_path=csv_path,
        arch=model.get("arch") or (_canonical_arch(folder_name) or None),
        shortcut=model.get("shortcut"),
        max_steps=trainer.get("max_steps"),
        max_epochs=trainer.get("max_epochs"),
    )
    text = csv_path.read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        run.dropped_partial_line = True
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        return run  # a job that has not logged yet
    if "step" not in header:
        raise ReportError(
            f"{csv_path} has no 'step' column (header: {','.join(header[:8])}): "
            "expected a Lightning CSVLogger metrics.csv"
        )
    for row in reader:
        if len(row) != len(header):
            continue  # a row cut by a concurrent rewrite of the file
        values = dict(zip(header, row))
        step = _to_float(values.pop("step"))
        if step is None:
            continue
        run.last_step = max(run.last_step, int(step))
        epoch = _to_float(values.pop("epoch", None))
        if epoch is not None:
            run.last_epoch = max(run.last_epoch, int(epoch))
        for key, text_value in values.items():
            value = _to_float(text_value)
            if value is not None:
                run.series.setdefault(key, []).append((int(step), value))
    evaluation = csv_path.parent / "test" / "metrics.csv"
    if evaluation.is_file() and evaluation != csv_path:  # `resnet-lit test` logged beside the run
        tested = load_run(evaluation)
        for key, values in tested.series.items():
            if key.startswith("test/"):
                run.series[key] = values
    return run


# `resnet-lit validate/test/predict` log into these subfolders of the training run's directory.
EVALUATION_DIRS = ("test", "validate", "predict")


def _is_evaluation_log(csv_path: Path) -> bool:
    """A metrics.csv that an evaluation wrote beside a training run (merged into, not beside, it)."""
    return csv_path.parent.name in EVALUATION_DIRS and (csv_path.parent.parent / "metrics.csv").is_file()


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Every run below the given paths; a folder with several metrics.csv gives several runs.
    The test/ (validate/, predict/) logs that evaluations write inside a run are not runs of their own."""
    runs = []
    for path in paths:
        found = [p for p in find_metrics(path) if not _is_evaluation_log(p)] or find_metrics(path)
        for csv_path in found:
            run_dir = csv_path.parent
            if re.fullmatch(r"version_\d+", run_dir.name):  # CSVLogger's default name/version_N
                run_dir = run_dir.parent
            # name a run by its folder, relative to the given one when that holds several runs
            name = run_dir.name if Path(path).is_file() or run_dir == Path(path) else str(run_dir.relative_to(path))
            runs.append(load_run(csv_path, name=name))
    return runs


def _sort_key(run: Run) -> tuple:
    return (not run.is_plain, run.depth or 0, run.name)


def missing_columns(run: Run) -> list[str]:
    """Which of the curves Figure 6 needs are absent from a run's logs."""
    missing = []
    if not run.column(TRAIN_ERROR):
        missing.append("train/error")
    if not run.column(VAL_ERROR) and not run.column(TEST_ERROR):
        missing.append("val/error")
    return missing


def plot_figure6(
    runs: list[Run], out: str | Path, title: str | None = None, ylim: tuple[float, float] | None = None
) -> Path:
    """Draw Figure 6: plain nets left, ResNets right (one panel if only one family has runs);
    train error dashed, val/test error solid.

    Colour follows depth so plain-20 and ResNet-20 match across panels. x is iterations in units
    of 1e4 like the paper (1e3, or plain iterations, for shorter runs such as CPU studies).
    """
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = sorted(runs, key=_sort_key)
    last = max((r.last_step for r in runs), default=0)
    unit = 1e4 if last >= 2e4 else 1e3 if last >= 2e3 else 1.0
    depths = sorted({r.depth or 0 for r in runs})
    colour_of = {d: _COLORS[i % len(_COLORS)] for i, d in enumerate(depths)}

    families = [([r for r in runs if r.is_plain], "plain"), ([r for r in runs if not r.is_plain], "ResNet")]
    if any(family_runs for family_runs, _ in families):  # one panel when only one family has runs
        families = [(family_runs, label) for family_runs, label in families if family_runs]
    fig = Figure(figsize=(5 * len(families), 4), dpi=100)
    axes = list(fig.subplots(1, len(families), sharey=True, squeeze=False)[0])
    for ax, (panel_runs, label) in zip(axes, families):
        used: set[str] = set()
        for run in panel_runs:
            colour = colour_of[run.depth or 0]
            if colour in used:  # two runs of the same depth (e.g. shortcut A/B/C): next free colour
                colour = next((c for c in _COLORS if c not in used), colour)
            used.add(colour)
            name = f"{label}-{run.depth}" if run.depth else run.name
            if run.shortcut and run.family == "imagenet" and not run.is_plain:
                name += f" ({str(run.shortcut).upper()})"
            train, evaluated = run.column(TRAIN_ERROR), run.column(VAL_ERROR) or run.column(TEST_ERROR)
            # the CSV's step is 0-based: a value logged at step s follows s + 1 iterations
            if train:
                ax.plot([(s + 1) / unit for s, _ in train], [v for _, v in train], "--", color=colour, linewidth=1)
            if evaluated:
                ax.plot(
                    [(s + 1) / unit for s, _ in evaluated],
                    [v for _, v in evaluated],
                    "-",
                    color=colour,
                    linewidth=2,
                    label=name,
                )
            elif train:
                ax.plot([], [], "-", color=colour, linewidth=2, label=f"{name} (train only)")
        ax.set_xlabel(f"iter. (1e{int(math.log10(unit))})" if unit > 1 else "iter.")
        ax.set_title(("plain nets" if label == "plain" else "ResNets") + ("" if panel_runs else " (no runs)"))
        ax.grid(alpha=0.3)
        if panel_runs:
            ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("error (%)")
    if ylim is not None:
        axes[0].set_ylim(*ylim)
    # wrapped to the figure's width (about 60 characters a panel at this size)
    fig.suptitle(
        textwrap.fill(title or "training error (dashed), test/val error (solid)", 60 * len(families)), fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def error_table(runs: list[Run]) -> str:
    """Markdown table of final errors (percent) next to the paper's, with notes on missing data."""
    lines = [
        "| run | arch | steps | finished | final train err % | final val err % | best val err % | test err % "
        "| paper err % |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for run in sorted(runs, key=lambda r: (r.family, *_sort_key(r))):
        train, val, test = run.column(TRAIN_ERROR), run.column(VAL_ERROR), run.column(TEST_ERROR)
        finished = {True: "yes", False: "no (running or stopped)", None: "?"}[run.finished]
        arch = run.arch or "?"
        if run.shortcut and _canonical_arch(run.arch) == "resnet34":
            arch += f" ({str(run.shortcut).upper()})"
        lines.append(
            f"| {run.name} | {arch} | {run.last_step + 1 if run.last_step >= 0 else 0} | {finished} "
            f"| {_fmt(train[-1][1] if train else None)} | {_fmt(val[-1][1] if val else None)} "
            f"| {_fmt(min(v for _, v in val) if val else None)} | {_fmt(test[-1][1] if test else None)} "
            f"| {_fmt(run.paper_error)} |"
        )
        missing = missing_columns(run)
        if run.last_step < 0:
            notes.append(f"- {run.name}: no rows logged yet ({run.csv_path})")
        elif missing:
            notes.append(f"- {run.name}: no {' or '.join(missing)} column in {run.csv_path}")
        if run.dropped_partial_line:
            notes.append(f"- {run.name}: last line was half-written (run still going) and was skipped")
    families = sorted({r.family for r in runs} & set(PAPER_SOURCE))
    lines.append("")
    lines.append(
        "Errors are top-1 in percent. Steps = optimiser steps logged. Paper: "
        + "; ".join(f"{f}: {PAPER_SOURCE[f]}" for f in families)
        + ("." if families else "none for these archs.")
    )
    common = common_step_errors(runs)
    if common:
        lines.append("")
        lines.extend(common)
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


def _at_step(series: list[tuple[int, float]], step: int) -> float | None:
    """The last value logged at or before `step` (series are in logging order)."""
    values = [v for s, v in series if s <= step]
    return values[-1] if values else None


def common_step_errors(runs: list[Run]) -> list[str]:
    """When the runs of a family stopped at different iterations (one still going, one cut by a
    time limit), their final errors are not comparable: compare them at the last iteration where
    every run logged a training error."""
    lines = []
    for family in sorted({r.family for r in runs}):
        family_runs = sorted((r for r in runs if r.family == family), key=_sort_key)
        trains = [r.column(TRAIN_ERROR) for r in family_runs]
        if len(family_runs) < 2 or not all(trains) or len({t[-1][0] for t in trains}) == 1:
            continue
        step = min(t[-1][0] for t in trains)
        values = ", ".join(f"{r.name} {_fmt(_at_step(t, step))}" for r, t in zip(family_runs, trains))
        lines.append(f"Training error % at iteration {step + 1}, the last one every {family} run reached: {values}.")
    return lines


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="resnet-lit report",
        description="Figure 6-style plots and a table of final errors from the CSV logs of runs.",
    )
    parser.add_argument("runs", nargs="+", help="run folders (a metrics.csv anywhere below) or metrics.csv files")
    parser.add_argument(
        "--out", default="reports", help="output folder for figure6_<family>.png and errors.md (default: reports)"
    )
    parser.add_argument("--title", default=None, help="figure title (default: a description of the curves)")
    parser.add_argument(
        "--ylim",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="error axis range in percent, e.g. 0 20 like the paper",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`resnet-lit report RUN [RUN ...] [--out DIR]`: returns 0, or 2 with a one-line error."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        runs = load_runs(args.runs)
    except (ReportError, OSError) as err:
        print(f"resnet-lit report: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for family in sorted({r.family for r in runs}):
        family_runs = [r for r in runs if r.family == family]
        path = plot_figure6(
            family_runs, out / f"figure6_{family}.png", title=args.title, ylim=tuple(args.ylim) if args.ylim else None
        )
        print(f"wrote {path}")
    table = error_table(runs)
    (out / "errors.md").write_text(table)
    print(f"wrote {out / 'errors.md'}\n")
    print(table, end="")
    return 0
