"""Reading the logs of runs for ``resnet-lit report``: each run's ``metrics.csv`` as metric series,
with what its ``config.yaml`` says (arch, shortcut, max_steps), from finished runs or ones still going.

It reads only the csv module (no pandas), so it runs on a login node while training goes on.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_lit.depths import CIFAR_DEPTHS, IMAGENET_DEPTHS

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
_ARCH_RE = re.compile(r"(plain|resnet)[-_]?(\d+)", re.IGNORECASE)

# Column names ImageClassifier logs (errors in percent, top-1). The `_epoch` spellings are what
# Lightning writes when a metric is logged with both on_step and on_epoch; accepted as fallbacks.
TRAIN_ERROR = ("train/error", "train/error_epoch")  # the whole epoch's, at its end
TRAIN_ERROR_RUNNING = ("train/error_running",)  # the epoch's so far, every logging interval
VAL_ERROR = ("val/error", "val/error_epoch")
TEST_ERROR = ("test/error",)


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
    # What the run trained on, from its config.yaml and hparams.yaml: "cifar10" or "imagenet" for a
    # from-scratch run on the paper's data set, "other" for anything else (another data set, a
    # fine-tune), None when the run has no config (then the depth in the arch name decides).
    dataset: str | None = None
    # What part of the test set a `resnet-lit test` of the run evaluated, when not all of it
    # (`trainer.limit_test_batches` in its config.yaml): e.g. "limit_test_batches 0.1, 1000 images".
    test_subset: str | None = None

    def column(self, names: tuple[str, ...]) -> list[tuple[int, float]]:
        """The first of `names` that was logged, as (step, value) pairs; [] if none was."""
        for name in names:
            if self.series.get(name):
                return self.series[name]
        return []

    def train_curve(self) -> list[tuple[int, float]]:
        """Training error to draw: one point per epoch, or the running figure of each logging
        interval for runs with fewer than two epochs (a short run still gets a curve)."""
        per_epoch = self.column(TRAIN_ERROR)
        return per_epoch if len(per_epoch) >= 2 else self.column(TRAIN_ERROR_RUNNING) or per_epoch

    @property
    def depth(self) -> int | None:
        match = _ARCH_RE.search(self.arch or "")
        return int(match.group(2)) if match else None

    @property
    def is_plain(self) -> bool:
        return (self.arch or "").lower().startswith("plain")

    @property
    def family(self) -> str:
        """'cifar10' or 'imagenet' for a paper net trained from scratch on that data set, else 'other'.

        Without a config (a bare metrics.csv), the depth in the arch name decides."""
        by_depth = "cifar10" if self.depth in CIFAR_DEPTHS else "imagenet" if self.depth in IMAGENET_DEPTHS else "other"
        if self.dataset is None:
            return by_depth
        return self.dataset if self.dataset == by_depth else "other"

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
        """The paper's error for this net on this data set; None for other data sets and fine-tunes."""
        if self.family == "other":
            return None
        paper = PAPER_ERRORS.get(canonical_arch(self.arch))
        if isinstance(paper, dict):  # ResNet-34: one number per shortcut option; B is the default
            return paper.get((self.shortcut or "B").upper())
        return paper


def canonical_arch(arch: str | None) -> str:
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


def _paper_dataset(config: dict[str, Any], csv_path: Path) -> str | None:
    """'cifar10' / 'imagenet' when the config trains from scratch on the paper's data set, 'other'
    when it does not, None when the config does not say (no data section). The class count comes
    from the run's hparams.yaml (which Lightning writes beside metrics.csv) where there is one."""
    if not isinstance(config.get("data"), dict):
        return None
    data, model = _section(config, "data"), _section(config, "model")
    if model.get("init_weights"):
        return "other"  # a fine-tune: the paper's numbers are for training from scratch
    class_path = str(config["data"].get("class_path", ""))
    num_classes = None
    hparams = csv_path.parent / "hparams.yaml"
    if hparams.is_file():
        import yaml

        try:
            loaded = yaml.safe_load(hparams.read_text())
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, dict) and isinstance(loaded.get("num_classes"), int):
            num_classes = loaded["num_classes"]
    if class_path.endswith("CIFARDataModule"):
        if data.get("dataset", "cifar10") == "cifar10" and num_classes in (None, 10):
            return "cifar10"
    elif class_path.endswith("ImageNetDataModule"):
        if num_classes in (None, 1000):
            return "imagenet"
    return "other"


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
        arch=model.get("arch") or (canonical_arch(folder_name) or None),
        shortcut=model.get("shortcut"),
        max_steps=trainer.get("max_steps"),
        max_epochs=trainer.get("max_epochs"),
        dataset=_paper_dataset(config, csv_path),
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
    run.test_subset = _test_subset(trainer.get("limit_test_batches"), run.series.get("test/images"))
    evaluation = csv_path.parent / "test" / "metrics.csv"
    if evaluation.is_file() and evaluation != csv_path:  # `resnet-lit test` logged beside the run
        tested = load_run(evaluation)
        for key, values in tested.series.items():
            if key.startswith("test/"):
                run.series[key] = values
        run.test_subset = tested.test_subset
    return run


def _test_subset(limit: Any, images: list[tuple[int, float]] | None) -> str | None:
    """How a test limited by ``trainer.limit_test_batches`` is described; None for the whole test set."""
    if limit is None or isinstance(limit, bool) or limit == 1.0 and isinstance(limit, float):
        return None
    counted = f", {int(images[-1][1])} images" if images else ""
    return f"limit_test_batches {limit}{counted}"


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
