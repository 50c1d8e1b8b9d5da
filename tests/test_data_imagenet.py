"""ImageNetDataModule on ../shared/data/imagewoof-mini: counts, colour modes, crops, test modes, predict."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from resnet_lit.data import ImageNetDataModule
from resnet_lit.data import folder as image_folder
from resnet_lit.data.transforms import (
    MULTI_SCALE_SIZES,
    CenterCrop,
    ModernTrainTransform,
    PaperTrainTransform,
    TenCrop,
    pca_lighting,
)

WNIDS = ["n02086240", "n02087394", "n02088364", "n02089973", "n02093754",
         "n02096294", "n02099601", "n02105641", "n02111889", "n02115641"]


@pytest.fixture(scope="session")
def woof_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("woof_cache")


def make_dm(root: Path, cache: Path, **kw) -> ImageNetDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    return ImageNetDataModule(str(root), cache_dir=str(cache), **kw)


@pytest.fixture(scope="session")
def woof(imagewoof_root: Path, woof_cache: Path) -> ImageNetDataModule:
    dm = make_dm(imagewoof_root, woof_cache)
    dm.setup("fit")
    return dm


def _bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def test_counts_and_classes(woof: ImageNetDataModule) -> None:
    assert woof.classes == WNIDS and woof.num_classes == 10
    assert len(woof.train_set) == 800 and len(woof.val_set) == 300
    assert torch.bincount(torch.tensor([y for _, y in woof.train_set.samples])).tolist() == [80] * 10
    assert torch.bincount(torch.tensor([y for _, y in woof.val_set.samples])).tolist() == [30] * 10


def test_given_classes_replace_the_folder_scan_and_must_match_it(imagewoof_root, woof_cache) -> None:
    assert make_dm(imagewoof_root.parent / "absent", woof_cache, classes=WNIDS).num_classes == 10  # no folder read
    dm = make_dm(imagewoof_root, woof_cache, classes=WNIDS[:9] + ["n00000000"])
    with pytest.raises(ValueError, match=r"class folders differ between the given classes and .*/val"):
        dm.setup("validate")


def test_archives_are_extracted_once(woof: ImageNetDataModule, imagewoof_root, woof_cache, monkeypatch) -> None:
    def no_extract(*a, **k):
        raise AssertionError("extracted again")

    monkeypatch.setattr(image_folder, "extract_archive", no_extract)
    dm = make_dm(imagewoof_root, woof_cache)
    dm.setup("fit")
    assert len(dm.train_set) == 800
    assert Path(dm.train_set.samples[0][0]).is_relative_to(woof_cache)


def test_greyscale_images_come_out_rgb(woof: ImageNetDataModule) -> None:
    paths = [p for p, _ in woof.train_set.samples + woof.val_set.samples]
    grey = [p for p in paths if Image.open(p).mode == "L"]
    assert len(grey) == 9  # as the data's README says
    for p in grey:
        for tf in (PaperTrainTransform(), CenterCrop()):
            x = tf(_bytes(p), p)
            assert x.shape == (3, 224, 224) and x.dtype == torch.uint8
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_cmyk_and_png_named_jpeg_load_as_rgb(woof: ImageNetDataModule, tmp_path: Path) -> None:
    path = woof.val_set.samples[0][0]
    rgb = Image.open(path).convert("RGB")
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG", quality=95)
    png = io.BytesIO()
    rgb.save(png, "PNG")
    ref = CenterCrop()(_bytes(path), path).float()
    for name, data in (("cmyk.JPEG", buf.getvalue()), ("png_inside.JPEG", png.getvalue())):
        x = CenterCrop()(data, name)
        assert x.shape == (3, 224, 224)
        assert (x.float() - ref).abs().mean() < 4  # same picture (CMYK JPEG adds a little loss)


def test_train_batches_are_224_crops(woof: ImageNetDataModule, imagewoof_root, woof_cache) -> None:
    torch.manual_seed(0)
    for aug in ("paper", "modern"):
        dm = make_dm(imagewoof_root, woof_cache, augmentation=aug, batch_size=6)
        dm.setup("fit")
        loader = dm.train_dataloader()
        x8, y, bad = next(iter(loader))
        assert x8.shape == (6, 3, 224, 224) and x8.dtype == torch.uint8 and bad.tolist() == [0] * 6
        x, y2 = dm.on_after_batch_transfer(dm.on_before_batch_transfer((x8, y, bad), 0), 0)
        assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32 and y2 is y
        # normalised: roughly zero mean, unit spread over a batch of photos
        assert abs(float(x.mean())) < 0.6 and 0.5 < float(x.std()) < 1.6
    # the paper's scale augmentation: the crop covers 224 / S of the shorter side, S in [256, 480]
    path = woof.train_set.samples[0][0]
    views = torch.stack([PaperTrainTransform()(_bytes(path), path) for _ in range(8)])
    assert views.shape == (8, 3, 224, 224) and len({v.sum().item() for v in views}) > 4  # random views
    assert ModernTrainTransform()(_bytes(path), path).shape == (3, 224, 224)


def test_center_crop_matches_torchvision_preset(woof: ImageNetDataModule) -> None:
    from torchvision import transforms as T

    path = woof.val_set.samples[3][0]
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(Image.open(path).convert("RGB"))
    ours = CenterCrop()(_bytes(path), path)
    assert ours.shape == ref.shape == (3, 224, 224)
    assert (ours.float() - ref.float()).abs().mean() < 3  # crop-then-resize: same pixels up to interpolation


def test_large_jpeg_decodes_at_reduced_size_correctly(woof: ImageNetDataModule) -> None:
    """A 1024 px image takes the PIL draft path (decoding at 1/2 size): same view as the preset."""
    from torchvision import transforms as T

    path = woof.val_set.samples[7][0]
    img = Image.open(path).convert("RGB")
    f = 1024 / min(img.size)
    big = img.resize((round(img.size[0] * f), round(img.size[1] * f)), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=95)
    ours = CenterCrop()(buf.getvalue(), "big.jpg")
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(big)
    assert ours.shape == (3, 224, 224)
    assert (ours.float() - ref.float()).abs().mean() < 4


def test_pca_lighting_shifts_each_image_by_one_colour() -> None:
    x = torch.rand(64, 3, 8, 8)
    out = pca_lighting(x, std=0.1, generator=torch.Generator().manual_seed(0))
    shift = (out - x).flatten(2)
    assert torch.allclose(shift, shift[:, :, :1].expand_as(shift), atol=1e-6)  # constant per image and channel
    # the first principal component dominates: std of its projection about 0.1 * 0.2175
    assert 0.01 < float(shift[:, :, 0].std()) < 0.04


def _tiny_classifier() -> L.LightningModule:
    from resnet_lit.training.classifier import ImageClassifier

    return ImageClassifier(arch="resnet18", num_classes=10, width=0.25)


def _trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     limit_test_batches=1, limit_predict_batches=1)


def test_ten_crop_batches_and_averaged_prediction(imagewoof_root, woof_cache) -> None:
    dm = make_dm(imagewoof_root, woof_cache, test_mode="ten_crop", batch_size=2)
    dm.setup("test")
    x8, y, _ = next(iter(dm.test_dataloader()))
    assert x8.shape == (2, 10, 3, 224, 224)
    # crops 5..9 are the mirror images of crops 0..4; crop 4 is the centre crop
    assert torch.equal(x8[:, 5:], x8[:, :5].flip(-1))
    path = dm.test_set.samples[0][0]
    assert torch.equal(TenCrop()(_bytes(path), path), x8[0])
    results = _trainer().test(_tiny_classifier(), datamodule=dm, verbose=False)
    assert 0 <= results[0]["test/acc1"] <= 100  # the averaged-softmax path ran over 10 crops


def test_multi_scale_runs_at_all_five_sizes(imagewoof_root, woof_cache) -> None:
    dm = make_dm(imagewoof_root, woof_cache, test_mode="multi_scale", batch_size=2)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    x, y = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
    assert [tuple(t.shape) for t in x] == [(2, 3, s, s) for s in MULTI_SCALE_SIZES]
    model = _tiny_classifier().eval()
    with torch.no_grad():
        probs = model.predict_probs(x)
    assert probs.shape == (2, 10) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    results = _trainer().test(model, datamodule=dm, verbose=False)
    assert "test/acc1" in results[0]


def test_predict_yields_images_and_paths(imagewoof_root, woof_cache, woof) -> None:
    folder = Path(woof.val_set.samples[0][0]).parent
    dm = make_dm(imagewoof_root, woof_cache, predict_path=str(folder), batch_size=3)
    dm.setup("predict")
    x8, paths = dm.on_before_batch_transfer(next(iter(dm.predict_dataloader())), 0)
    assert x8.shape == (3, 3, 224, 224) and paths == sorted(str(p) for p in folder.iterdir())[:3]
    out = _trainer().predict(_tiny_classifier(), datamodule=dm)
    assert out[0]["paths"] == paths and out[0]["probs"].shape == (3, 10)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        make_dm(imagewoof_root, woof_cache, predict_path=[str(folder / "nope.jpg")]).setup("predict")


class _IndexOf:
    """A stand-in transform that returns the sample's index (its path's place in the list): the
    test reads the order the loader delivers without decoding images."""

    def __init__(self, paths: list[str]) -> None:
        self.index = {p: i for i, p in enumerate(paths)}

    def __call__(self, data: bytes, name: str = "<bytes>") -> torch.Tensor:
        return torch.tensor([self.index[name]])


def test_train_loader_reads_the_set_epochs_order_and_resumes_mid_epoch(imagewoof_root, woof_cache) -> None:
    """With a worker process, as Lightning drives it (the iterator is created, then the epoch set):
    epoch 1 comes in epoch 1's order (a plain DataLoader's worker read epoch 0's ahead), and a
    loader resumed 2 batches into epoch 1 delivers exactly the rest of it."""

    def one_epoch(epoch: int, state: dict | None = None) -> tuple[list[int], list[int]]:
        dm = make_dm(imagewoof_root, woof_cache, num_workers=1, batch_size=4)
        dm.setup("fit")
        dm.train_set.transform = _IndexOf([path for path, _ in dm.train_set.samples])
        loader = dm.train_dataloader()
        if state is not None:
            loader.load_state_dict(state)
        batches = iter(loader)
        loader.sampler.set_epoch(epoch)
        order = [int(i) for x, *_ in batches for i in x.flatten()]
        loader.sampler.set_epoch(epoch)
        expected = [i for i, _seed in loader.sampler][: len(order)]  # (index, its crop's seed)
        return order, expected

    order, expected = one_epoch(1)
    assert order == expected and len(order) >= 12
    epoch0, _ = one_epoch(0)
    assert sorted(order) == sorted(epoch0) and order != epoch0  # same images, another order
    rest, _ = one_epoch(1, {"epoch": 1, "batches": 2})
    assert rest == order[8:]


def test_seeded_draws_are_the_seeds_and_leave_the_streams_alone() -> None:
    """One training image's draws (samplers.SeededShardSampler's seed): Python's and torch's CPU
    generator as if seeded with it, and the process's own streams go on afterwards as if untouched."""
    import random

    from resnet_lit.data.transforms import seeded_draws

    torch.manual_seed(5)
    random.seed(5)
    expected = torch.rand(2), random.random()
    torch.manual_seed(5)
    random.seed(5)
    with seeded_draws(123):
        inside = torch.rand(3), random.random()
    after = torch.rand(2), random.random()
    torch.manual_seed(123)
    random.seed(123)
    assert torch.equal(inside[0], torch.rand(3)) and inside[1] == random.random()
    assert torch.equal(after[0], expected[0]) and after[1] == expected[1]


def test_each_split_is_walked_once_and_its_listing_shared(woof_jpegs, tmp_path, monkeypatch):
    """The classes and the training samples come from one walk of the training folder (there were two);
    after prepare_data (one process per node) another process's DataModule walks nothing: it reads
    the listing; adding an image to a class folder makes the listing stale and it is walked again."""
    from bad_images import write_tree

    root = write_tree(tmp_path / "tree", woof_jpegs, per_class=3)
    walks: list[str] = []
    scan = image_folder.scan_image_folder

    def counted(split_dir, **kwargs):
        walks.append(Path(split_dir).name)
        return scan(split_dir, **kwargs)

    monkeypatch.setattr(image_folder, "scan_image_folder", counted)
    args = dict(root=str(root), batch_size=2, num_workers=0, cache_dir=str(tmp_path / "cache"))
    first = ImageNetDataModule(**args)
    first.prepare_data()
    first.setup("fit")
    assert sorted(walks) == ["train", "val"]  # one walk each

    def no_walk(split_dir, **kwargs):
        raise AssertionError(f"walked {split_dir} again")

    monkeypatch.setattr(image_folder, "scan_image_folder", no_walk)
    other = ImageNetDataModule(**args)  # another rank: setup only
    other.setup("fit")
    assert other.classes == first.classes == ["a", "b"]
    assert [s for s in other.train_set.samples] == [s for s in first.train_set.samples]
    assert len(other.val_set.samples) == 6

    (root / "train" / "b" / "new.JPEG").write_bytes(woof_jpegs[0])
    monkeypatch.setattr(image_folder, "scan_image_folder", counted)
    walks.clear()
    third = ImageNetDataModule(**args)
    third.setup("fit")
    assert walks == ["train"] and len(third.train_set.samples) == 7
