"""The published runs in `results/` are what their model cards say.

For every `results/<run>/results.json`: the weights' sha256 equals the card's, the card's own test
command (run as a user runs it, in a new process) gives the card's test error to the image, the
documented Python call `create_model(arch, weights=...)` gives the same error on the same images,
and the published `metrics.csv` shows the whole schedule (lr drops where the config says, a
validation every epoch, no repeated or missing step after a resume).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from fit_helpers import card_of, csv_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = sorted(p.parent for p in (REPO_ROOT / "results").glob("*/results.json"))
CIFAR = [p for p in PUBLISHED if not p.name.startswith("imagewoof")]
IMAGEWOOF = [p for p in PUBLISHED if p.name.startswith("imagewoof")]


def test_results_are_published():
    # The evidence run is part of the repository: its absence is a failure, not a skip.
    assert (REPO_ROOT / "results" / "cifar10-resnet20-cpu" / "results.json").is_file()


_card, _metrics = card_of, csv_rows


@pytest.mark.parametrize("run", PUBLISHED, ids=lambda p: p.name)
def test_weights_match_the_card(run: Path):
    card = _card(run)
    digest = hashlib.sha256((run / card["weights"]).read_bytes()).hexdigest()
    assert digest == card["sha256"]
    assert (run / "SHA256SUMS").read_text().split() == [digest, card["weights"]]
    readme = (run / "README.md").read_text()
    headline = card["test_acc1"] if "test_acc1" in card else card["test_error"]
    assert digest in readme and f"**{headline:.2f} %**" in readme


@pytest.mark.parametrize("run", PUBLISHED, ids=lambda p: p.name)
def test_metrics_show_the_whole_schedule(run: Path):
    card, config = _card(run), yaml.safe_load((run / "config.yaml").read_text())
    rows = _metrics(run / "metrics.csv")
    schedule = config["model"]["schedule"]
    max_steps = card["max_steps"]  # the config's, or its epochs' steps (a run bounded by epochs)
    assert card["steps"] == max_steps and config["trainer"]["max_steps"] in (max_steps, -1, None)
    # steps an epoch: CIFAR's 50,000 images, or the run's own epochs
    per_epoch = max_steps // card["epochs"] if "epochs" in card else 50_000 // config["data"]["init_args"]["batch_size"]
    key = next(k for k in ("lr-SGD/backbone", "lr") if rows and k in rows[0])
    lrs = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
    optimizer = config["model"]["optimizer"]  # the lr per reference batch, scaled linearly to the run's batch
    base = optimizer["lr"] * config["data"]["init_args"]["batch_size"] / optimizer.get("reference_batch", 128)
    warmup = schedule.get("warmup_steps") or round((schedule.get("warmup_epochs") or 0) * per_epoch)
    factor = schedule.get("warmup_factor")
    for step, lr in lrs:
        if step < warmup:  # linear warm-up from factor x base
            expected = base * (factor + (1 - factor) * step / warmup)
        elif schedule.get("kind", "step") == "step":  # lr 0.1 until the first milestone, then /10 at each
            expected = base * 0.1 ** sum(step >= m for m in schedule["milestones"])
        else:  # cosine from base to zero over the steps after the warm-up
            expected = base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (max_steps - warmup)))
        assert lr == pytest.approx(expected, rel=1e-5, abs=1e-9), (step, lr, expected)
    assert lrs[-1][0] >= max_steps - 100  # logged to the end (every 50 steps)
    if schedule.get("kind", "step") != "step":  # the card claims no milestones or lr drops of a cosine run
        assert "milestones" not in card.get("schedule", {}) and "lr_drops_logged_at" not in card
    # one validation per epoch, each at a later step than the one before: no gap, no repeat
    val_steps = [int(r["step"]) for r in rows if r.get("val/error")]
    assert val_steps == [per_epoch * (i + 1) - 1 for i in range(len(val_steps))]
    assert len(val_steps) == max_steps // per_epoch
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert train_steps == sorted(set(train_steps)), "a step is logged twice (a resume replayed steps)"


def _card_command_error(run: Path, tmp_path: Path, *extra: str) -> tuple[float, int]:
    """The card's own test command, run as a user runs it (a new process): the test/error it logs and
    the number of images it counted."""
    cmd = shlex.split(_card(run)["test_command"]) + ["--run_dir", str(tmp_path / "eval"), *extra]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in _metrics(next((tmp_path / "eval").rglob("metrics.csv"))) if r.get("test/error")]
    assert len(rows) == 1
    return float(rows[0]["test/error"]), round(float(rows[0]["test/images"]))


# The card command's error on each run's first test batches (1,000 or 1,024 CIFAR-10 images of all
# classes; Imagewoof's 256 first images, in class order), measured beside the full check below.
SUBSETS = json.loads((REPO_ROOT / "tests" / "fixtures" / "results_subsets.json").read_text())
FULL = os.environ.get("RESNET_LIT_FULL_RESULTS") == "1"


@pytest.mark.slow  # 6-16 s each on 2 cores (a fresh process, a ResNet-50 at 128 px for Imagewoof)
@pytest.mark.parametrize("run", PUBLISHED, ids=lambda p: p.name)
def test_card_command_gives_the_pinned_error_on_the_first_test_batches(run: Path, tmp_path: Path,
                                                                       shared_decode_cache: Path):
    """The card's test command on a fixed subset of the test images (its first ``limit_test_batches``
    batches) gives the error pinned in tests/fixtures/results_subsets.json to the image. The pin was
    taken in the same session as the full check (the card's error on every test image), which stays
    available: ``RESNET_LIT_FULL_RESULTS=1 pytest tests/test_results.py -k card_command`` (about 3 min
    on 2 cores: the Imagewoof ResNet-50 on 3,929 images is 70 s of it) runs both, and must pass before
    a pin or a card changes (docs/results.md)."""
    pinned = SUBSETS[run.name]
    error, images = _card_command_error(run, tmp_path, "--trainer.limit_test_batches",
                                        str(pinned["limit_test_batches"]))
    assert images == pinned["images"]
    # one image of 1,000 is 0.1 points; the logged value is a float32
    assert error == pytest.approx(pinned["test_error"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="every test image: RESNET_LIT_FULL_RESULTS=1 (the quick check pins a subset)")
@pytest.mark.parametrize("run", PUBLISHED, ids=lambda p: p.name)
def test_card_command_gives_the_card_error(run: Path, tmp_path: Path, shared_decode_cache: Path):
    # one image of 10,000 is 0.01 points; the logged value is a float32 (12.39 reads 12.389999...)
    error, images = _card_command_error(run, tmp_path)
    assert images == _card(run).get("val_images", 10_000)
    assert error == pytest.approx(_card(run)["test_error"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("run", CIFAR, ids=lambda p: p.name)
def test_create_model_with_weights_gives_the_card_error(run: Path, cifar_root: Path, shared_decode_cache: Path):
    from resnet_lit.data import CIFARDataModule
    from resnet_lit.models import create_model

    card = _card(run)
    model = create_model(card["arch"], weights=run / card["weights"]).eval()
    dm = CIFARDataModule(root=str(cifar_root), batch_size=500)
    dm.setup("test")
    wrong = total = 0
    with torch.inference_mode():
        for x, y in dm.test_dataloader():
            wrong += int((model(dm.transform_batch(x, train=False)).argmax(1) != y).sum())
            total += len(y)
    assert total == 10_000
    # the same images wrong; a card whose test command averages views also gives the centre figure
    assert 100.0 * wrong / total == pytest.approx(card.get("test_error_centre", card["test_error"]), abs=1e-9)


@pytest.mark.parametrize("run", IMAGEWOOF, ids=lambda p: p.name)
def test_imagewoof_card_agrees_with_its_independent_predictions(run: Path):
    """The card's accuracy (resnet-lit test) and the independent torchvision + PIL evaluation of the same
    weights, image by image in val_predictions.csv, agree within 0.2 points on all 3,929 images."""
    card = _card(run)
    rows = _metrics(run / "val_predictions.csv")
    assert len(rows) == card["val_images"] == 3929
    accuracy = 100.0 * sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(card["independent_acc1"], abs=1e-9)
    assert abs(accuracy - card["test_acc1"]) <= 0.2, (accuracy, card["test_acc1"])
    readme = (run / "README.md").read_text()
    assert f"{card['leaderboard_acc1']} %" in readme and f"{card['independent_acc1']:.2f} %" in readme


@pytest.mark.slow
@pytest.mark.parametrize("run", IMAGEWOOF, ids=lambda p: p.name)
def test_imagewoof_predictions_come_from_the_published_weights(run: Path, shared_data: Path, tmp_path: Path):
    """torchvision's network with the published weights, PIL decode, Resize + CenterCrop + the card's
    normalisation (no resnet-lit code): on 40 validation images read from the archive, the classes
    val_predictions.csv lists."""
    import io
    import tarfile

    import torchvision
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision.transforms import v2

    card, config = _card(run), yaml.safe_load((run / "config.yaml").read_text())
    data = config["data"]["init_args"]
    resize = data.get("test_resize") or round(data["test_size"] * 256 / 224)
    view = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(data["test_size"]), v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    rows = _metrics(run / "val_predictions.csv")
    wanted = {r["file"]: r for r in rows[::len(rows) // 40][:40]}
    classes = sorted({r["label"] for r in rows})
    images = {}
    with tarfile.open(shared_data / "imagewoof2-160" / "val.tar.gz") as tar:
        for member in tar:
            name = "/".join(Path(member.name).parts[-2:])
            if member.isfile() and name in wanted:
                images[name] = view(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
    assert len(images) == 40
    model = torchvision.models.resnet50(num_classes=len(classes))
    model.load_state_dict({k: v.float() for k, v in load_file(run / card["weights"]).items()})
    with torch.inference_mode():
        predicted = model.eval()(torch.stack(list(images.values()))).argmax(1).tolist()
    assert [classes[p] for p in predicted] == [wanted[name]["predicted"] for name in images]
