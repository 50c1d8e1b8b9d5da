"""ImageNet shards (``resnet-lit shards``, ``ImageNetDataModule(shards=...)``) on real imagewoof-mini JPEGs:
conversion of a folder and of tar.gz archives, the count and label check, bad images, the missing-LitData
message, the same images as the folder path, exact evaluation on 1 and 2 gloo ranks, exact mid-epoch resume."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("litdata")

from fit_helpers import fit_env  # noqa: E402

from resnet_lit.commands.shards import main as shards_main  # noqa: E402
from resnet_lit.data import ImageNetDataModule  # noqa: E402
from resnet_lit.data.folder import scan_image_folder  # noqa: E402
from resnet_lit.data.litdata_source import META_NAME, ShardImages  # noqa: E402

CLASSES = 3
TRAIN, VAL = 8, 5  # images a class: 24 training, 15 validation (odd: the two ranks' shards differ)


def read_all(location: str, split: str) -> list[tuple[bytes, int, str]]:
    """Every sample of a split, in order (reads all the bytes)."""
    ds = ShardImages(location, split, lambda data, name: data)
    return [ds.sample(i) for i in range(len(ds))]


@pytest.fixture(scope="module")
def tree(imagewoof_root: Path, tmp_path_factory) -> Path:
    """A small ImageFolder tree of real imagewoof-mini photographs (greyscale ones included where they fall)."""
    root = tmp_path_factory.mktemp("woof") / "tree"
    for split, per_class in (("train", TRAIN), ("val", VAL)):
        taken: dict[str, int] = {}
        with tarfile.open(imagewoof_root / f"{split}.tar.gz") as tf:
            for m in tf:
                parts = m.name.split("/")
                if not m.isfile() or len(parts) < 2:
                    continue
                cls = parts[-2]
                if len(taken) == CLASSES and cls not in taken or taken.get(cls, 0) == per_class:
                    continue
                taken[cls] = taken.get(cls, 0) + 1
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                (root / split / cls / parts[-1]).write_bytes(tf.extractfile(m).read())
    return root


def convert(src: Path, out: Path, *extra: str) -> int:
    return shards_main([str(src), str(out), "--workers", "2", "--chunk_bytes", "1MB", *extra])


@pytest.fixture(scope="module")
def shards(tree: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    assert convert(tree, out) == 0
    return out


def test_folder_conversion_keeps_bytes_labels_paths_and_order(tree: Path, shards: Path) -> None:
    meta = json.loads((shards / META_NAME).read_text())
    classes, _ = scan_image_folder(tree / "train")
    assert meta["classes"] == classes
    for split, per_class in (("train", TRAIN), ("val", VAL)):
        assert meta["splits"][split]["per_class"] == [per_class] * CLASSES
        _, samples = scan_image_folder(tree / split)
        got = read_all(str(shards), split)
        assert [(d, label, name.rsplit(":", 1)[1]) for d, label, name in got] == [
            (Path(p).read_bytes(), label, str(Path(p).relative_to(tree / split))) for p, label in samples]
    assert not list(shards.glob(".*partial"))  # nothing left of the work in progress


def test_tar_conversion_resume_and_max_side(tree: Path, shards: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "archives"
    src.mkdir()
    for split in ("train", "val"):
        with tarfile.open(src / f"{split}.tar.gz", "w:gz") as tf:
            tf.add(tree / split, arcname=split)
    out = tmp_path / "out"
    assert convert(src, out, "--splits", "val", "--cache_dir", str(tmp_path / "cache")) == 0
    assert [d for d, _, _ in read_all(str(out), "val")] == [d for d, _, _ in read_all(str(shards), "val")]
    # An interrupted train split (its partial output, or a folder the JSON does not list) is not data ...
    (out / ".train.partial").mkdir()
    (out / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished 'train' split"):
        ImageNetDataModule(shards=str(out), num_workers=0).setup("fit")
    # ... and a rerun keeps the finished split and converts the rest.
    assert convert(src, out, "--cache_dir", str(tmp_path / "cache")) == 0
    assert "val: already converted" in capsys.readouterr().err
    assert json.loads((out / META_NAME).read_text())["splits"]["train"]["images"] == TRAIN * CLASSES
    # --max_side: every image's longer side at most N, aspect kept, still labelled and named as before.
    small = tmp_path / "small"
    assert convert(tree, small, "--splits", "val", "--max_side", "160") == 0
    from PIL import Image

    for (d, label, name), (d0, label0, name0) in zip(read_all(str(small), "val"), read_all(str(shards), "val")):
        a, b = Image.open(io.BytesIO(d)).size, Image.open(io.BytesIO(d0)).size
        assert max(a) == 160 and abs(a[0] / a[1] - b[0] / b[1]) < 0.02 and (label, name.rsplit(":", 1)[1]) == (
            label0, name0.rsplit(":", 1)[1])


def test_bad_image_is_named_or_skipped_and_listed(tree: Path, tmp_path: Path, capsys) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tree / "val", src / "val")
    cls = sorted(p.name for p in (src / "val").iterdir())[1]
    good = next((src / "val" / cls).iterdir()).read_bytes()
    (src / "val" / cls / "half.JPEG").write_bytes(good[: len(good) // 3])
    assert convert(src, tmp_path / "out") == 2  # an input error (README "Exit status")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("resnet-lit shards: 1 unreadable image(s)") and f"{cls}/half.JPEG" in err[-1]
    assert "--on_bad_image skip" in err[-1] and not (tmp_path / "out" / "val").exists()
    assert convert(src, tmp_path / "out", "--on_bad_image", "skip") == 0
    meta = json.loads((tmp_path / "out" / META_NAME).read_text())["splits"]["val"]
    assert meta["skipped"] == [f"{cls}/half.JPEG"] and meta["images"] == VAL * CLASSES


def test_missing_litdata_says_how_to_install(shards: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "litdata", None)  # import litdata -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'resnet-lit\[shards\]'"):
        ImageNetDataModule(shards=str(shards)).classes
    assert shards_main([str(shards), str(shards / "again")]) == 2


def _equal(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return torch.equal(a, b)


def _seeded_batches(dm: ImageNetDataModule, split: str) -> list:
    torch.manual_seed(0)  # the PCA colour noise (training) draws from the global generator
    return list(dm.batches(split))


@pytest.mark.parametrize("decode", ["pil", "cpu"])
def test_shards_read_as_the_folder_path(tree: Path, shards: Path, tmp_path: Path, decode: str) -> None:
    """The same batches, to the bit, from the folder and from its shards: evaluation views and, with the
    per-image seeds, the training crops too; decoded by PIL in the loader or as a batch after it."""
    kw = dict(batch_size=4, eval_batch_size=4, num_workers=0, test_mode="flip", decode=decode)
    folder = ImageNetDataModule(str(tree), cache_dir=str(tmp_path / "cache"), **kw)
    sharded = ImageNetDataModule(shards=str(shards), **kw)
    assert sharded.classes == folder.classes and sharded.num_classes == CLASSES
    for stage in ("fit", "test"):
        folder.setup(stage)
        sharded.setup(stage)
    assert len(folder.val_set) == len(sharded.val_set) == VAL * CLASSES
    for split, n in (("val", VAL * CLASSES), ("test", VAL * CLASSES), ("train", TRAIN * CLASSES)):
        a, b = _seeded_batches(folder, split), _seeded_batches(sharded, split)
        assert sum(len(y) for _, y in a) == n and _equal(a, b), split


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3 (moto's server on a free port) that boto3, and so LitData, reach through ``AWS_ENDPOINT_URL``;
    the environment reaches DataLoader workers too."""
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    yield boto3.client("s3")
    server.stop()


def test_shards_read_from_s3_as_from_the_folder(shards: Path, tmp_path: Path, s3_server) -> None:
    """The shards copied to an S3 bucket (moto's local server) give the local shards' batches to the bit,
    training ones read by 2 workers included; a wrong URL is one line naming it."""
    s3_server.create_bucket(Bucket="woof")
    for f in shards.rglob("*"):
        if f.is_file():
            s3_server.upload_file(str(f), "woof", f"imagenet/{f.relative_to(shards)}")
    kw = dict(batch_size=4, eval_batch_size=4, test_mode="flip")
    local = ImageNetDataModule(shards=str(shards), num_workers=0, **kw)
    remote = ImageNetDataModule(shards="s3://woof/imagenet", cache_dir=str(tmp_path / "cache" / "s3"),
                                num_workers=2, **kw)
    assert remote.classes == local.classes
    for stage in ("fit", "test"):
        local.setup(stage)
        remote.setup(stage)
    for split, n in (("val", VAL * CLASSES), ("test", VAL * CLASSES), ("train", TRAIN * CLASSES)):
        a, b = _seeded_batches(local, split), _seeded_batches(remote, split)
        assert sum(len(y) for _, y in a) == n and _equal(a, b), split
    for url in ("s3://no-such-bucket/imagenet", "s3://woof/elsewhere"):
        with pytest.raises(FileNotFoundError, match=rf"cannot read {url}/{META_NAME} .*resnet-lit shards") as exc:
            ImageNetDataModule(shards=url, cache_dir=str(tmp_path / "cache" / "bad")).classes
        assert "\n" not in str(exc.value)


def test_a_url_start_that_finds_no_index_yet_is_tried_again(monkeypatch) -> None:
    """Seen once in the full suite under load: a DataLoader worker's StreamingDataset found the shared
    cache without index.json while the other worker was still fetching it, and failed. Such a start is
    tried again for up to ``wait_s``; other errors, and local folders, fail at once."""
    import litdata

    from resnet_lit.data.litdata_source import _open_streaming_dataset

    missing = "The provided dataset `/cache/x` doesn't contain any index.json file."
    calls = []

    def flaky(url, **kw):
        calls.append(url)
        if len(calls) < 3:
            raise ValueError(missing)
        return "opened"

    monkeypatch.setattr(litdata, "StreamingDataset", flaky)
    assert _open_streaming_dataset("s3://b/x/val", None) == "opened" and len(calls) == 3
    calls.clear()

    def never(url, **kw):
        calls.append(url)
        raise ValueError(missing)

    monkeypatch.setattr(litdata, "StreamingDataset", never)
    with pytest.raises(ValueError, match="index.json"):
        _open_streaming_dataset("s3://b/x/val", None, wait_s=0.2)
    assert len(calls) > 1
    calls.clear()
    with pytest.raises(ValueError, match="index.json"):
        _open_streaming_dataset("/local/shards/val", None)
    assert len(calls) == 1


def _small(shards: Path, run: Path, source: list[str] | None = None) -> list[str]:
    # The CIFAR ResNet-20 at width 0.25 on 64-px crops of real photographs: a real ImageNet-path run in seconds.
    # ``source``: other --data arguments in place of the shards read in the main process.
    source = source or ["--data.shards", str(shards), "--data.num_workers", "0"]
    return ["--data", "resnet_lit.data.ImageNetDataModule", *source, "--data.batch_size", "8",
            "--data.eval_batch_size", "4", "--data.train_size", "64",
            "--data.test_size", "64", "--model.arch", "resnet20", "--model.width", "0.25",
            "--model.schedule.unit", "step", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--run_dir", str(run)]


def _val_figures(run: Path) -> dict[str, float]:
    with open(run / "validate" / "metrics.csv", newline="") as f:
        return {k: float(v) for row in csv.DictReader(f) for k, v in row.items() if v and "/" in k}


@pytest.mark.slow
def test_one_and_two_ranks_evaluate_each_image_once(repo_root: Path, shards: Path, tmp_path: Path,
                                                     monkeypatch) -> None:
    from resnet_lit.models import create_model
    from resnet_lit.runs.cli import main

    weights = tmp_path / "resnet20.pt"
    torch.manual_seed(0)
    torch.save(create_model("resnet20", num_classes=CLASSES, width=0.25).state_dict(), weights)
    args = ["validate", *_small(shards, tmp_path / "run1"), "--model.init_weights", str(weights)]
    monkeypatch.chdir(repo_root)
    main([*args, "--trainer.devices", "1"])  # one process: this one
    args[args.index(str(tmp_path / "run1"))] = str(tmp_path / "run2")
    done = subprocess.run([str(Path(sys.executable).parent / "resnet-lit"), *args, "--trainer.devices", "2",
                           "--config", "configs/trainer/ddp_cpu.yaml"], cwd=repo_root, env=fit_env(),
                          capture_output=True, text=True, timeout=300)  # two gloo processes
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _val_figures(tmp_path / "run1"), _val_figures(tmp_path / "run2")
    assert one["val/images"] == two["val/images"] == VAL * CLASSES
    for key in ("val/acc1", "val/acc5", "val/error"):
        assert one[key] == two[key]
    assert one["val/loss"] == pytest.approx(two["val/loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["shards", "folder"])
def test_mid_epoch_stop_resumes_bit_identically(repo_root: Path, tree: Path, shards: Path, tmp_path: Path,
                                                source: str) -> None:
    # 24 images / 8 = 3 steps an epoch; the interrupted run stops after epoch 1's first batch. The crops and
    # flips are seeded per image (samplers.SeededShardSampler); the PCA colour noise (lighting 0.1, the default)
    # draws from the global torch generator, which the checkpoint carries and no loader draws from (each has its
    # own generator). The folder variant reads through 2 worker processes with progressive resizing (48 px in
    # epoch 0, 64 px from epoch 1: the resumed epoch), where each image carries its seed and its size.
    data = ["--data.root", str(tree), "--data.cache_dir", str(tmp_path / "cache"), "--data.num_workers", "2",
            "--data.progressive_resize", '{"start_size": 48, "end_size": 64, "end_epoch": 1, "step": 16}']
    extra = ["--trainer.deterministic", "true", "--checkpoint.monitor", "null",
             "--seed_everything", "0",
             "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    for run_dir, steps, more in ((ref, 5, []), (run, 4, []), (run, 5, ["--ckpt_path", "last"])):
        args = _small(shards, run_dir, data if source == "folder" else None)
        done = subprocess.run([str(Path(sys.executable).parent / "resnet-lit"), "fit", *args, *extra,
                               "--trainer.max_steps", str(steps), *more], cwd=repo_root, env=fit_env(),
                              capture_output=True, text=True, timeout=300)  # fresh processes, as a job runs
        assert done.returncode == 0, done.stderr[-3000:]
        if steps == 4:
            state = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["loops"]["fit_loop"]
            assert state["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 1}]
    a = torch.load(ref / "checkpoints/last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 5
    assert [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])] == []
    ma, mb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(ma[i]["momentum_buffer"], mb[i]["momentum_buffer"]) for i in ma)
