"""Static evaluation shapes (data/padding.py): the short last validation, test or predict batch is
padded to ``eval_batch_size`` and the figures are the same as without padding, image for image, on
one process and on two (gloo), and predictions name each image once."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from fit_helpers import fit_env
from weights_helpers import extract_folder, read_imagewoof

from resnet_lit.data import CIFARDataModule, ImageNetDataModule
from resnet_lit.data.labels import PADDED_LABEL, SKIPPED_LABEL
from resnet_lit.data.padding import pad_eval_batch
from resnet_lit.runs.prediction_writer import PredictionWriter
from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.eval_metrics import EvalMetrics


class BatchSizes(pl.Callback):
    """The batch sizes of the evaluation batches the module receives (after the batch hooks)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def _record(self, batch) -> None:
        x = batch[0]
        self.sizes.append((x[0] if isinstance(x, list) else x).shape[0])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record(batch)


def test_pad_eval_batch_shapes() -> None:
    """Shape plumbing of every evaluation batch form: one view, crops, scales, paths; full batches untouched."""
    x, y = torch.ones(3, 3, 8, 8, dtype=torch.uint8), torch.tensor([4, SKIPPED_LABEL, 1])
    px, py = pad_eval_batch((x, y), 5)
    assert px.shape == (5, 3, 8, 8) and px.dtype == torch.uint8 and px[3:].eq(0).all() and px[:3].eq(1).all()
    assert py.tolist() == [4, SKIPPED_LABEL, 1, PADDED_LABEL, PADDED_LABEL]
    crops, _ = pad_eval_batch((torch.ones(2, 10, 3, 8, 8), y[:2]), 4)
    assert crops.shape == (4, 10, 3, 8, 8)
    scales, paths = pad_eval_batch(([torch.ones(1, 3, 8, 8), torch.ones(1, 3, 12, 12)], ("a.jpg",)), 3)
    assert [s.shape for s in scales] == [(3, 3, 8, 8), (3, 3, 12, 12)] and paths == ["a.jpg", None, None]
    full = (x, y)
    assert pad_eval_batch(full, 3) is full


def test_padding_rows_are_counted_nowhere() -> None:
    """A padding row is neither an image nor a skipped image; a skipped one stays counted as skipped."""
    from resnet_lit.training.eval_metrics import ignored_padding

    metrics = EvalMetrics(num_classes=3, top_k=2)
    scores = torch.tensor([[3.0, 1, 0], [0, 3, 1], [0, 1, 3], [3, 0, 0], [0, 0, 3]])
    y = torch.tensor([0, 2, SKIPPED_LABEL, PADDED_LABEL, PADDED_LABEL])
    losses = torch.nn.functional.cross_entropy(scores, ignored_padding(y), reduction="none", ignore_index=SKIPPED_LABEL)
    metrics.update(scores, y, losses)
    out = metrics.compute()
    assert out["images"] == 2 and out["skipped_images"] == 1 and out["error"] == pytest.approx(50.0)
    assert out["loss"] == pytest.approx(float(losses[:2].sum() / 2))


def test_accuracies_and_errors_share_one_unit_percent() -> None:
    # acc1 was logged as a fraction (0.5) beside error in percent (50.0)
    metrics = EvalMetrics(num_classes=3, top_k=2)
    scores = torch.tensor([[3.0, 1, 0], [0, 3, 1], [1, 3, 0], [3, 1, 0]])
    y = torch.tensor([0, 1, 2, 2])
    metrics.update(scores, y, torch.zeros(4))
    out = metrics.compute()
    assert out["acc1"] == pytest.approx(50.0) and out["error"] == pytest.approx(50.0)
    assert out["acc5"] == pytest.approx(50.0) and out["error5"] == pytest.approx(50.0)


def _validate(cifar_root: Path, pad: bool) -> tuple[dict[str, float], list[int]]:
    torch.manual_seed(0)
    module = ImageClassifier(arch="resnet20", num_classes=10, width=0.25)
    data = CIFARDataModule(str(cifar_root), batch_size=32, eval_batch_size=32, subset=100, pad_eval_batches=pad)
    sizes = BatchSizes()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[sizes])
    (out,) = trainer.validate(module, data, verbose=False)
    return out, sizes.sizes


def test_padded_validation_equals_unpadded_on_real_images(cifar_root: Path) -> None:
    """100 real CIFAR-10 images in batches of 32: the last batch of 4 becomes 32 with padding, and the
    error, loss and image count are those of the unpadded run."""
    padded, padded_sizes = _validate(cifar_root, pad=True)
    plain, plain_sizes = _validate(cifar_root, pad=False)
    assert padded_sizes == [32, 32, 32, 32] and plain_sizes == [32, 32, 32, 4]
    assert padded["val/images"] == plain["val/images"] == 100
    assert padded["val/error"] == plain["val/error"] and padded["val/error5"] == plain["val/error5"]
    assert padded["val/loss"] == pytest.approx(plain["val/loss"], rel=1e-6)
    assert "val/skipped_images" not in padded


_DDP_SCRIPT = """
import json, sys
import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy
from resnet_lit.data import CIFARDataModule
from resnet_lit.training.classifier import ImageClassifier

root, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
module = ImageClassifier(arch="resnet20", num_classes=10, width=0.25)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                     logger=False, enable_progress_bar=False, enable_model_summary=False)
results = {}
for pad in (True, False):
    # 75 images: rank 0 reads 38 (batches of 16: 16, 16, 6), rank 1 reads 37 (16, 16, 5)
    data = CIFARDataModule(root, batch_size=16, subset=75, pad_eval_batches=pad)
    results[str(pad)] = trainer.validate(module, data, verbose=False)[0]
if trainer.is_global_zero:
    with open(out, "w") as f:
        json.dump(results, f)
"""


@pytest.mark.slow
def test_padded_validation_is_exact_on_two_processes(cifar_root: Path, tmp_path: Path) -> None:
    """Two gloo processes, each with its own short last batch: the same figures with padding as
    without, and every one of the 75 images counted once over both ranks."""
    script, out = tmp_path / "validate_ddp.py", tmp_path / "results.json"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    done = subprocess.run([sys.executable, str(script), str(cifar_root), str(out)], env=fit_env(),
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    padded, plain = results["True"], results["False"]
    assert padded["val/images"] == plain["val/images"] == 75
    assert padded["val/error"] == plain["val/error"] and padded["val/error5"] == plain["val/error5"]
    assert padded["val/loss"] == pytest.approx(plain["val/loss"], rel=1e-6)


def test_predictions_name_each_image_once(imagewoof_root: Path, tmp_path: Path) -> None:
    """5 real photographs in predict batches of 2: the last batch is padded to 2, and the CSV has one
    row per photograph, none for a padding row."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (_, name, data) in enumerate(read_imagewoof(imagewoof_root, per_class=1, classes=5)):
        (folder / f"photo_{i}{Path(name).suffix}").write_bytes(data)
    classes = [f"c{i}" for i in range(10)]
    data = ImageNetDataModule("unused", batch_size=2, num_workers=0, predict_path=str(folder), classes=classes)
    sizes, writer = BatchSizes(), PredictionWriter(output=str(tmp_path / "preds.csv"))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[sizes, writer])
    torch.manual_seed(0)
    trainer.predict(ImageClassifier(arch="resnet18", num_classes=10, width=0.25), datamodule=data,
                    return_predictions=False)
    assert sizes.sizes == [2, 2, 2]
    with (tmp_path / "preds.csv").open() as f:
        files = [Path(r["file"]).name for r in csv.DictReader(f)]
    assert sorted(files) == sorted(p.name for p in folder.iterdir()) and len(files) == 5


@pytest.mark.parametrize("test_mode", ["ten_crop", "multi_scale"])
def test_padded_multi_view_test_equals_unpadded(imagewoof_root: Path, tmp_path: Path, test_mode: str) -> None:
    """The paper's test modes on 3 real photographs in batches of 2: ten crops [B, 10, 3, 224, 224]
    and five scales (a list) padded like one view, with the unpadded run's figures."""
    root = tmp_path / "woof"
    extract_folder(imagewoof_root, root / "val", per_class=1, classes=3)
    results = {}
    for pad in (True, False):
        torch.manual_seed(0)
        module = ImageClassifier(arch="resnet18", num_classes=3, width=0.25)
        data = ImageNetDataModule(str(root), batch_size=2, num_workers=0, test_mode=test_mode, pad_eval_batches=pad,
                                  cache_dir=str(tmp_path / "cache"))
        sizes = BatchSizes()
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[sizes])
        results[pad] = trainer.test(module, data, verbose=False)[0], sizes.sizes
    (padded, padded_sizes), (plain, plain_sizes) = results[True], results[False]
    assert padded_sizes == [2, 2] and plain_sizes == [2, 1]
    assert padded["test/images"] == plain["test/images"] == 3
    assert padded["test/error"] == plain["test/error"] and padded["test/error5"] == plain["test/error5"]
    assert padded["test/loss"] == pytest.approx(plain["test/loss"], rel=1e-5)
