"""`resnet-lit predict` over a folder of real photographs writes one CSV row per image."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from weights_helpers import extract_folder, read_imagewoof

from resnet_lit.runs.cli import main
from resnet_lit.runs.prediction_writer import PredictionWriter, class_names_for
from resnet_lit.training.classifier import ImageClassifier


def _photos(imagewoof_root: Path, folder: Path, n: int) -> Path:
    """``n`` real photographs (one per class) as photo_<i>.<ext> in ``folder``: what a user labels."""
    folder.mkdir()
    for i, (_, name, data) in enumerate(read_imagewoof(imagewoof_root, per_class=1, classes=n)):
        (folder / f"photo_{i}{Path(name).suffix}").write_bytes(data)
    return folder


def _untrained_checkpoint(classes: list[str], path: Path) -> Path:
    """A resnet-lit checkpoint of a 10-class ResNet-18 that records its class names."""
    module = ImageClassifier(arch="resnet18", num_classes=10, class_names=classes)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def test_predict_cli_writes_top5_csv(imagewoof_root: Path, tmp_path: Path, repo_root: Path) -> None:
    root = tmp_path / "woof"  # the DataModule's root: class names come from its folders
    extract_folder(imagewoof_root, root / "train", per_class=1, split="train")
    extract_folder(imagewoof_root, root / "val", per_class=1, split="val")
    classes = sorted(p.name for p in (root / "train").iterdir())
    images = _photos(imagewoof_root, tmp_path / "to_label", 7)
    ckpt = _untrained_checkpoint(classes, tmp_path / "model.ckpt")

    out = tmp_path / "preds.csv"
    main([
        "predict", "--config", str(repo_root / "configs/r18.yaml"), "--config",
        str(repo_root / "configs/trainer/cpu.yaml"),
        "--ckpt_path", str(ckpt), "--data.root", str(root), "--data.predict_path", str(images),
        "--data.batch_size", "3", "--data.num_workers", "0", "--run_dir", str(tmp_path / "run"),
        "--predictions.output", str(out),
    ])  # fmt: skip
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    assert sorted(Path(r["file"]).name for r in rows) == sorted(p.name for p in images.iterdir())
    assert list(rows[0]) == ["file"] + [c for j in range(1, 6) for c in (f"class{j}", f"prob{j}")]
    # the same checkpoint through Trainer.predict: the CSV names the classes of the highest probabilities
    from resnet_lit.data import ImageNetDataModule

    data = ImageNetDataModule(str(root), batch_size=7, num_workers=0, predict_path=str(images))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (pred,) = trainer.predict(ImageClassifier.load_from_checkpoint(ckpt), datamodule=data)
    by_file = {r["file"]: r for r in rows}
    for path, p in zip(pred["paths"], pred["probs"]):
        top = p.topk(5)
        assert [by_file[path][f"class{j + 1}"] for j in range(5)] == [classes[i] for i in top.indices]
        assert [float(by_file[path][f"prob{j + 1}"]) for j in range(5)] == pytest.approx(top.values.tolist(), abs=1e-4)
    for r in rows:
        names = [r[f"class{j}"] for j in range(1, 6)]
        probs = [float(r[f"prob{j}"]) for j in range(1, 6)]
        assert set(names) <= set(classes) and len(set(names)) == 5
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5


def _probs_row(writer: PredictionWriter, module, trainer, probs: torch.Tensor, paths: list[str]) -> None:
    writer.write_on_batch_end(trainer, module, {"paths": paths, "probs": probs}, None, None, 0)


@pytest.mark.parametrize(
    ("hparam_names", "data_classes", "expected"),
    [(["a", "b", "c"], ["x", "y", "z"], "a"), (None, ["x", "y", "z"], "x"), (None, None, "0")],
)
def test_class_names_fallbacks(hparam_names, data_classes, expected, tmp_path: Path) -> None:
    module = SimpleNamespace(hparams={"class_names": hparam_names})
    trainer = SimpleNamespace(datamodule=SimpleNamespace(classes=data_classes) if data_classes else None,
                              world_size=1, global_rank=0, default_root_dir=str(tmp_path), is_global_zero=True)
    writer = PredictionWriter(top_k=2)
    writer.on_predict_start(trainer, module)
    _probs_row(writer, module, trainer, torch.tensor([[0.7, 0.2, 0.1]]), ["img.jpg"])
    assert not (tmp_path / "predictions.csv").exists()  # until every image is done
    writer.on_predict_end(trainer, module)
    assert not (tmp_path / "predictions.csv.partial").exists()
    with (tmp_path / "predictions.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row == {"file": "img.jpg", "class1": expected, "prob1": "0.700000",
                   "class2": {"a": "b", "x": "y", "0": "1"}[expected], "prob2": "0.200000"}
    assert class_names_for(module, trainer, 3)[0] == expected


def test_writer_rejects_wrong_outputs(tmp_path: Path) -> None:
    writer = PredictionWriter(output=str(tmp_path / "p.csv"))
    trainer = SimpleNamespace(world_size=1, global_rank=0, default_root_dir=str(tmp_path), datamodule=None)
    writer.on_predict_start(trainer, SimpleNamespace(hparams={}))
    with pytest.raises(TypeError, match=r"predict_step to return \{'paths', 'probs'\}, got Tensor"):
        writer.write_on_batch_end(trainer, None, torch.zeros(2, 3), None, None, 0)
    with pytest.raises(ValueError, match="returned 1 paths but 2 rows of probabilities"):
        _probs_row(writer, SimpleNamespace(hparams={}), trainer, torch.zeros(2, 3), ["a.jpg"])
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        PredictionWriter(top_k=0)


def test_predict_needs_no_training_data_and_names_a_bad_image(imagewoof_root: Path, tmp_path: Path, repo_root: Path,
                                                              capsys) -> None:
    """The class names come from the checkpoint, so predicting on another machine needs only the
    checkpoint and the photos; a broken photo stops the run with one message and no CSV that looks complete."""
    classes = [f"breed_{i}" for i in range(10)]
    images = _photos(imagewoof_root, tmp_path / "to_label", 3)
    ckpt = _untrained_checkpoint(classes, tmp_path / "model.ckpt")
    out = tmp_path / "preds.csv"
    argv = [
        "predict", "--config", str(repo_root / "configs/r18.yaml"), "--config",
        str(repo_root / "configs/trainer/cpu.yaml"),
        "--ckpt_path", str(ckpt), "--data.root", str(tmp_path / "no_training_data_here"), "--data.predict_path",
        str(images),
        "--data.batch_size", "2", "--data.num_workers", "0", "--run_dir", str(tmp_path / "run"),
        "--predictions.output", str(out),
    ]  # fmt: skip
    main(argv)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["class1"] in classes for r in rows)

    out.unlink()
    (images / "photo_9.jpg").write_bytes(sorted(images.iterdir())[0].read_bytes()[:500])  # a truncated copy, read last
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bad image file" in err and "photo_9.jpg" in err
    assert "--data.on_bad_image skip" in err and "Traceback" not in err
    assert not out.exists() and out.with_name("preds.csv.partial").exists()
