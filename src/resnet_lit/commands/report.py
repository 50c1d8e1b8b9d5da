"""Turn training logs into the paper's Figure 6 and a table of final errors.

`resnet-lit report RUN [RUN ...] --out DIR` reads the Lightning CSV logs (`metrics.csv`) of runs,
draws training error (dashed) and test/validation error (solid) against iterations, plain nets on
the left and ResNets on the right as in Figure 6 of He et al. 2015, and writes a markdown table
of the final errors next to the paper's numbers. It reads only the csv module and matplotlib's
Agg canvas (no pandas, no pyplot global state), so it runs on a login node while training goes on.

A run is a folder holding a `metrics.csv` somewhere below it (or the csv path itself). Its arch
comes from the `config.yaml` LightningCLI saves next to the logs (`model.arch`), else from the
folder name (`resnet56`, `plain20-cpu`, ...). Reading the logs is ``run_logs.py``'s part.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

from resnet_lit.commands.run_logs import (  # noqa: F401 (report.load_run and the rest stay importable from here)
    CIFAR_DEPTHS,
    EVALUATION_DIRS,
    IMAGENET_DEPTHS,
    PAPER_ERRORS,
    TEST_ERROR,
    TRAIN_ERROR,
    VAL_ERROR,
    ReportError,
    Run,
    canonical_arch,
    find_metrics,
    load_run,
    load_runs,
)
from resnet_lit.runs.exit_codes import OK, USAGE

PAPER_SOURCE = {"cifar10": "Table 6, test error", "imagenet": "Tables 2-3, 10-crop top-1 val error"}

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _sort_key(run: Run) -> tuple:
    return (not run.is_plain, run.depth or 0, run.name)


def missing_columns(run: Run) -> list[str]:
    """Which of the curves Figure 6 needs are absent from a run's logs."""
    missing = []
    if not run.train_curve():
        missing.append("train/error")
    if not run.column(VAL_ERROR) and not run.column(TEST_ERROR):
        missing.append("val/error")
    return missing


def _legend_name(run: Run, label: str) -> str:
    """'ResNet-20', 'plain-34', 'ResNet-34 (A)' for the paper's nets, else the run's name."""
    name = f"{label}-{run.depth}" if run.depth else run.name
    if run.shortcut and run.family == "imagenet" and not run.is_plain:
        name += f" ({str(run.shortcut).upper()})"
    return name


def legend_names(runs: list[Run], label: str) -> list[str]:
    """One legend entry per run; runs that would share one (two ResNet-20 runs) add their run's name."""
    names = [_legend_name(run, label) for run in runs]
    return [f"{name} ({run.name})" if names.count(name) > 1 and name != run.name else name
            for run, name in zip(runs, names)]


# A run this many times shorter than the longest one would be squeezed against the y axis of a
# linear x axis (a 2k-iteration CPU study beside the 64k schedule): the x axis turns logarithmic.
LOG_X_RATIO = 10


def uses_log_x(runs: list[Run]) -> bool:
    lengths = [r.last_step + 1 for r in runs if r.last_step >= 0]
    return len(lengths) > 1 and max(lengths) >= LOG_X_RATIO * min(lengths)


def plot_figure6(
    runs: list[Run], out: str | Path, title: str | None = None, ylim: tuple[float, float] | None = None
) -> Path:
    """Draw Figure 6 (``figure6``) into ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = figure6(runs, title, ylim)
    fig.savefig(out, dpi=100)
    return out


def figure6(runs: list[Run], title: str | None = None, ylim: tuple[float, float] | None = None) -> Any:
    """Figure 6 as a matplotlib Figure: plain nets left, ResNets right (one panel if only one family
    has runs); train error dashed, val/test error solid, a marker on a curve of one point (a run
    validated once would draw nothing otherwise).

    Colour follows depth so plain-20 and ResNet-20 match across panels. x is iterations in units
    of 1e4 like the paper (1e3, or plain iterations, for shorter runs such as CPU studies), on a
    log scale when the runs' lengths differ by ``LOG_X_RATIO`` or more.
    """
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state

    runs = sorted(runs, key=_sort_key)
    last = max((r.last_step for r in runs), default=0)
    log_x = uses_log_x(runs)
    unit = 1.0 if log_x else 1e4 if last >= 2e4 else 1e3 if last >= 2e3 else 1.0
    depths = sorted({r.depth or 0 for r in runs})
    colour_of = {d: _COLORS[i % len(_COLORS)] for i, d in enumerate(depths)}

    families = [([r for r in runs if r.is_plain], "plain"), ([r for r in runs if not r.is_plain], "ResNet")]
    if any(family_runs for family_runs, _ in families):  # one panel when only one family has runs
        families = [(family_runs, label) for family_runs, label in families if family_runs]
    fig = Figure(figsize=(5 * len(families), 4), dpi=100)
    axes = list(fig.subplots(1, len(families), sharey=True, squeeze=False)[0])
    for ax, (panel_runs, label) in zip(axes, families):
        used: set[str] = set()
        for run, name in zip(panel_runs, legend_names(panel_runs, label)):
            colour = colour_of[run.depth or 0]
            if colour in used:  # two runs of the same depth (e.g. shortcut A/B/C): next free colour
                colour = next((c for c in _COLORS if c not in used), colour)
            used.add(colour)
            train, evaluated = run.train_curve(), run.column(VAL_ERROR) or run.column(TEST_ERROR)
            # the CSV's step is 0-based: a value logged at step s follows s + 1 iterations
            if train:
                ax.plot([(s + 1) / unit for s, _ in train], [v for _, v in train], "--", color=colour, linewidth=1,
                        marker="x" if len(train) == 1 else None)
            if evaluated:
                ax.plot([(s + 1) / unit for s, _ in evaluated], [v for _, v in evaluated], "-", color=colour,
                        linewidth=2, label=name, marker="o" if len(evaluated) == 1 else None)
            elif train:
                ax.plot([], [], "-", color=colour, linewidth=2, label=f"{name} (train only)")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(f"iter. (1e{int(math.log10(unit))})" if unit > 1 else "iter. (log scale)" if log_x else "iter.")
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
    return fig


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
        train, val, test = run.column(TRAIN_ERROR) or run.train_curve(), run.column(VAL_ERROR), run.column(TEST_ERROR)
        finished = {True: "yes", False: "no (running or stopped)", None: "?"}[run.finished]
        arch = run.arch or "?"
        if run.shortcut and canonical_arch(run.arch) == "resnet34":
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
        if test and run.test_subset:
            notes.append(f"- {run.name}: the test error is of a subset of the test set ({run.test_subset}), "
                         "not comparable with the paper's")
        if run.dropped_partial_line:
            notes.append(f"- {run.name}: last line was half-written (run still going) and was skipped")
    families = sorted({r.family for r in runs} & set(PAPER_SOURCE))
    lines.append("")
    lines.append(
        "Errors are top-1 in percent. Steps = optimiser steps logged. Paper: "
        + "; ".join(f"{f}: {PAPER_SOURCE[f]}" for f in families)
        + ("." if families else "none for these runs.")
        + (" Runs on other data sets, and fine-tunes, have no paper number." if any(
            r.family == "other" for r in runs) else "")
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
        trains = [r.train_curve() for r in family_runs]
        if len(family_runs) < 2 or not all(trains) or len({t[-1][0] for t in trains}) == 1:
            continue
        step = min(t[-1][0] for t in trains)
        shortest = next(r for r, t in zip(family_runs, trains) if t[-1][0] == step)
        late = [(r, t[0][0]) for r, t in zip(family_runs, trains) if t[0][0] > step]
        if late:  # no iteration where every run has a training error: say so, not "run —"
            firsts = ", ".join(f"{r.name} logged its first at iteration {first + 1}" for r, first in late)
            lines.append(f"Training errors of the {family} runs share no iteration: {shortest.name} stopped at "
                         f"iteration {step + 1}; {firsts}.")
            continue
        values = ", ".join(f"{r.name} {_fmt(_at_step(t, step))}" for r, t in zip(family_runs, trains))
        lines.append(f"Training error % at iteration {step + 1}, the last one every {family} run reached: {values}.")
    return lines


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="resnet-lit report",
        description="Figure 6-style plots and a table of final errors from the CSV logs of runs.",
        allow_abbrev=False,
    )
    parser.add_argument("runs", nargs="+", help="run folders (a metrics.csv anywhere below) or metrics.csv files")
    parser.add_argument(
        "--out", default="reports", help="output folder for figure6_<family>.png and errors.md (default: reports)"
    )
    parser.add_argument("--title", default=None, help="figure title (default: a description of the curves)")
    parser.add_argument("--ylim", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                        help="error axis range in percent, e.g. 0 20 like the paper")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`resnet-lit report RUN [RUN ...] [--out DIR]`: returns 0, or 2 with a one-line error."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        runs = load_runs(args.runs)
    except (ReportError, OSError) as err:
        print(f"resnet-lit report: error: {err}", file=sys.stderr)
        return USAGE
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
    return OK
