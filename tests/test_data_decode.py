"""decode: cpu | gpu (data/jpeg_batch.py) against the PIL path, on imagewoof-mini's real JPEGs: same
crops, same statistics, same evaluation views, the bad-image policy, a real fit; and the GPU path."""

from __future__ import annotations

import io
import random
from pathlib import Path

import lightning as L
import pytest
import torch
from bad_images import bad_files, write_tree
from PIL import Image
from torch.utils.data import DataLoader

from resnet_lit.data import BadImageError, ImageNetDataModule
from resnet_lit.data.jpeg_batch import JpegBatch
from resnet_lit.data.labels import PADDED_LABEL
from resnet_lit.data.transforms import CenterCrop


@pytest.fixture(scope="session")
def decode_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decode_cache")


def make_dm(root: Path, cache: Path, **kw) -> ImageNetDataModule:
    kw.setdefault("num_workers", 0)
    return ImageNetDataModule(str(root), cache_dir=str(cache), **kw)


def uint8_batches(dm: ImageNetDataModule, split: str, n: int, seed: int, train: bool,
                  per_image_seeds: bool = True) -> torch.Tensor:
    """The first ``n`` images of ``split`` as the views the model would see before normalisation (uint8).
    Training crops come from each image's own seed (the loader's SeededShardSampler), or, with
    ``per_image_seeds=False``, from Python's ``random`` seeded with ``seed`` (the same images in the same order)."""
    random.seed(seed)
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    if split == "train" and not per_image_seeds:
        loader = DataLoader(dm.train_set, batch_size=loader.batch_size, sampler=[i for i, _ in loader.sampler],
                            collate_fn=loader.collate_fn)
    out = []
    for batch in loader:
        x, target = dm._host_batch(batch, evaluating=not train)
        if isinstance(x, JpegBatch):  # the decode step of _device_batch, before transform_batch
            from resnet_lit.data.jpeg_batch import decode_batch

            x, target, _ = decode_batch(x, target, decode="cpu", on_bad_image="error", evaluating=not train)
        out.append(x)
        if sum(len(v) for v in out) >= n:
            break
    return torch.cat(out)[:n]


def test_decode_cpu_takes_the_pil_paths_crops(imagewoof_root, decode_cache) -> None:
    """Same images, same per-image seeds: decode=cpu draws the same boxes and flips as the workers' PIL path and,
    where that path decodes with libjpeg-turbo too (the output needs >= half the source resolution:
    always at 224 px on imagewoof-mini's 320 px images), gives the same bytes. At 160 px the PIL
    path decodes the widest boxes at half size (``draft``: libjpeg's DCT-domain scaling, a sharper
    low-pass than the tensor path's antialiased bilinear): those images differ by the two
    resamplings only (6.3 levels of 255 on average for the worst of 48 images measured); the bound is 8."""
    for aug, size, n in (("modern", 224, 32), ("paper", 224, 24), ("modern", 160, 32)):
        pil, cpu = (make_dm(imagewoof_root, decode_cache, batch_size=n, augmentation=aug, train_size=size, decode=d)
                    for d in ("pil", "cpu"))
        for dm in (pil, cpu):
            dm.setup("fit")
        a, b = (uint8_batches(dm, "train", n, seed=3, train=True) for dm in (pil, cpu))
        assert a.shape == b.shape == (n, 3, size, size) and b.dtype == torch.uint8
        diff = (a.float() - b.float()).abs().flatten(1).mean(1)
        if size == 224:
            assert torch.equal(a, b), f"{aug}: {int((diff > 0).sum())} of {n} differ"
        else:
            assert 0.75 < float((diff == 0).float().mean()) < 1, f"{int((diff == 0).sum())} of {n} identical"
            assert float(diff.max()) < 8, f"{diff.max():.2f}"


def test_decode_cpu_statistics_match_pil(imagewoof_root, decode_cache) -> None:
    """128 training images through each path with independent random draws (different seeds): the
    per-image channel means and standard deviations of the two paths are two samples of one
    distribution if the crop distributions agree. Their paired mean difference must lie within 4
    standard errors of zero (SE = std of the per-image differences / sqrt(128): 0.003-0.008 on the
    0..1 scale here), a 1-in-15,000 false alarm per statistic. This catches a wrong value range,
    channel order, normalisation or resize; a subtler crop-scale error (8-100 % -> 30-100 % of the
    area moves the stds by about 2.5 SE here) is the exact-crop test's to catch."""
    pil, cpu = (make_dm(imagewoof_root, decode_cache, batch_size=32, augmentation="modern", decode=d)
                for d in ("pil", "cpu"))
    n = 128
    stats = []
    for dm, seed in ((pil, 11), (cpu, 12)):
        dm.setup("fit")
        x = uint8_batches(dm, "train", n, seed=seed, train=True, per_image_seeds=False).float().div_(255).flatten(2)
        stats.append(torch.cat([x.mean(2), x.std(2)], 1))  # [256, 6]: channel means, channel stds
    # the loaders shuffle with the DataModule's seed, not Python's: both read the same n images
    d = stats[0] - stats[1]
    se = d.std(0) / d.shape[0] ** 0.5
    assert bool((d.mean(0).abs() < 4 * se).all()), f"mean differences {d.mean(0)} vs 4 SE {4 * se}"
    # and the crops did differ (independent draws), so the check had something to compare
    assert float(d.abs().mean()) > 0.005


@pytest.mark.parametrize("test_mode", ["center", "flip", "ten_crop", "multi_scale"])
def test_decode_cpu_eval_views_equal_pil(imagewoof_root, decode_cache, test_mode) -> None:
    """Evaluation views: on the CPU both paths decode with libjpeg-turbo and crop and resize the same
    way, so imagewoof-mini's 320 px images give the same bytes, image for image, in every test mode."""
    pil, cpu = (make_dm(imagewoof_root, decode_cache, eval_batch_size=3, test_mode=test_mode, decode=d)
                for d in ("pil", "cpu"))
    views = []
    for dm in (pil, cpu):
        dm.setup("test")
        batch = dm._host_batch(next(iter(dm.test_dataloader())), evaluating=True)
        if isinstance(batch[0], JpegBatch):
            from resnet_lit.data.jpeg_batch import decode_batch

            batch = decode_batch(*batch, decode="cpu", on_bad_image="error", evaluating=True)[:2]
        views.append(batch[0])
    a, b = views
    if test_mode == "multi_scale":
        assert [v.shape for v in a] == [v.shape for v in b] and all(torch.equal(u, v) for u, v in zip(a, b))
    else:
        assert a.shape == b.shape and torch.equal(a, b)


def test_large_jpeg_eval_view_close_to_pil_draft(imagewoof_root, decode_cache) -> None:
    """A 1024 px image: the PIL path decodes it at 1/2 size (draft), decode=cpu decodes it whole and
    resizes with antialiasing: the same centre view to within 3 levels of 255 on average (the
    draft test of test_data_imagenet allows 4 against torchvision's preset)."""
    dm = make_dm(imagewoof_root, decode_cache, decode="cpu")
    dm.setup("validate")
    path = dm.val_set.samples[7][0]
    img = Image.open(path).convert("RGB")
    f = 1024 / min(img.size)
    buf = io.BytesIO()
    img.resize((round(img.size[0] * f), round(img.size[1] * f)), Image.BICUBIC).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    pil_view = CenterCrop()(data, "big.jpg")
    encoded = dm.val_set.transform(data, "big.jpg")
    from resnet_lit.data.jpeg_batch import collate_encoded, decode_batch

    batch, _, _ = collate_encoded([(encoded, 0, 0)])
    ours = decode_batch(batch, torch.zeros(1), decode="cpu", on_bad_image="error", evaluating=True)[0][0]
    assert ours.shape == pil_view.shape == (3, 224, 224)
    assert float((ours.float() - pil_view.float()).abs().mean()) < 3


def test_grey_cmyk_and_png_named_jpeg_come_out_rgb(imagewoof_root, decode_cache) -> None:
    """decode_jpeg's RGB mode turns greyscale and CMYK JPEGs into 3 channels; PNG bytes behind a .JPEG
    name are re-encoded as JPEG (quality 95) by the worker: the PIL path's view within 2 levels."""
    from resnet_lit.data.jpeg_batch import collate_encoded, decode_batch

    dm = make_dm(imagewoof_root, decode_cache, decode="cpu")
    dm.setup("validate")
    rgb = Image.open(dm.val_set.samples[0][0]).convert("RGB")
    forms = {}
    for name, mode, fmt in (("grey.JPEG", "L", "JPEG"), ("cmyk.JPEG", "CMYK", "JPEG"), ("png.JPEG", "RGB", "PNG")):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        forms[name] = buf.getvalue()
    batch, _, _ = collate_encoded([(dm.val_set.transform(d, n), 0, 0) for n, d in forms.items()])
    x = decode_batch(batch, torch.zeros(3), decode="cpu", on_bad_image="error", evaluating=True)[0]
    assert x.shape == (3, 3, 224, 224)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])  # grey: equal channels
    for i, (name, data) in enumerate(forms.items()):
        assert float((x[i].float() - CenterCrop()(data, name).float()).abs().mean()) < 2, name


# ------------------------------------------------------------------ bad data, a real fit
@pytest.mark.parametrize("name", ["truncated.JPEG", "corrupt.JPEG", "zero.JPEG"])
def test_decode_cpu_bad_file_error_names_it(tmp_path, woof_jpegs, name) -> None:
    root = write_tree(tmp_path, woof_jpegs, per_class=2)
    (root / "train" / "a" / name).write_bytes(bad_files(woof_jpegs[0])[name])
    dm = make_dm(root, root / "cache", batch_size=5, decode="cpu")
    with pytest.raises(BadImageError, match=rf"{name}.*on_bad_image='skip'"):
        for _ in dm.batches("train"):
            pass


def test_decode_cpu_skip_evaluates_each_readable_image_once(tmp_path, woof_jpegs) -> None:
    """10 readable and 4 bad validation images (two fail in the worker, two at the batch decode),
    evaluated with decode=cpu and on_bad_image=skip: the figures of the clean folder, the 10 counted
    as images and the 4 as skipped (the last, short batch padded after decoding). At 64 px the PIL
    path would decode at 1/4 size (draft), so both runs decode alike here: decode=cpu."""
    from resnet_lit.training.classifier import ImageClassifier

    clean = write_tree(tmp_path / "clean", woof_jpegs, per_class=5)
    root = write_tree(tmp_path / "bad", woof_jpegs, per_class=5)
    for i, (name, data) in enumerate(bad_files(woof_jpegs[0]).items()):
        (root / "val" / "ab"[i % 2] / f"{i}{name}").write_bytes(data)
    torch.manual_seed(0)
    model = ImageClassifier(arch="resnet20", num_classes=2, width=0.25)
    results = []
    for folder, decode, skip in ((clean, "cpu", "error"), (root, "cpu", "skip")):
        dm = make_dm(folder, folder / "cache", batch_size=4, decode=decode, on_bad_image=skip, test_size=64)
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False)
        results.append(trainer.validate(model, datamodule=dm, verbose=False)[0])
    expected, got = results
    assert got["val/images"] == 10 and got["val/skipped_images"] == 4
    assert "val/skipped_images" not in expected
    for k in ("val/loss", "val/acc1"):
        assert got[k] == pytest.approx(expected[k], abs=1e-5), k


def test_fit_with_decode_cpu_runs(tmp_path, woof_jpegs) -> None:
    """A real Trainer fit with decode=cpu, the bytes batches made in a worker process, one corrupt
    training file among 9 (skipped at the batch decode): training batches float [4, 3, 64, 64]
    (train_size 64), validation batches padded to 4 after decoding, and the skip counted."""
    root = write_tree(tmp_path, woof_jpegs, per_class=4)
    (root / "train" / "a" / "x.JPEG").write_bytes(bad_files(woof_jpegs[0])["truncated.JPEG"])
    seen: dict[str, list] = {"train": [], "val": []}

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def training_step(self, batch, i):
            seen["train"].append((tuple(batch[0].shape), batch[0].dtype))
            return torch.nn.functional.cross_entropy(self.fc(batch[0].mean((2, 3))), batch[1])

        def validation_step(self, batch, i):
            seen["val"].append((tuple(batch[0].shape), batch[1].tolist()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = make_dm(root, root / "cache", batch_size=4, eval_batch_size=3, decode="cpu", num_workers=1, train_size=64,
                 test_size=64, on_bad_image="skip")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Probe(), datamodule=dm)
    assert seen["train"] == [((4, 3, 64, 64), torch.float32)] * 2  # 9 files, drop_last
    assert [shape for shape, _ in seen["val"]] == [(3, 3, 64, 64)] * 3  # 8 images: 3, 3, 2 + a padded row
    assert seen["val"][-1][1] == [1, 1, PADDED_LABEL]
    assert dm.num_skipped == 1  # the shuffle (seed 0) puts the bad file in the first 8


def test_decode_cpu_with_recipe_options(imagewoof_root, decode_cache) -> None:
    """The progressive size reaches the device-side views (it travels with the batch), and the
    per-image policies and MixUp run after them."""
    from resnet_lit.data.augment import AugmentConfig
    from resnet_lit.data.resolution import ProgressiveResize

    dm = make_dm(imagewoof_root, decode_cache, batch_size=4, decode="cpu",
                 progressive_resize=ProgressiveResize(start_size=128, end_size=160, end_epoch=1))
    assert next(dm.batches("train"))[0].shape == (4, 3, 128, 128)
    dm = make_dm(imagewoof_root, decode_cache, batch_size=4, decode="cpu", augmentation="modern",
                 augment=AugmentConfig(auto_augment="ta_wide", random_erasing=0.5, mixup_alpha=0.2))
    x, y = next(dm.batches("train"))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.shape == (4, 10)


def test_decode_option_errors(imagewoof_root, decode_cache) -> None:
    with pytest.raises(ValueError, match="decode 'nvjpeg': use one of pil, cpu, gpu"):
        make_dm(imagewoof_root, decode_cache, decode="nvjpeg")
    dm = make_dm(imagewoof_root, decode_cache, decode="gpu", eval_batch_size=2)
    with pytest.raises(ValueError, match="decode='gpu' decodes on the training device, but the batch is on cpu"):
        next(dm.batches("val"))


# ------------------------------------------------------------------ the GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_gpu_matches_cpu(imagewoof_root, decode_cache) -> None:
    """nvJPEG against libjpeg-turbo: the same views (same boxes: same seed) within the decoders'
    differences (IDCT and chroma upsampling): under 2 levels of 255 on average per image; training
    batches normalised on the GPU with the same shape."""
    cpu, gpu = (make_dm(imagewoof_root, decode_cache, eval_batch_size=16, batch_size=16, decode=d)
                for d in ("cpu", "gpu"))
    out = []
    for dm in (cpu, gpu):
        random.seed(0)
        x, y = next(dm.batches("val", device="cuda"))
        assert x.device.type == "cuda" and x.shape == (16, 3, 224, 224) and x.dtype == torch.float32
        out.append(x)
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda").view(3, 1, 1)
    diff = ((out[0] - out[1]) * std * 255).abs().flatten(1).mean(1)
    assert float(diff.max()) < 2, diff
    x, y = next(gpu.batches("train", device="cuda"))
    assert x.shape == (16, 3, 224, 224) and x.device.type == "cuda" and y.device.type == "cuda"
