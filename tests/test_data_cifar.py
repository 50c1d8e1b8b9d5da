"""CIFARDataModule on the real CIFAR-10 archive and on torchvision's pickle format; the batched
augmentation's statistics; per-rank sharding."""

from __future__ import annotations

import itertools
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from resnet_lit.data import CIFARDataModule, ShardSampler, cifar_io, shard_indices
from resnet_lit.data.cifar_io import DownloadError
from resnet_lit.data.labels import PADDED_LABEL
from resnet_lit.data.transforms import cifar_augment, normalize

CIFAR10_ORDER = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cifar_cache")


@pytest.fixture(scope="session")
def cifar_holdout(cifar_root: Path, cifar_cache: Path) -> CIFARDataModule:
    """The real archive, decoded once per session (the slowest step), 45k/5k split."""
    dm = CIFARDataModule(str(cifar_root), val_split="holdout", cache_dir=str(cifar_cache))
    dm.setup("fit")
    return dm


def test_real_archive_counts_classes_and_mean(cifar_holdout: CIFARDataModule, cifar_root, cifar_cache) -> None:
    d = cifar_holdout._load()
    assert d["train_x"].shape == (50_000, 3, 32, 32) and d["train_x"].dtype == torch.uint8
    assert d["test_x"].shape == (10_000, 3, 32, 32)
    assert cifar_holdout.classes == CIFAR10_ORDER and cifar_holdout.num_classes == 10
    assert torch.equal(d["train_y"].bincount(), torch.full((10,), 5000))
    assert torch.equal(d["test_y"].bincount(), torch.full((10,), 1000))
    # per-pixel mean of the 45k training split: CIFAR-10's channel means are about 0.491, 0.482, 0.447
    mean = cifar_holdout.mean
    assert mean.shape == (3, 32, 32)
    assert torch.allclose(mean.mean((1, 2)), torch.tensor([0.491, 0.482, 0.447]), atol=0.01)
    assert 0.3 < float(mean.min()) and float(mean.max()) < 0.7  # a smooth mean image, no outliers
    # the default split: all 50k for training, the test set for validation
    full = CIFARDataModule(str(cifar_root), cache_dir=str(cifar_cache))
    full.setup("fit")
    assert len(full.train_set) == 50_000 and len(full.val_set) == 10_000


def test_holdout_split_is_stratified_and_seeded(cifar_holdout: CIFARDataModule, cifar_root, cifar_cache) -> None:
    assert len(cifar_holdout.train_set) == 45_000 and len(cifar_holdout.val_set) == 5_000
    assert torch.equal(cifar_holdout.train_set.y.bincount(), torch.full((10,), 4500))
    assert torch.equal(cifar_holdout.val_set.y.bincount(), torch.full((10,), 500))
    assert len(cifar_holdout.test_set) == 10_000
    # no image in both splits (compared by their first 512 bytes; CIFAR-10 has a handful of near-duplicates)
    head = lambda x: set(map(bytes, x.reshape(len(x), -1)[:, :512].numpy()))  # noqa: E731
    assert len(head(cifar_holdout.val_set.x) & head(cifar_holdout.train_set.x)) < 5
    other = CIFARDataModule(str(cifar_root), val_split="holdout", seed=1, cache_dir=str(cifar_cache))
    other.setup("fit")
    same_y = torch.equal(other.val_set.y, cifar_holdout.val_set.y)
    assert not same_y or not torch.equal(other.val_set.x, cifar_holdout.val_set.x)


def test_second_start_reads_the_cache(cifar_holdout, cifar_root, cifar_cache, monkeypatch) -> None:
    cached = list(cifar_cache.glob("cifar-*.pt"))
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(cifar_io, "_read_images", no_decoding)
    dm = CIFARDataModule(str(cifar_root), subset=100, cache_dir=str(cifar_cache))
    dm.setup("fit")
    assert len(dm.train_set) == 100 and torch.equal(dm.train_set.y.bincount(), torch.full((10,), 10))


def _write_cifar10_pickles(root: Path, per_batch: int = 20) -> tuple[np.ndarray, list[int]]:
    """torchvision's cifar-10-batches-py layout: dicts of 'data' (uint8 [N, 3072], CHW rows) and 'labels'."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_x, all_y = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(d / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": y, "data": x,
                         "filenames": [f"{i}.png" for i in range(per_batch)]}, f, protocol=2)
        if name != "test_batch":
            all_x.append(x)
            all_y += y
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_ORDER, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return np.concatenate(all_x), all_y


def test_torchvision_pickle_format_loads(tmp_path: Path) -> None:
    x, y = _write_cifar10_pickles(tmp_path / "data")
    for root in (tmp_path / "data", tmp_path / "data" / "cifar-10-batches-py"):
        dm = CIFARDataModule(str(root), batch_size=10, cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        assert dm.classes == CIFAR10_ORDER
        assert len(dm.train_set) == 100 and len(dm.val_set) == 20
        assert torch.equal(dm.train_set.x, torch.from_numpy(x.reshape(-1, 3, 32, 32)))
        assert dm.train_set.y.tolist() == y
        xb, yb = next(iter(dm.train_dataloader()))
        assert xb.shape == (10, 3, 32, 32) and xb.dtype == torch.uint8


def test_pickle_with_foreign_objects_is_refused(tmp_path: Path) -> None:
    _write_cifar10_pickles(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({"label_names": SimpleNamespace(a=1)}, f)  # a global outside the CIFAR format
    with pytest.raises(pickle.UnpicklingError, match="types.SimpleNamespace"):
        CIFARDataModule(str(tmp_path)).classes


def test_missing_root_and_offline_download_errors(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        CIFARDataModule(str(tmp_path / "nowhere")).classes
    monkeypatch.chdir(tmp_path)  # a relative root is also shown as the absolute path it was read as
    with pytest.raises(FileNotFoundError, match=re.escape(f"nowhere (read as {tmp_path / 'nowhere'})")):
        CIFARDataModule("nowhere").classes
    with pytest.raises(FileNotFoundError, match="train.tar.gz"):
        CIFARDataModule(str(tmp_path)).classes

    import torchvision.datasets

    class Offline:  # torchvision's CIFAR10 on a machine without internet (test_broken_inputs.py: a real one)
        url = torchvision.datasets.CIFAR10.url

        def __init__(self, *args, **kwargs):
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DownloadError, match=r"could not download cifar10 from .* \(OSError: network is unreachable\)"):
        CIFARDataModule(str(tmp_path), download=True).classes


def _recover_views(x: torch.Tensor, out: torch.Tensor, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output image, the (dy, dx, flipped) that reproduces it from the padded input (-1: none)."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    dy = torch.full((b,), -1)
    dx = torch.full((b,), -1)
    fl = torch.full((b,), -1)
    for i in range(2 * pad + 1):
        for j in range(2 * pad + 1):
            crop = padded[:, :, i : i + h, j : j + w]
            for f, view in ((0, crop), (1, crop.flip(-1))):
                hit = (view == out).flatten(1).all(1) & (dy < 0)
                dy[hit], dx[hit], fl[hit] = i, j, f
    return dy, dx, fl


def test_augmentation_statistics(cifar_holdout: CIFARDataModule) -> None:
    torch.manual_seed(0)
    x8 = cifar_holdout.train_set.x[:512]
    x = normalize(x8, cifar_holdout.mean)
    out = cifar_holdout.transform_batch(x8, train=True)
    assert out.shape == (512, 3, 32, 32) and out.dtype == torch.float32
    dy, dx, fl = _recover_views(x, out)
    assert bool((dy >= 0).all()), "every output is a 32x32 crop (or its mirror) of the zero-padded image"
    assert 0.4 < fl.float().mean() < 0.6  # about half flipped
    assert set(dy.tolist()) == set(range(9)) and set(dx.tolist()) == set(range(9))  # all 81 offsets occur
    # zero padding shows at the borders: a crop starting at row 0 has 4 rows of zeros at its top
    top = out[dy == 0]
    assert len(top) > 20 and bool((top[:, :, :4, :] == 0).all())
    left_unflipped = out[(dx == 0) & (fl == 0)]
    assert bool((left_unflipped[:, :, :, :4] == 0).all())
    assert not bool((x[:, :, :, :4] == 0).all())  # the originals have no such border
    # evaluation: mean-subtracted and otherwise unchanged
    ev = cifar_holdout.transform_batch(x8, train=False)
    assert torch.equal(ev, x)
    assert torch.allclose(ev + cifar_holdout.mean, x8.float() / 255, atol=1e-6)


def test_training_transform_equals_normalize_then_augment(cifar_holdout: CIFARDataModule) -> None:
    # transform_batch keeps its padded buffer between calls (only the interior is rewritten): the
    # output must stay bit-identical to padding afresh, across batch sizes and repeated calls.
    for n in (64, 64, 16, 64):
        x8 = cifar_holdout.train_set.x[n : 2 * n]
        torch.manual_seed(n)
        ours = cifar_holdout.transform_batch(x8, train=True)
        torch.manual_seed(n)
        reference = cifar_augment(normalize(x8, cifar_holdout.mean), pad=4)
        assert torch.equal(ours, reference)
    border = cifar_holdout._padded.clone()
    border[:, :, 4:36, 4:36] = 0
    assert cifar_holdout._padded.shape == (64, 3, 40, 40) and not bool(border.any())


def test_on_after_batch_transfer_follows_trainer_state(cifar_holdout: CIFARDataModule) -> None:
    x8, y = cifar_holdout.train_set[list(range(64))]
    cifar_holdout.trainer = SimpleNamespace(training=False)
    try:
        xe, ye = cifar_holdout.on_after_batch_transfer((x8, y), 0)
        assert torch.equal(xe, normalize(x8, cifar_holdout.mean)) and ye is y
        cifar_holdout.trainer = SimpleNamespace(training=True)
        xt, _ = cifar_holdout.on_after_batch_transfer((x8, y), 0)
        assert xt.shape == x8.shape and not torch.equal(xt, xe)
    finally:
        cifar_holdout.trainer = None


def test_augment_is_crop_and_flip_of_known_image() -> None:
    # one image with a gradient: every crop/flip is distinguishable, shape and values follow exactly
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).view(1, 2, 32, 32).repeat(256, 1, 1, 1)
    out = cifar_augment(x, pad=4, generator=torch.Generator().manual_seed(0))
    dy, dx, fl = _recover_views(x, out)
    assert bool((dy >= 0).all()) and 0.35 < fl.float().mean() < 0.65


def test_fit_with_lightning_trainer(cifar_root, cifar_cache) -> None:
    """Through a real Trainer: training batches arrive augmented, validation batches plain (in
    batches of eval_batch_size), every validation image once."""
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 10)
            self.train_shapes, self.val_seen, self.val_sizes = [], 0, []

        def training_step(self, batch, i):
            x, y = batch
            self.train_shapes.append((tuple(x.shape), x.dtype))
            return torch.nn.functional.cross_entropy(self.fc(x.flatten(1)), y)

        def validation_step(self, batch, i):
            x, y = batch
            n = int((y != PADDED_LABEL).sum())  # the images; the rest pads a short batch to full size
            dm = self.trainer.datamodule
            assert torch.equal(x[:n], normalize(dm.val_set.x[self.val_seen : self.val_seen + n], dm.mean))
            assert bool((y[n:] == PADDED_LABEL).all())
            self.val_seen += n
            self.val_sizes.append(len(x))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = CIFARDataModule(str(cifar_root), batch_size=32, eval_batch_size=64, subset=200, cache_dir=str(cifar_cache))
    probe = Probe()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(probe, datamodule=dm)
    assert probe.train_shapes == [((32, 3, 32, 32), torch.float32)] * (200 // 32)  # drop_last: static shapes
    assert probe.val_seen == 200
    assert probe.val_sizes == [64, 64, 64, 64]  # the last batch of 8 padded to 64 (pad_eval_batches)
    assert CIFARDataModule(str(cifar_root), batch_size=32).eval_batch_size == 32  # default: batch_size
    with pytest.raises(ValueError, match="eval_batch_size must be >= 1"):
        CIFARDataModule(str(cifar_root), eval_batch_size=0)


def test_sharding_world_size_two() -> None:
    n = 1001
    for epoch in (0, 1):
        r0 = shard_indices(n, 0, 2, shuffle=True, seed=3, epoch=epoch)
        r1 = shard_indices(n, 1, 2, shuffle=True, seed=3, epoch=epoch)
        assert len(r0) == len(r1) == 500  # equal step counts on both ranks
        assert not set(r0.tolist()) & set(r1.tolist())
        assert len(set(r0.tolist()) | set(r1.tolist())) == 1000  # covers all but the one left over
    assert not torch.equal(shard_indices(n, 0, 2, shuffle=True, seed=3, epoch=0),
                           shard_indices(n, 0, 2, shuffle=True, seed=3, epoch=1))
    assert torch.equal(shard_indices(n, 0, 2, shuffle=True, seed=3, epoch=1),
                       shard_indices(n, 0, 2, shuffle=True, seed=3, epoch=1))
    # evaluation: every sample exactly once, no padding duplicates
    e0 = shard_indices(n, 0, 2, shuffle=False, even=False)
    e1 = shard_indices(n, 1, 2, shuffle=False, even=False)
    assert sorted(e0.tolist() + e1.tolist()) == list(range(n))


def test_lightning_ddp_leaves_our_sampler_in_place() -> None:
    """With use_distributed_sampler=True (the default) under DDP, Lightning replaces a plain
    sampler by a DistributedSampler (which pads evaluation shards) but keeps ours."""
    import lightning as L
    from lightning.pytorch.trainer.states import RunningStage
    from torch.utils.data import DataLoader, TensorDataset

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # nothing launched yet
    ds = TensorDataset(torch.arange(10))
    ours = DataLoader(ds, sampler=ShardSampler(10, rank=0, world_size=2, shuffle=True), batch_size=2)
    plain = DataLoader(ds, batch_size=2, shuffle=True)
    for mode in (RunningStage.TRAINING, RunningStage.VALIDATING):
        assert trainer._data_connector._prepare_dataloader(ours, shuffle=True, mode=mode) is ours
    wrapped = trainer._data_connector._prepare_dataloader(plain, shuffle=True, mode=RunningStage.TRAINING)
    assert wrapped is not plain and type(wrapped.sampler) is DistributedSampler


def test_datamodule_loaders_shard_per_rank(cifar_holdout: CIFARDataModule) -> None:
    seen = {}
    try:
        for rank in (0, 1):
            cifar_holdout.trainer = SimpleNamespace(global_rank=rank, world_size=2, training=True)
            train = cifar_holdout.train_dataloader()
            # a DistributedSampler already, so Lightning's use_distributed_sampler leaves it in place
            assert isinstance(train.sampler, DistributedSampler) and isinstance(train.sampler, ShardSampler)
            train.sampler.set_epoch(2)
            batches = list(train.sampler)
            assert all(len(b) == 128 for b in batches) and len(batches) == len(train) == 22500 // 128
            seen[rank] = {i for b in batches for i in b}
            val = cifar_holdout.val_dataloader()
            seen[f"val{rank}"] = [i for b in val.sampler for i in b]
    finally:
        cifar_holdout.trainer = None
    assert not seen[0] & seen[1]
    assert sorted(seen["val0"] + seen["val1"]) == list(range(5000))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augmentation_and_data_on_cuda(cifar_root, cifar_cache) -> None:
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 10)
            self.devices = set()

        def training_step(self, batch, i):
            x, y = batch
            self.devices.add((x.device.type, x.dtype, y.device.type))
            return torch.nn.functional.cross_entropy(self.fc(x.flatten(1)), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    for on_device in (False, True):
        dm = CIFARDataModule(str(cifar_root), batch_size=64, subset=256, cache_dir=str(cifar_cache),
                             data_on_device=on_device)
        probe = Probe()
        L.Trainer(max_epochs=1, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1).fit(probe, datamodule=dm)
        assert probe.devices == {("cuda", torch.float32, "cuda")}
        assert dm.train_set.x.device.type == ("cuda" if on_device else "cpu")
    x8 = dm.train_set.x[:512]
    out = dm.transform_batch(x8, train=True)
    dy, dx, fl = _recover_views(normalize(x8, dm.mean).cpu(), out.cpu())
    assert bool((dy >= 0).all()) and 0.4 < fl.float().mean() < 0.6


def test_download_under_ddp_fetches_once_per_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With download: true every process of a node reads `classes` (the CLI links it to the model)
    before Lightning's prepare_data: one downloads, the others wait for it and read the class names
    from the files, loading no data."""
    import threading
    import time

    from resnet_lit.data import cifar as cifar_module

    downloads: list[int] = []

    def fake_download(root, dataset: str) -> None:  # torchvision's CIFAR download, offline and slow
        downloads.append(threading.get_ident())
        time.sleep(0.5)
        _write_cifar10_pickles(Path(root))

    monkeypatch.setattr(cifar_io, "download_cifar", fake_download)
    monkeypatch.setattr(cifar_module, "download_cifar", fake_download, raising=False)  # where 0.1.0 called it
    ranks = [CIFARDataModule(str(tmp_path / "cifar"), download=True,
                             cache_dir=str(tmp_path / "cache")) for _ in range(2)]
    names: list[list[str]] = [[], []]

    def link(rank: int) -> None:
        names[rank] = ranks[rank].classes

    threads = [threading.Thread(target=link, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(downloads) == 1
    assert names == [CIFAR10_ORDER, CIFAR10_ORDER]
    assert all(dm._data is None for dm in ranks)  # the data is read in prepare_data / setup, not by the link


def test_the_one_time_decode_says_how_far_it_is(cifar_root: Path, capsys) -> None:
    # Decoding the archive takes tens of seconds once: a line every few seconds (here every image).
    items = itertools.islice(cifar_io.iter_tar_images(cifar_root / "test.tar.gz"), 3)
    images, labels, skipped = cifar_io._decode_all(items, "error", "test.tar.gz", every_s=0)
    assert len(images) == 3 and skipped == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("resnet-lit: decoding test.tar.gz: 0 images so far (")
    assert lines[-1].startswith("resnet-lit: decoding test.tar.gz: 2 images so far (")
