"""The prose quotes its evidence: every figure docs/*.md gives for a run (results.md, recipes.md,
reproduction.md) is the one in the committed logs and cards it cites, and the README states what a
first user needs. Gathered from test_results.py, test_recipe_configs.py and test_cli_help.py (issue
30): these read files only, no training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from fit_helpers import card_of, csv_rows

REPO_ROOT = REPO = Path(__file__).resolve().parents[1]
PUBLISHED = sorted(p.parent for p in (REPO_ROOT / "results").glob("*/results.json"))
IMAGEWOOF = [p for p in PUBLISHED if p.name.startswith("imagewoof")]


_card, _metrics = card_of, csv_rows


@pytest.mark.parametrize("run", IMAGEWOOF, ids=lambda p: p.name)
def test_docs_set_the_run_beside_its_independent_reference(run: Path):
    """docs/results.md's Imagewoof pair: resnet-lit's accuracy, wall time and images/s beside the plain
    torchvision pipeline's, as the committed files hold them."""
    card = _card(run)
    ref = json.loads((run / "reference" / "summary.json").read_text())
    ref_rows = _metrics(run / "reference" / "metrics.csv")
    assert ref["epochs"] == card["epochs"] and len(ref_rows) == card["epochs"]
    assert float(ref_rows[-1]["val_acc1"]) == pytest.approx(ref["val_acc1"])
    doc = (REPO_ROOT / "docs" / "results.md").read_text()
    section = doc[doc.index("## The ImageNet path: ResNet-50 on Imagewoof"):]
    line = next(line for line in section.splitlines() if line.startswith("| resnet-lit fit"))
    ref_line = next(line for line in section.splitlines() if line.startswith("| torchvision reference"))
    ref_ips = sorted(float(r["train_images_per_s"]) for r in ref_rows)[len(ref_rows) // 2]
    assert f"**{card['test_acc1']:.2f}**" in line and f"{card['images_per_s_median']:.1f}" in line, line
    assert f"**{ref['val_acc1']:.2f}**" in ref_line and f"{ref_ips:.1f}" in ref_line, ref_line


def test_the_reference_check_agrees_and_docs_quote_its_files():
    """results/reference-check-16k: resnet-lit and the independent reference on the same compressed
    schedule end within 0.5 points, and docs/results.md quotes exactly the figures of those files."""
    check = REPO_ROOT / "results" / "reference-check-16k"
    reference = json.loads((check / "reference-summary.json").read_text())
    (lit_test,) = [float(r["test/error"]) for r in _metrics(check / "resnet-lit-test-metrics.csv") if r["test/error"]]
    config = yaml.safe_load((check / "resnet-lit-config.yaml").read_text())
    assert config["trainer"]["max_steps"] == reference["steps"] == 16000
    assert config["model"]["schedule"]["milestones"] == reference["milestones"] == [8000, 12000]
    lit_steps = [int(r["step"]) for r in _metrics(check / "resnet-lit-metrics.csv") if r.get("train/loss")]
    ref_steps = [int(r["step"]) for r in _metrics(check / "reference-metrics.csv")]
    assert max(lit_steps) == 15999 and ref_steps[-1] == 16000  # 0-based CSV steps; the reference counts done steps
    assert abs(lit_test - reference["final_test_error"]) <= 0.5
    docs = (REPO_ROOT / "docs" / "results.md").read_text()
    assert f"**{lit_test:.2f}**" in docs and f"**{reference['final_test_error']:.2f}**" in docs


def test_the_cut_degradation_table_quotes_its_logs():
    """docs/reproduction.md's 16k-schedule ResNet-20/56 table (runs stopped early) gives exactly the
    training and validation errors of the two metrics.csv files kept in docs/degradation_cpu_16k."""
    logs = REPO_ROOT / "docs" / "degradation_cpu_16k"
    docs = (REPO_ROOT / "docs" / "reproduction.md").read_text()
    for net, name in (("resnet20", "ResNet-20"), ("resnet56", "ResNet-56")):
        rows = _metrics(logs / f"{net}-metrics.csv")
        train = {int(r["step"]) + 1: float(r["train/error"]) for r in rows if r.get("train/error")}
        val = {int(r["step"]) + 1: float(r["val/error"]) for r in rows if r.get("val/error")}
        lr = {float(r["lr"]) for r in rows if r.get("lr")}
        assert lr == {0.1}, "every point of the cut runs is before the first lr drop"
        expected = " | ".join(f"{train[i]:.2f}" for i in (250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2200))
        assert f"| {name} train | {expected} |" in docs
        expected = " | ".join(f"{val[i]:.2f}" for i in (500, 1000, 1500, 2000, 2200))
        assert f"| {name} val | | " + expected.replace(" | ", " | | ", 3) + " |" in docs


def test_the_recipe_comparison_quotes_its_logs():
    """docs/recipes.md's paper-vs-fast table: every figure is the one in docs/recipes_cpu_2k/, both runs
    trained the same 2,000 iterations, and the fast run's config is the recipe's (EMA warm-up on)."""
    logs, doc = REPO / "docs" / "recipes_cpu_2k", (REPO / "docs" / "recipes.md").read_text()
    for run, test_row in (("paper", "| paper recipe"), ("fast", "| fast recipe")):
        config = yaml.safe_load((logs / f"{run}-config.yaml").read_text())
        assert config["trainer"]["max_steps"] == 2000
        rows = list(csv.DictReader(open(logs / f"{run}-metrics.csv")))
        assert max(int(r["step"]) for r in rows) == 1999  # 0-based: the 2,000th step logged
        vals = ", ".join(f"{float(r['val/error']):.2f}" for r in rows if r.get("val/error"))
        test_error = float(next(csv.DictReader(open(logs / f"{run}-test-metrics.csv")))["test/error"])
        line = next(line for line in doc.splitlines() if line.startswith(test_row))
        assert vals in line and f"**{test_error:.2f}**" in line, (line, vals, test_error)
    fast = yaml.safe_load((logs / "fast-config.yaml").read_text())
    assert fast["model"]["ema"]["warmup_power"] == 0.75 and fast["data"]["init_args"]["test_mode"] == "flip"
    recipe = yaml.safe_load((REPO / "configs" / "recipes" / "cifar10_resnet20_fast.yaml").read_text())
    assert recipe["model"]["ema"] == {k: fast["model"]["ema"][k] for k in recipe["model"]["ema"]}


@pytest.mark.parametrize("epochs, run, prefix, quoted_epochs", [
    (25, "cifar10-resnet20-fast25-cpu", "| fast recipe, 25 epochs", (5, 10, 15, 20, 25)),
    (40, "cifar10-resnet20-fast40-cpu", "| fast recipe, 40 epochs", (10, 20, 30, 40)),
])
def test_the_cut_schedule_evidence_quotes_the_published_runs(epochs, run, prefix, quoted_epochs):
    """docs/recipes.md's 25- and 40-epoch tables: the validation and test figures are the published
    runs' own (results/), and each run is the recipe with only max_steps changed."""
    doc = (REPO / "docs" / "recipes.md").read_text()
    section = doc[doc.index(f"## Evidence: the fast recipe cut to {epochs} epochs"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    for folder_name, line_prefix in ((run, prefix), ("cifar10-resnet20-cpu", "| paper recipe, whole schedule")):
        folder = REPO / "results" / folder_name
        card = json.loads((folder / "results.json").read_text())
        val = {int(r["step"]): float(r["val/error"]) for r in csv.DictReader(open(folder / "metrics.csv"))
               if r.get("val/error")}
        quoted = ", ".join(f"{val[390 * epoch - 1]:.2f}" for epoch in quoted_epochs)
        line = next(line for line in section.splitlines() if line.startswith(line_prefix))
        assert quoted in line and f"**{card['test_error']:.2f}**" in line, (line, quoted)
        assert f"{card['images'] / 1e6:.2f} M" in line if "images" in card else "8.19 M" in line
    fast = json.loads((REPO / "results" / run / "results.json").read_text())
    assert f"{fast['test_error_centre']:.2f} (centre)" in section
    config = yaml.safe_load((REPO / "results" / run / "config.yaml").read_text())
    recipe = yaml.safe_load((REPO / "configs" / "recipes" / "cifar10_resnet20_fast.yaml").read_text())
    assert config["trainer"]["max_steps"] == epochs * 390
    for key in ("label_smoothing", "ema", "optimizer"):
        assert config["model"][key] == recipe["model"][key] or all(
            config["model"][key][k] == v for k, v in recipe["model"][key].items())
    assert config["model"]["schedule"]["kind"] == "cosine" and config["data"]["init_args"]["test_mode"] == "flip"


def test_readme_says_where_the_cache_is_and_how_to_install_cpu_torch():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "~/.cache/resnet_lit" in readme and "RESNET_LIT_CACHE" in readme and "--data.cache_dir" in readme
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in readme
