"""The model-side ingredients of the modern recipes, each on real images: the loss on hard and soft
targets (cross-entropy, binary cross-entropy), training accuracy on soft targets, stochastic depth,
the optimisers and their lr-scaling rules, and test-time flip averaging (CIFAR-10, ImageNet subset)."""

from __future__ import annotations

import builtins
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import StochasticDepth
from weights_helpers import extract_folder

from resnet_lit import CIFARDataModule, ImageNetDataModule
from resnet_lit.data.labels import SKIPPED_LABEL
from resnet_lit.models import create_model
from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.losses import BinaryCrossEntropy, build_loss
from resnet_lit.training.optimizers import OptimizerConfig, build_optimizer, optimizer_class, scaled_lr
from resnet_lit.training.train_accuracy import TrainAccuracy


@pytest.fixture(scope="module")
def cifar_batch(cifar_root, shared_decode_cache) -> tuple[torch.Tensor, torch.Tensor]:
    dm = CIFARDataModule(str(cifar_root), batch_size=32, subset=64, num_workers=0, cache_dir=str(shared_decode_cache))
    return next(dm.batches("train"))


@pytest.fixture(scope="module")
def logits(cifar_batch) -> torch.Tensor:
    torch.manual_seed(0)
    net = create_model("resnet20", width=0.25).eval()
    with torch.no_grad():
        return net(cifar_batch[0])


# --------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("kind", ["ce", "bce"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_same_on_labels_and_their_one_hot(kind, smoothing, cifar_batch, logits) -> None:
    y = cifar_batch[1]
    loss = build_loss(kind, smoothing)
    hard, soft = loss(logits, y), loss(logits, F.one_hot(y, 10).float())
    torch.testing.assert_close(hard, soft)
    assert hard.item() > 0


def test_bce_is_timm_formula(cifar_batch, logits) -> None:
    # timm's BinaryCrossEntropy: one-hot with off = s / C and on = 1 - s + s / C, mean over B x C
    y, s = cifar_batch[1], 0.1
    target = torch.full_like(logits, s / 10).scatter_(1, y[:, None], 1 - s + s / 10)
    expected = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(BinaryCrossEntropy(s)(logits, y), expected)
    # smoothing acts: right and sure logits cost more against smoothed targets (0.91 on the class)
    confident = 5 * F.one_hot(y, 10).float()
    assert BinaryCrossEntropy(s)(confident, y) > BinaryCrossEntropy(0.0)(confident, y) + 0.01


@pytest.mark.parametrize("kind", ["ce", "bce"])
def test_loss_on_mixed_soft_targets(kind, cifar_batch, logits) -> None:
    # MixUp's targets: lam * onehot(y) + (1 - lam) * onehot(y rolled); the loss is the same mix of
    # the two hard losses (both losses are linear in the target)
    y, lam = cifar_batch[1], 0.7
    soft = lam * F.one_hot(y, 10).float() + (1 - lam) * F.one_hot(y.roll(1), 10).float()
    loss = build_loss(kind)
    mixed = lam * loss(logits, y) + (1 - lam) * loss(logits, y.roll(1))
    torch.testing.assert_close(loss(logits, soft), mixed)


def test_bce_ignores_skipped_slots(cifar_batch, logits) -> None:
    y = cifar_batch[1].clone()
    y[:5] = SKIPPED_LABEL
    torch.testing.assert_close(BinaryCrossEntropy()(logits, y), BinaryCrossEntropy()(logits[5:], y[5:]))


def test_unknown_loss_is_one_line() -> None:
    with pytest.raises(ValueError, match="loss 'focal' is not known; use one of ce, bce"):
        build_loss("focal")


def test_training_step_takes_soft_targets(cifar_batch) -> None:
    x, y = cifar_batch
    soft = 0.6 * F.one_hot(y, 10).float() + 0.4 * F.one_hot(y.roll(1), 10).float()
    for kind in ("ce", "bce"):
        module = ImageClassifier("resnet20", 10, width=0.25, loss=kind)
        loss = module.criterion(module(x), soft)
        loss.backward()
        assert math.isfinite(loss.item()) and module.model.fc.weight.grad.abs().sum() > 0


def test_train_accuracy_counts_argmax_of_soft_targets(cifar_batch, logits) -> None:
    y = cifar_batch[1]
    soft = 0.6 * F.one_hot(y, 10).float() + 0.4 * F.one_hot(y.roll(1), 10).float()
    hard_acc, soft_acc = TrainAccuracy(5), TrainAccuracy(5)
    hard_acc.update(logits, y)
    soft_acc.update(logits, soft)  # the dominant class (share 0.6) is y
    assert soft_acc.state_dict() == hard_acc.state_dict()
    rolled = TrainAccuracy(5)
    rolled.update(logits, 0.4 * F.one_hot(y, 10).float() + 0.6 * F.one_hot(y.roll(1), 10).float())
    expected = (logits.argmax(1) == y.roll(1)).sum().item()
    assert rolled.state_dict()["hits1"] == expected and rolled.seen == len(y)


# ------------------------------------------------------------------------------ stochastic depth
def test_drop_path_rates_decay_linearly_and_keys_unchanged() -> None:
    torch.manual_seed(0)
    plain = create_model("resnet20")
    torch.manual_seed(0)
    dropped = create_model("resnet20", drop_path_rate=0.2)
    assert not any(isinstance(m, StochasticDepth) for m in plain.modules())  # rate 0: today's net
    blocks = [b for stage in (dropped.layer1, dropped.layer2, dropped.layer3) for b in stage]
    rates = [b.drop_path.p if b.drop_path is not None else 0.0 for b in blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2) and len(rates) == 9
    assert all(b > a for a, b in zip(rates, rates[1:]))
    assert rates[4] == pytest.approx(0.1)  # linear: the middle block has half the rate
    a, b = plain.state_dict(), dropped.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # same keys, same initial values
    assert dropped.arch_spec == plain.arch_spec  # a training regulariser, not the architecture
    with pytest.raises(ValueError, match="plain net without residual branches: drop_path_rate"):
        create_model("plain20", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="drop_path_rate=1.5 is not valid"):
        create_model("resnet20", drop_path_rate=1.5)


def test_drop_path_drops_branches_in_training_only(cifar_batch) -> None:
    x = cifar_batch[0]
    torch.manual_seed(0)
    plain = create_model("resnet20", width=0.25)
    dropped = create_model("resnet20", width=0.25, drop_path_rate=0.5)
    dropped.load_state_dict(plain.state_dict())
    seen = []
    last = dropped.layer3[-1]
    last.drop_path.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    torch.manual_seed(1)
    dropped.train()(x)
    branch, out = seen[-1]
    zeroed = out.flatten(1).abs().sum(1) == 0
    assert 0 < int(zeroed.sum()) < len(x)  # some images lose the last block's branch, not all
    torch.testing.assert_close(out[~zeroed], branch[~zeroed] / 0.5)  # the kept ones scaled by 1 / (1 - p)
    dropped.load_state_dict(plain.state_dict())  # the training pass moved its batch-norm statistics
    plain.eval(), dropped.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x), rtol=0, atol=0)  # identity in evaluation
        branch, out = seen[-1]
        assert torch.equal(branch, out)


# ---------------------------------------------------------------------------------- optimisers
def test_lr_scaling_rules() -> None:
    assert scaled_lr(0.1, 256, 1024) == pytest.approx(0.4)
    assert scaled_lr(0.1, 256, 1024, "linear") == pytest.approx(0.4)
    assert scaled_lr(0.1, 256, 1024, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.1, 256, 1024, "none") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="optimizer.scaling 'cube' is not known; use one of linear, sqrt, none"):
        scaled_lr(0.1, 256, 1024, "cube")


def _groups() -> list[dict]:
    return [{"params": list(create_model("resnet20", width=0.25).parameters())}]


def test_adamw_from_torch() -> None:
    opt = build_optimizer(OptimizerConfig(name="AdamW", weight_decay=0.05, args={"betas": (0.9, 0.95)}),
                          _groups(), 1e-3, torch.device("cpu"))
    assert type(opt) is torch.optim.AdamW and opt.defaults["betas"] == (0.9, 0.95)
    assert opt.defaults["weight_decay"] == 0.05 and "momentum" not in opt.defaults


@pytest.mark.parametrize("name", ["Lamb", "Lars"])
def test_timm_optimisers(name, cifar_batch) -> None:
    timm_optim = pytest.importorskip("timm.optim")
    opt = build_optimizer(OptimizerConfig(name=name, lr=5e-3), _groups(), 5e-3, torch.device("cpu"))
    assert type(opt) is getattr(timm_optim, name)
    module = ImageClassifier("resnet20", 10, width=0.25)
    opt = build_optimizer(OptimizerConfig(name=name), [{"params": list(module.parameters())}], 5e-3,
                          torch.device("cpu"))
    before = module.model.fc.weight.detach().clone()
    x, y = cifar_batch
    module.criterion(module(x), y).backward()
    opt.step()
    assert not torch.equal(before, module.model.fc.weight)


def test_missing_timm_names_the_extra(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name.split(".")[0] == "timm":
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    for key in [k for k in list(__import__("sys").modules) if k.split(".")[0] == "timm"]:
        monkeypatch.delitem(__import__("sys").modules, key)
    with pytest.raises(ValueError, match=r"optimizer.name 'Lamb' needs timm: pip install 'resnet-lit\[recipes\]'"):
        optimizer_class("Lamb")


def test_unknown_optimiser_is_one_line() -> None:
    message = "optimizer.name 'Lion' is not a torch.optim optimiser; valid: .*AdamW.*, or timm's Lamb, Lars"
    with pytest.raises(ValueError, match=message):
        optimizer_class("Lion")


# --------------------------------------------------------------------------------- flip TTA
def _mean_of_views(module: ImageClassifier, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([module(x[:, 0]).softmax(-1), module(x[:, 1]).softmax(-1)]).mean(0)


def test_cifar_flip_tta_averages_the_two_views(cifar_root, shared_decode_cache) -> None:
    dm = CIFARDataModule(str(cifar_root), batch_size=16, subset=32, num_workers=0, test_mode="flip",
                         cache_dir=str(shared_decode_cache))
    x, y = next(dm.batches("test"))
    centre, _ = next(CIFARDataModule(str(cifar_root), batch_size=16, subset=32, num_workers=0,
                                     cache_dir=str(shared_decode_cache)).batches("test"))
    assert x.shape == (16, 2, 3, 32, 32) and torch.equal(x[:, 0], centre) and torch.equal(x[:, 1], centre.flip(-1))
    torch.manual_seed(0)
    module = ImageClassifier("resnet20", 10, width=0.25).eval()
    with torch.no_grad():
        probs = module.predict_probs(x)
        torch.testing.assert_close(probs, _mean_of_views(module, x))
        assert not torch.allclose(probs, module(centre).softmax(-1))  # the mirror view counts


def test_imagenet_flip_tta_averages_the_two_views(imagewoof_root, tmp_path) -> None:
    root = tmp_path / "woof"
    extract_folder(imagewoof_root, root / "train", per_class=1, split="train")
    extract_folder(imagewoof_root, root / "val", per_class=1, split="val")
    dm = ImageNetDataModule(str(root), eval_batch_size=4, num_workers=0, test_mode="flip",
                            cache_dir=str(tmp_path / "cache"))
    x, y = next(dm.batches("test"))
    centre, _ = next(ImageNetDataModule(str(root), eval_batch_size=4, num_workers=0,
                                        cache_dir=str(tmp_path / "cache")).batches("test"))
    assert x.shape == (4, 2, 3, 224, 224) and torch.equal(x[:, 0], centre) and torch.equal(x[:, 1], centre.flip(-1))
    torch.manual_seed(0)
    module = ImageClassifier("resnet18", 10, width=0.25).eval()
    with torch.no_grad():
        torch.testing.assert_close(module.predict_probs(x), _mean_of_views(module, x))
