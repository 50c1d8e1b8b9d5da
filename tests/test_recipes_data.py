"""The data side of the modern recipes acts, on real images: MixUp / CutMix give soft targets that
sum to one and images that are mixes of batch members (training only); the torchvision policies
and random erasing change training images only; train and test resolutions differ and progressive
resizing changes the input size on the configured epochs; repeated augmentation covers each image
exactly k times an epoch across ranks and keeps mid-epoch resume exact."""

from __future__ import annotations

from collections import Counter

import lightning as L
import pytest
import torch

from resnet_lit.data import CIFARDataModule, ImageNetDataModule
from resnet_lit.data.augment import AugmentConfig
from resnet_lit.data.cifar import TensorBatches
from resnet_lit.data.policies import augment_policy, mean_fill
from resnet_lit.data.resolution import ProgressiveResize
from resnet_lit.data.samplers import ShardSampler
from resnet_lit.data.transforms import normalize
from resnet_lit.training.classifier import ImageClassifier


def _cifar(root, **options) -> CIFARDataModule:
    return CIFARDataModule(str(root), batch_size=32, subset=256, **options)


def _first(dm, split: str, seed: int = 0):
    torch.manual_seed(seed)
    return next(dm.batches(split))


# ---------------------------------------------------------------- MixUp / CutMix
def test_mixup_blends_each_image_with_its_neighbour(cifar_root):
    x0, y0 = _first(_cifar(cifar_root), "train")  # the same crops and flips, unmixed
    x, y = _first(_cifar(cifar_root, augment=AugmentConfig(mixup_alpha=0.4)), "train")
    assert y.dtype == torch.float32 and y.shape == (32, 10)
    torch.testing.assert_close(y.sum(1), torch.ones(32))
    assert (y > 0).sum(1).max() <= 2 and (y < 1).any()  # soft: at most two classes a row
    partner = y0.roll(1)
    i = int((y0 != partner).nonzero()[0])  # an image whose neighbour has another class
    lam = float(y[i, y0[i]])
    assert abs(lam + float(y[i, partner[i]]) - 1) < 1e-6
    torch.testing.assert_close(x, lam * x0 + (1 - lam) * x0.roll(1, 0), atol=1e-5, rtol=1e-5)


def test_cutmix_pastes_a_box_of_the_neighbour(cifar_root):
    x0, y0 = _first(_cifar(cifar_root), "train", seed=3)
    x, y = _first(_cifar(cifar_root, augment=AugmentConfig(cutmix_alpha=1.0)), "train", seed=3)
    torch.testing.assert_close(y.sum(1), torch.ones(32))
    own, other = (x == x0).all(1), (x == x0.roll(1, 0)).all(1)  # [B, H, W] pixel sources
    assert bool((own | other).all())  # every pixel is from the image or its neighbour
    pasted = (~own).float().mean((1, 2))  # area taken from the neighbour
    partner = y0.roll(1)
    differ = y0 != partner
    torch.testing.assert_close(pasted[differ], y[differ].gather(1, partner[differ, None]).squeeze(1), atol=0.05,
                               rtol=0)


def test_mixing_leaves_evaluation_batches_alone(cifar_root):
    plain, mixed = _cifar(cifar_root), _cifar(cifar_root, augment=AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0))
    for split in ("val", "test"):
        (x0, y0), (x, y) = _first(plain, split), _first(mixed, split)
        assert y.dtype == torch.int64 and y.dim() == 1
        assert torch.equal(x, x0) and torch.equal(y, y0)
    batch = next(iter(mixed.val_dataloader()))
    assert mixed.on_after_batch_transfer(batch, 0)[1].dtype == torch.int64  # no Trainer: not training


def test_negative_alpha_is_refused():
    with pytest.raises(ValueError, match=r"^augment\.mixup_alpha must be >= 0 \(0 turns MixUp off\), got -1$"):
        AugmentConfig(mixup_alpha=-1)


# ---------------------------------------------------------------- policies
def test_cifar_policy_changes_training_images_only(cifar_root):
    x0, _ = _first(_cifar(cifar_root), "train", seed=1)
    x, _ = _first(_cifar(cifar_root, augment=AugmentConfig(auto_augment="ta_wide")), "train", seed=1)
    assert x.shape == x0.shape and x.dtype == torch.float32
    assert not torch.equal(x, x0)
    v0, _ = _first(_cifar(cifar_root), "val")
    v, _ = _first(_cifar(cifar_root, augment=AugmentConfig(auto_augment="ta_wide", random_erasing=1.0)), "val")
    assert torch.equal(v, v0)


def test_random_erasing_fills_a_box_with_the_fill_colour(cifar_root):
    dm = _cifar(cifar_root)
    dm.setup("fit")
    images = TensorBatches(dm.train_set.x, dm.train_set.y, per_image=augment_policy(random_erasing=1.0,
                                                                                     fill=(1, 2, 3)))
    x, _ = images[list(range(16))]
    filled = (x == torch.tensor([1, 2, 3], dtype=torch.uint8).view(3, 1, 1)).all(1)  # [B, H, W]
    area = filled.float().mean((1, 2))
    assert bool((area >= 0.02).all()) and bool((area <= 0.34).all())  # RandomErasing's 2-33 %


def test_policy_groups_run_on_the_device_one_draw_per_group(cifar_root):
    torch.manual_seed(0)
    dm = _cifar(cifar_root, augment=AugmentConfig(random_erasing=1.0, policy_groups=2), pad=0)  # pad 0: flips only
    dm.setup("fit")
    x, _ = dm.train_set[list(range(8))]
    assert torch.equal(x, dm.train_set.x[:8])  # nothing happens on the host
    out = dm.transform_batch(x, train=True)
    fill = torch.tensor(mean_fill(dm.mean), dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    erased = normalize(fill, dm.mean)  # per-pixel mean: a mirrored image meets it mirrored
    mask = (out == erased).all(1) | (out == erased.flip(-1)).all(1)  # [B, H, W]: the erased pixels
    assert bool(mask.any((1, 2)).all())
    for group in (range(0, 4), range(4, 8)):
        ref = mask[group[0]]
        assert all(torch.equal(mask[i], ref) or torch.equal(mask[i], ref.flip(-1)) for i in group)
    assert not torch.equal(mask[0], mask[4]) and not torch.equal(mask[0], mask[4].flip(-1))


@pytest.mark.parametrize("policy", ["ra", "aa"])
def test_imagenet_policy_in_the_workers(imagewoof_root, policy):
    options = dict(root=str(imagewoof_root), batch_size=4, num_workers=0, train_size=64, lighting=0.0)
    x0, _ = _first(ImageNetDataModule(**options), "train", seed=2)
    augment = AugmentConfig(auto_augment=policy, auto_augment_magnitude=15)
    x, _ = _first(ImageNetDataModule(**options, augment=augment), "train", seed=2)
    assert x.shape == x0.shape == (4, 3, 64, 64)
    assert not torch.equal(x, x0)


def test_unknown_policy_names_the_choices(imagewoof_root):
    with pytest.raises(ValueError, match="none, ra, ta_wide, aa"):
        augment_policy("rand-m9")


# ---------------------------------------------------------------- resolution
def test_train_and_test_sizes_are_set_apart(imagewoof_root):
    dm = ImageNetDataModule(str(imagewoof_root), batch_size=4, num_workers=0, augmentation="modern",
                            train_size=48, test_size=80, test_resize=84)
    assert next(dm.batches("train"))[0].shape == (4, 3, 48, 48)
    assert next(dm.batches("val"))[0].shape == (4, 3, 80, 80)
    assert next(dm.batches("test"))[0].shape == (4, 3, 80, 80)
    assert dm.val_set.transform.resize == 84


def test_progressive_schedule_follows_ffcv():
    # ffcv-imagenet rn50_16_epochs.yaml: 160 to 192, start_ramp 11, end_ramp 13
    assert ProgressiveResize(160, 192, 11, 13).sizes(16) == [160] * 12 + [192] * 4
    assert ProgressiveResize(128, 256, 2, 6).sizes(8) == [128, 128, 128, 160, 192, 224, 256, 256]
    with pytest.raises(ValueError, match="end_epoch"):
        ProgressiveResize(128, 192, 5, 2)


GRAPHS: list[list[tuple[int, ...]]] = []


def counting_backend(gm, example_inputs):
    """A torch.compile backend that records the image shapes of each graph dynamo hands it and runs
    the graph as it is (module level: Lightning drops hyperparameters it cannot pickle)."""
    GRAPHS.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.ndim == 4])
    return gm.forward


class _Shapes(L.Callback):
    def __init__(self) -> None:
        self.seen: dict[int, set[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.setdefault(trainer.current_epoch, set()).add(batch[0].shape[-1])


def test_progressive_resizing_changes_the_size_on_its_epochs(imagewoof_root, tmp_path):
    """A real fit with a persistent worker process: the size reaches the worker on the epochs the
    schedule names, every batch of an epoch has that epoch's size, and the compiled model compiles
    at most once per size (dynamo's default turns the size dynamic at the second one)."""
    schedule = ProgressiveResize(start_size=32, end_size=96, start_epoch=0, end_epoch=2)
    dm = ImageNetDataModule(str(imagewoof_root), batch_size=4, num_workers=1, augmentation="modern",
                            progressive_resize=schedule)
    GRAPHS.clear()
    torch._dynamo.reset()
    model = ImageClassifier(arch="resnet18", num_classes=10, width=0.25, compile={"backend": counting_backend})
    shapes = _Shapes()
    trainer = L.Trainer(accelerator="cpu", max_epochs=4, limit_train_batches=2, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[shapes], default_root_dir=tmp_path)
    trainer.fit(model, dm)
    torch._dynamo.reset()
    assert shapes.seen == {0: {32}, 1: {64}, 2: {96}, 3: {96}}
    graphs = [g for g in GRAPHS if g]  # graphs that take the image batch
    assert 1 <= len(graphs) <= len(set(schedule.sizes(4))), graphs


# ---------------------------------------------------------------- repeated augmentation
@pytest.mark.parametrize("n, k", [(100, 3), (37, 2), (64, 4)])
def test_repeated_augmentation_covers_each_image_k_times_across_ranks(n, k):
    ranks = [ShardSampler(n, rank=r, world_size=2, shuffle=True, seed=5, repeats=k) for r in (0, 1)]
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        shards = [list(s) for s in ranks]
        assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == n * k // 2
        counts = Counter(shards[0] + shards[1])
        assert set(counts) == set(range(n))
        assert all(c == k for c in counts.values())  # n * k is even here: nothing dropped
        # the k copies of an image are spread over both ranks
        assert set(shards[0]) & set(shards[1])


def test_repeated_augmentation_with_the_dataset_sized_epoch():
    n, k = 120, 3
    ranks = [ShardSampler(n, rank=r, world_size=2, shuffle=True, repeats=k, repeat_epoch="dataset_size")
             for r in (0, 1)]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) + len(shards[1]) == n
    counts = Counter(shards[0] + shards[1])
    assert len(counts) == n // k and all(c == k for c in counts.values())


def test_repeated_augmentation_resumes_mid_epoch_exactly():
    full = ShardSampler(50, rank=1, world_size=2, shuffle=True, seed=1, batch_size=8, drop_last=True, repeats=3)
    full.set_epoch(4)
    batches = list(full)
    full.start = 3  # what ResumableLoader sets after 3 batches of this epoch
    assert list(full) == batches[3:]


def test_cifar_module_repeats_its_training_shard(cifar_root):
    plain, repeated = _cifar(cifar_root), _cifar(cifar_root, augment=AugmentConfig(repeated_augmentation=2))
    for dm in (plain, repeated):
        dm.setup("fit")
    assert len(repeated.train_dataloader()) == 2 * len(plain.train_dataloader())
    assert len(repeated.val_dataloader()) == len(plain.val_dataloader())
    with pytest.raises(ValueError, match=r"^augment\.repeated_augmentation must be >= 1 \(1: off\), got 0$"):
        AugmentConfig(repeated_augmentation=0)
