"""Bad data, decided up front: each case written by the test, its error names the file; skip counts.
Also the ILSVRC-2012 validation sorter."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import pytest
import torch
from bad_images import bad_files, write_tree
from PIL import Image

from resnet_lit.commands.imagenet_val import main as imagenet_val
from resnet_lit.data import BadImageError, CIFARDataModule, ImageNetDataModule


def dm_for(root: Path, **kw) -> ImageNetDataModule:
    return ImageNetDataModule(str(root), batch_size=2, num_workers=0, cache_dir=str(root / "cache"), **kw)


def read_all(dm: ImageNetDataModule) -> None:
    dm.setup("fit")
    for _ in dm.train_dataloader():
        pass


@pytest.mark.parametrize("name", ["truncated.JPEG", "zero.JPEG", "notes.JPEG", "corrupt.JPEG"])
def test_bad_file_error_names_it_at_read_time_and_in_scan(tmp_path, woof_jpegs, name) -> None:
    root = write_tree(tmp_path, woof_jpegs)
    (root / "train" / "a" / name).write_bytes(bad_files(woof_jpegs[0])[name])
    with pytest.raises(BadImageError, match=rf"{name}.*on_bad_image='skip'"):
        read_all(dm_for(root))
    with pytest.raises(BadImageError, match=name):  # before training starts
        dm_for(root, scan=True).setup("fit")


def test_skip_trains_on_and_counts(tmp_path, woof_jpegs) -> None:
    root = write_tree(tmp_path, woof_jpegs, per_class=4)
    for name, data in list(bad_files(woof_jpegs[0]).items())[:3]:
        (root / "train" / "b" / name).write_bytes(data)  # 8 good + 3 bad = 11 training files
    (root / "train" / "a" / "extra.JPEG").write_bytes(woof_jpegs[5])  # 12: batches of 2 read every file

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.steps = 0

        def training_step(self, batch, i):
            x, y = batch
            assert x.shape == (2, 3, 224, 224)
            self.steps += 1
            return torch.nn.functional.cross_entropy(self.fc(x.mean((2, 3))), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = dm_for(root, on_bad_image="skip", lighting=0.0)
    probe = Probe()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(probe, datamodule=dm)
    assert probe.steps == 6 and dm.num_skipped == 3
    # with the scan, the bad files are dropped before training and counted once
    scanned = dm_for(root, on_bad_image="skip", scan=True)
    scanned.setup("fit")
    assert len(scanned.train_set) == 9 and scanned.num_skipped == 3


def test_skip_count_is_logged(tmp_path, woof_jpegs) -> None:
    root = write_tree(tmp_path, woof_jpegs)
    (root / "train" / "a" / "zero.JPEG").write_bytes(b"")
    logged = []

    class Logger(L.pytorch.loggers.Logger):
        name, version = "probe", 0

        def log_metrics(self, metrics, step=None):
            logged.append(metrics)

        def log_hyperparams(self, *a, **k):
            pass

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def training_step(self, batch, i):
            return self.fc(batch[0].mean((2, 3))).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=Logger(), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Probe(), datamodule=dm_for(root, on_bad_image="skip"))
    assert {"data/skipped_images": 1.0} in logged


def test_empty_class_folder(tmp_path, woof_jpegs) -> None:
    root = write_tree(tmp_path, woof_jpegs)
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    with pytest.raises(ValueError, match=r"empty class folder .*train/c"):
        dm_for(root).setup("fit")
    dm = dm_for(root, on_bad_image="skip")
    dm.setup("fit")
    assert dm.classes == ["a", "b", "c"] and len(dm.train_set) == 6


def test_train_and_val_class_sets_differ(tmp_path, woof_jpegs) -> None:
    root = write_tree(tmp_path, woof_jpegs)
    (root / "val" / "z").mkdir()
    (root / "val" / "z" / "0.JPEG").write_bytes(woof_jpegs[0])
    with pytest.raises(ValueError, match=r"only in .*val: \['z'\]"):
        dm_for(root).setup("fit")


def test_nonexistent_paths(tmp_path, woof_jpegs) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        dm_for(tmp_path / "missing").classes
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="expected .*train/<class>"):
        dm_for(tmp_path / "empty").classes
    root = write_tree(tmp_path / "noval", woof_jpegs, splits=("train",))
    with pytest.raises(FileNotFoundError, match="no 'val' split"):
        dm_for(root).setup("fit")


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return buf.getvalue()


def test_cifar_folder_bad_file_and_skip(tmp_path) -> None:
    for split in ("train", "test"):
        for c, color in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                (tmp_path / split / c / f"{i}.png").write_bytes(_png(color))
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(_png((0, 0, 0))[:40])
    with pytest.raises(BadImageError, match="broken.png"):
        CIFARDataModule(str(tmp_path), cache_dir=str(tmp_path / "c1")).classes
    dm = CIFARDataModule(str(tmp_path), cache_dir=str(tmp_path / "c2"), on_bad_image="skip", batch_size=2)
    dm.setup("fit")
    assert dm.classes == ["cat", "dog"] and dm.num_skipped == 1 and len(dm.train_set) == 6
    assert dm.train_set.x[dm.train_set.y == 0][:, 0].float().mean() > 150  # cats are red, labels line up
    (tmp_path / "test" / "cow").mkdir()
    (tmp_path / "test" / "cow" / "0.png").write_bytes(_png((1, 2, 3)))
    with pytest.raises(ValueError, match=r"only in .*test: \['cow'\]"):
        CIFARDataModule(str(tmp_path), cache_dir=str(tmp_path / "c3"), on_bad_image="skip").classes


def test_imagenet_val_sorter(tmp_path, woof_jpegs, capsys) -> None:
    val = tmp_path / "val"
    val.mkdir()
    for i in range(1, 5):
        (val / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(woof_jpegs[i])
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n2\n3\n")
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n01440764\nn01443537\nn01484850\n")
    assert imagenet_val([str(val), "--devkit", str(data.parent), "--synsets", str(synsets)]) == 0
    assert sorted(p.name for p in val.iterdir()) == ["n01440764", "n01443537", "n01484850"]
    assert sorted(p.name for p in (val / "n01443537").iterdir()) == ["ILSVRC2012_val_00000001.JPEG",
                                                                     "ILSVRC2012_val_00000003.JPEG"]
    assert "moved 4 images into 3 class folders" in capsys.readouterr().out
    # Kaggle's LOC_val_solution.csv, linked into another folder
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "ILSVRC2012_val_00000007.JPEG").write_bytes(woof_jpegs[0])
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000007,n09999999 1 2 3 4\n")
    assert imagenet_val([str(flat), "--labels", str(csv), "--out", str(tmp_path / "sorted"), "--mode", "symlink"]) == 0
    assert (tmp_path / "sorted" / "n09999999" / "ILSVRC2012_val_00000007.JPEG").is_symlink()


def test_skipped_images_are_summed_over_ranks() -> None:
    """Under DDP each rank meets its own bad files: data/skipped_images logs the sum over ranks (two
    ranks that skipped one image each: 2), not rank 0's count alone. The trainer is a stand-in whose
    reduce sums two equal ranks; the hook is what Lightning calls with each training batch."""
    from types import SimpleNamespace

    logged = []
    dm = ImageNetDataModule("unused", on_bad_image="skip")
    dm.trainer = SimpleNamespace(
        world_size=2, training=True, global_step=7,
        logger=SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step))),
        strategy=SimpleNamespace(root_device=torch.device("cpu"), reduce=lambda t, reduce_op: t * 2),
        _logger_connector=SimpleNamespace(should_update_logs=True),
    )
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    out = dm.on_before_batch_transfer((x, torch.tensor([0, 1]), torch.tensor([1, 0])), 0)
    assert out[0] is x and out[1].tolist() == [0, 1]
    assert dm.num_skipped == 1  # this rank's own
    assert logged == [({"data/skipped_images": 2.0}, 7)]


def _eval_command(command: str, root: Path, weights: Path, run_dir: Path, devices: int) -> list[str]:
    args = [command, "--data", "resnet_lit.data.ImageNetDataModule", "--data.root", str(root),
            "--data.on_bad_image", "skip", "--data.eval_batch_size", "4", "--data.num_workers", "0",
            "--data.cache_dir", str(root / "cache"), "--model.arch", "resnet20", "--model.width", "0.25",
            "--model.init_weights", str(weights), "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
            "--trainer.enable_progress_bar", "false", "--run_dir", str(run_dir)]
    if devices > 1:
        args += ["--config", "configs/trainer/ddp_cpu.yaml"]
    if command == "predict":
        args += ["--data.predict_path", str(root / "val")]
    return args


@pytest.mark.parametrize("command, devices", [
    ("validate", 1), ("test", 1), ("predict", 1),
    pytest.param("validate", 2, marks=pytest.mark.slow), pytest.param("test", 2, marks=pytest.mark.slow),
])
def test_skip_evaluates_each_readable_image_once(command: str, devices: int, repo_root: Path, tmp_path: Path,
                                                 woof_jpegs: list[bytes], capfd, caplog,
                                                 monkeypatch) -> None:
    """A real folder with 10 readable and 4 unreadable validation images, evaluated by the ``resnet-lit``
    CLI (in-process on one device; two real processes under DDP with gloo): exactly the 10 are counted,
    with the accuracies and loss of the same folder without the bad files; the 4 are logged as skipped,
    summed over ranks."""
    import csv
    import subprocess
    import sys

    from fit_helpers import fit_env

    from resnet_lit.models import create_model
    from resnet_lit.training.classifier import ImageClassifier

    clean = write_tree(tmp_path / "clean", woof_jpegs, per_class=5)
    root = write_tree(tmp_path / "bad", woof_jpegs, per_class=5)
    for i, (name, data) in enumerate(bad_files(woof_jpegs[0]).items()):  # in both classes, mid-batch
        (root / "val" / "ab"[i % 2] / f"{i}{name}").write_bytes(data)
    weights = tmp_path / "resnet20.pt"
    torch.manual_seed(0)
    torch.save(create_model("resnet20", num_classes=2, width=0.25).state_dict(), weights)

    args = _eval_command(command, root, weights, tmp_path / "run", devices)
    if devices == 1:  # one process: the CLI in-process (a fresh process adds nothing to what is counted)
        from resnet_lit.runs.cli import main

        monkeypatch.chdir(repo_root)
        main(args)
        stderr = capfd.readouterr().err + caplog.text  # the warnings are logged
    else:  # two processes under DDP: the real command, as a user runs it
        env = {**fit_env(), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([str(Path(sys.executable).parent / "resnet-lit"), *args],
                              cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        stderr = done.stderr
    assert "Skipped (on_bad_image='skip')" in stderr and "or pass on_bad_image='skip'" not in stderr
    if command == "predict":  # one row per readable image, none for the bad ones or their stand-ins
        with open(tmp_path / "run" / "predictions.csv", newline="") as f:
            files = [row["file"] for row in csv.DictReader(f)]
        good = sorted(str(p) for p in (root / "val").rglob("*.JPEG") if len(p.stem) == 1)  # 0.JPEG ... 4.JPEG
        assert sorted(files) == good and len(good) == 10
        return
    with open(tmp_path / "run" / command / "metrics.csv", newline="") as f:
        got = {k: float(v) for row in csv.DictReader(f) for k, v in row.items() if v and "/" in k}
    stage = "val" if command == "validate" else "test"
    assert got[f"{stage}/images"] == 10 and got[f"{stage}/skipped_images"] == 4

    model = ImageClassifier(arch="resnet20", num_classes=2, width=0.25, init_weights=str(weights))
    model.load_init_weights(num_classes_change="error")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    dm = ImageNetDataModule(str(clean), eval_batch_size=4, num_workers=0, cache_dir=str(clean / "cache"))
    expected = (trainer.validate if command == "validate" else trainer.test)(model, datamodule=dm, verbose=False)[0]
    assert expected[f"{stage}/images"] == 10 and f"{stage}/skipped_images" not in expected
    for name in ("acc1", "acc5", "error"):
        assert got[f"{stage}/{name}"] == pytest.approx(float(expected[f"{stage}/{name}"]), abs=1e-6)
    assert got[f"{stage}/loss"] == pytest.approx(float(expected[f"{stage}/loss"]), rel=1e-5)
