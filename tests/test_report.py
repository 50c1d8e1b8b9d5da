"""`resnet-lit report`: Figure 6 and the error table from CSV logs written the way Lightning writes them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from resnet_lit.commands import report

STEPS_PER_EPOCH = 50


def _curves(final_train: float, final_val: float, epochs: int) -> tuple[list[float], list[float]]:
    """Decreasing error curves (percent) that end exactly at the given values."""
    train = [final_train + 5.0 * (epochs - 1 - e) for e in range(epochs)]
    val = [final_val + 4.0 * (epochs - 1 - e) for e in range(epochs)]
    return train, val


def write_run(folder: Path, arch: str, train: list[float] | None, val: list[float], max_steps: int,
              version_dir: bool = False, partial_tail: str | None = None) -> Path:
    """A run folder like `resnet-lit fit` leaves: config.yaml plus a sparse metrics.csv.

    Lightning's CSVLogger writes one row per logging call holding only that call's columns:
    per-step `train/loss`/`lr` rows, an epoch-end `train/error` row and a `val/error` row.
    """
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"model:\n  arch: {arch}\n  shortcut: null\ntrainer:\n  max_steps: {max_steps}\n  max_epochs: -1\n"
    )
    keys = ["epoch", "lr", "step", "train/loss", "val/error",
            "val/loss"] + (["train/error"] if train is not None else [])
    rows = []
    for epoch in range(len(val)):
        for step in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH, 10):
            rows.append({"epoch": epoch, "lr": 0.1, "step": step, "train/loss": 2.0 / (step + 1)})
        last = (epoch + 1) * STEPS_PER_EPOCH - 1
        rows.append({"epoch": epoch, "step": last, "val/error": val[epoch], "val/loss": 1.0})
        if train is not None:
            rows.append({"epoch": epoch, "step": last, "train/error": train[epoch]})
    log_dir = folder / "version_0" if version_dir else folder
    log_dir.mkdir(exist_ok=True)
    path = log_dir / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted(keys))
        writer.writeheader()
        writer.writerows(rows)
        if partial_tail is not None:
            f.write(partial_tail)  # a line the running job has not finished writing
    return path


def _table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("run", "---"):
            rows[cells[0]] = cells
    return rows


FINALS = {  # name -> (arch, final train error %, final val error %)
    "plain20": ("plain20", 10.5, 12.25),
    "plain56": ("plain56", 14.75, 16.5),
    "resnet20": ("resnet20", 9.5, 11.0),
    "resnet56": ("resnet56", 7.25, 9.75),
}


def test_report_writes_figure6_and_table_with_the_logged_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = []
    for name, (arch, final_train, final_val) in FINALS.items():
        train, val = _curves(final_train, final_val, epochs=6)
        write_run(tmp_path / "runs" / name, arch, train, val, max_steps=6 * STEPS_PER_EPOCH,
                  version_dir=name == "resnet56")
        runs.append(str(tmp_path / "runs" / name))
    out = tmp_path / "report"

    assert report.main([*runs, "--out", str(out)]) == 0

    image = imread(out / "figure6_cifar10.png")
    assert image.shape[:2] == (400, 1000)  # figsize 10x4 inches at 100 dpi
    ink = (image[..., :3] < 0.9).any(axis=-1).mean()
    assert 0.01 < ink < 0.6, f"figure looks empty or filled: {ink:.3f} of pixels are not white"
    # the first depth colour (#1f77b4, depth 20) is drawn: the curves are really there
    blue = np.abs(image[..., :3] - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=-1) < 0.05
    assert blue.sum() > 200
    assert (out / "figure6_cifar10.png").stat().st_size < 200_000

    table = (out / "errors.md").read_text()
    assert table in capsys.readouterr().out
    rows = _table_rows(table)
    assert set(rows) == set(FINALS)
    for name, (arch, final_train, final_val) in FINALS.items():
        _, row_arch, steps, finished, train, val, best, test, paper = rows[name]
        assert row_arch == arch
        assert int(steps) == 6 * STEPS_PER_EPOCH
        assert finished == "yes"
        assert float(train) == final_train
        assert float(val) == final_val
        assert float(best) == final_val  # curves decrease, so the best is the last
        assert test == "—"
    assert rows["resnet20"][-1] == "8.75" and rows["resnet56"][-1] == "6.97"
    assert rows["plain20"][-1] == "—"  # the paper gives plain nets only as curves
    assert "Table 6" in table


def test_running_run_with_missing_train_error_and_half_written_line(tmp_path: Path) -> None:
    val = [60.0, 40.0, 45.0]  # best (40) is not the last (45)
    csv_path = write_run(tmp_path / "resnet110-live", "resnet110", None, val, max_steps=64000,
                         partial_tail="2,0.1,150,0.0")  # no newline yet: still being written
    run = report.load_run(tmp_path / "resnet110-live")
    assert run.csv_path == csv_path
    assert run.dropped_partial_line
    assert run.last_step == 3 * STEPS_PER_EPOCH - 1  # the half line's step 150 is not counted
    assert run.finished is False
    assert report.missing_columns(run) == ["train/error"]

    out = tmp_path / "out"
    assert report.main([str(tmp_path / "resnet110-live"), "--out", str(out)]) == 0
    table = (out / "errors.md").read_text()
    row = _table_rows(table)["resnet110-live"]
    assert row[3].startswith("no")
    assert row[4] == "—" and row[5] == "45.00" and row[6] == "40.00" and row[8] == "6.43"
    assert "no train/error column" in table
    assert "half-written" in table
    assert imread(out / "figure6_cifar10.png").shape[:2] == (400, 500)  # ResNets only: one panel


def test_arch_from_folder_name_and_imagenet_family(tmp_path: Path) -> None:
    path = write_run(tmp_path / "plain34", "plain34", [50.0], [55.0], max_steps=STEPS_PER_EPOCH)
    (tmp_path / "plain34" / "config.yaml").unlink()  # no config: the folder name tells the arch
    run = report.load_run(path)
    assert (run.arch, run.family, run.paper_error, run.finished) == ("plain34", "imagenet", 28.54, None)
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "figure6_imagenet.png").is_file()
    assert "| plain34 | plain34 | 50 | ? |" in (tmp_path / "out" / "errors.md").read_text()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "no-such-run", "does not exist: expected a run folder"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no metrics.csv"),
        (lambda d: (d / "x.csv").write_text("a,b\n1,2\n") and d / "x.csv", "has no 'step' column"),
    ],
    ids=["missing", "no-metrics", "not-lightning-csv"],
)
def test_bad_input_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture, make, expected: str) -> None:
    path = make(tmp_path)
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "errors.md").exists()


def test_runs_of_different_lengths_are_compared_at_a_common_iteration(tmp_path: Path) -> None:
    # resnet20 finished 4 epochs; plain56 was cut after 2 (a time limit): compare at iteration 100
    write_run(tmp_path / "resnet20", "resnet20", [70.0, 50.0, 40.0, 30.0], [72.0, 55.0, 45.0, 35.0],
              max_steps=4 * STEPS_PER_EPOCH)
    write_run(tmp_path / "plain56", "plain56", [85.0, 80.0], [88.0, 84.0], max_steps=4 * STEPS_PER_EPOCH)
    table = report.error_table(report.load_runs([tmp_path / "resnet20", tmp_path / "plain56"]))
    expected = ("Training error % at iteration 100, the last one every cifar10 run reached: "
                "plain56 80.00, resnet20 50.00.")
    assert expected in table
    rows = _table_rows(table)
    assert rows["plain56"][3].startswith("no") and rows["resnet20"][3] == "yes"


def test_a_test_of_the_run_is_merged_into_its_row(tmp_path: Path) -> None:
    # `resnet-lit test` logs into <run_dir>/test/metrics.csv: its test/error belongs to the run's row
    write_run(tmp_path / "runs" / "resnet20", "resnet20", [20.0, 10.0], [22.0, 12.0], max_steps=2 * STEPS_PER_EPOCH)
    (tmp_path / "runs" / "resnet20" / "test").mkdir()
    (tmp_path / "runs" / "resnet20" / "test" / "metrics.csv").write_text(
        "epoch,step,test/acc1,test/error\n0,0,91.25,8.75\n"
    )
    runs = report.load_runs([tmp_path / "runs"])
    assert [r.name for r in runs] == ["resnet20"]
    assert runs[0].column(report.TEST_ERROR) == [(0, 8.75)]
    row = _table_rows(report.error_table(runs))["resnet20"]
    assert row[7] == "8.75" and row[5] == "12.00"
    assert report.load_run(tmp_path / "runs" / "resnet20").column(report.TEST_ERROR) == [(0, 8.75)]


def _with_data(folder: Path, class_path: str, num_classes: int, init_weights: str | None = None) -> None:
    """Add what a real run's files say about its data: the config's data and init_weights, hparams.yaml."""
    config = (folder / "config.yaml").read_text()
    config = config.replace("model:\n", f"model:\n  init_weights: {init_weights or 'null'}\n")
    (folder / "config.yaml").write_text(config + f"data:\n  class_path: {class_path}\n  init_args:\n    root: x\n")
    (folder / "hparams.yaml").write_text(f"arch: x\nnum_classes: {num_classes}\n")


def test_only_paper_data_sets_trained_from_scratch_get_the_paper_column(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cases = {  # run -> (arch, DataModule, classes, init_weights, family, paper column)
        "cifar_r20": ("resnet20", "resnet_lit.data.CIFARDataModule", 10, None, "cifar10", "8.75"),
        "cifar100_r20": ("resnet20", "resnet_lit.data.CIFARDataModule", 100, None, "other", "—"),
        "woof_finetune_r18": ("resnet18", "resnet_lit.data.ImageNetDataModule", 10, "r18.pth", "other", "—"),
        "woof_scratch_r18": ("resnet18", "resnet_lit.data.ImageNetDataModule", 10, None, "other", "—"),
        "imagenet_r18": ("resnet18", "resnet_lit.data.ImageNetDataModule", 1000, None, "imagenet", "27.88"),
    }
    for name, (arch, class_path, classes, init, _, _) in cases.items():
        write_run(runs / name, arch, [20.0], [22.0], max_steps=STEPS_PER_EPOCH)
        _with_data(runs / name, class_path, classes, init)
    loaded = {r.name: r for r in report.load_runs([runs])}
    rows = _table_rows(report.error_table(list(loaded.values())))
    for name, (*_, family, paper) in cases.items():
        assert (loaded[name].family, rows[name][-1]) == (family, paper), name
    assert "fine-tunes, have no paper number" in report.error_table(list(loaded.values()))
    assert report.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "figure6_cifar10.png", "figure6_imagenet.png", "figure6_other.png"]


def test_two_runs_of_one_net_are_told_apart_in_the_legend(tmp_path: Path) -> None:
    for name in ("r20_seed0", "r20_seed1", "r56"):
        write_run(tmp_path / name, "resnet56" if name == "r56" else "resnet20", [20.0], [22.0],
                  max_steps=STEPS_PER_EPOCH)
    runs = report.load_runs([tmp_path / "r20_seed0", tmp_path / "r20_seed1", tmp_path / "r56"])
    assert report.legend_names(runs, "ResNet") == ["ResNet-20 (r20_seed0)", "ResNet-20 (r20_seed1)", "ResNet-56"]


def test_a_run_validated_once_is_drawn_as_a_marker(tmp_path: Path) -> None:
    # one validation point makes a line of length zero: without a marker the run is invisible
    write_run(tmp_path / "resnet20", "resnet20", [30.0], [35.0], max_steps=STEPS_PER_EPOCH)
    fig = report.figure6(report.load_runs([tmp_path / "resnet20"]))
    (solid,) = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "-" and len(line.get_xdata())]
    assert list(solid.get_ydata()) == [35.0] and solid.get_marker() == "o"


def test_runs_that_share_no_iteration_are_not_given_a_dash(tmp_path: Path) -> None:
    # c2 stopped (running errors only) before c1 logged its first training error: was "c1 —"
    write_run(tmp_path / "c1", "resnet20", [70.0, 50.0], [72.0, 55.0], max_steps=2 * STEPS_PER_EPOCH)
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "config.yaml").write_text("model:\n  arch: resnet56\ntrainer:\n  max_steps: 400\n")
    (tmp_path / "c2" / "metrics.csv").write_text(
        "epoch,step,train/error_running\n0,9,90.0\n0,19,85.0\n0,29,80.0\n")
    table = report.error_table(report.load_runs([tmp_path / "c1", tmp_path / "c2"]))
    assert "—." not in table and "Training error % at iteration" not in table
    assert ("Training errors of the cifar10 runs share no iteration: c2 stopped at iteration 30; "
            "c1 logged its first at iteration 50.") in table


def test_a_test_on_a_subset_says_so(tmp_path: Path) -> None:
    write_run(tmp_path / "resnet20", "resnet20", [20.0, 10.0], [22.0, 12.0], max_steps=2 * STEPS_PER_EPOCH)
    (tmp_path / "resnet20" / "test").mkdir()
    (tmp_path / "resnet20" / "test" / "config.yaml").write_text("trainer:\n  limit_test_batches: 0.1\n")
    (tmp_path / "resnet20" / "test" / "metrics.csv").write_text(
        "epoch,step,test/error,test/images\n1,99,9.5,1000.0\n")
    table = report.error_table(report.load_runs([tmp_path / "resnet20"]))
    assert _table_rows(table)["resnet20"][7] == "9.50"
    assert ("- resnet20: the test error is of a subset of the test set (limit_test_batches 0.1, 1000 images), "
            "not comparable with the paper's") in table
    (tmp_path / "resnet20" / "test" / "config.yaml").write_text("trainer:\n  limit_test_batches: null\n")
    assert "subset" not in report.error_table(report.load_runs([tmp_path / "resnet20"]))


def test_short_runs_beside_a_long_one_get_a_log_iteration_axis(tmp_path: Path) -> None:
    write_run(tmp_path / "long" / "resnet20", "resnet20", [30.0] * 40, [35.0] * 40, max_steps=40 * STEPS_PER_EPOCH)
    write_run(tmp_path / "short" / "resnet56", "resnet56", [50.0, 40.0], [55.0, 45.0], max_steps=2 * STEPS_PER_EPOCH)
    both = report.load_runs([tmp_path / "long", tmp_path / "short"])
    assert report.figure6(both).axes[0].get_xscale() == "log"
    assert report.figure6(report.load_runs([tmp_path / "long"])).axes[0].get_xscale() == "linear"
