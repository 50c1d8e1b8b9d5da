"""The EMA of the weights (``model.ema``, Lightning's ``EMAWeightAveraging``) through the real CLI on
real CIFAR-10 images: both weight sets in the checkpoint, validation and later evaluation on the
averaged ones, and a resumed run that ends with the same average and live weights as a straight one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fit_helpers import EXACT_STEPS, exact_fit

from resnet_lit import CIFARDataModule
from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.ema import EMAConfig, EMAWeights

# decay 0.8 so that 3 updates move the average visibly; updates at step indices 2, 4, 6 (every 2nd from
# index 1), so a run resumed at step 4 must remember what it averaged; stochastic depth draws its
# random drops from the generators the resume restores
EMA = ("--model.ema.decay", "0.8", "--model.ema.update_every_n_steps", "2",
       "--model.ema.update_starting_at_step", "1", "--model.drop_path_rate", "0.1")


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def straight(repo_root: Path, cifar_root: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ema") / "straight"
    done = exact_fit(repo_root, cifar_root, run, *EMA)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_checkpoint_holds_both_weight_sets(straight: Path) -> None:
    ckpt = _last(straight)
    ema, live = ckpt["state_dict"], ckpt["current_model_state"]
    assert ema.keys() == live.keys() and int(ckpt["averaging_state"]["n_averaged"]) == 3
    assert ckpt["hyper_parameters"]["ema"] == {"decay": 0.8, "update_every_n_steps": 2, "update_starting_at_step": 1,
                                               "warmup_power": None, "warmup_gamma": 1.0}
    differ = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], live[k])]
    assert "model.conv1.weight" in differ and "model.layer1.0.bn1.running_mean" in differ  # buffers averaged too


def test_validation_and_evaluation_use_the_average(straight: Path, cifar_root: Path, shared_decode_cache) -> None:
    rows = [r for r in csv.DictReader(open(straight / "metrics.csv")) if r["val/loss"]]
    logged = float(rows[-1]["val/loss"])  # the validation after the last step, when last.ckpt was written
    dm = CIFARDataModule(str(cifar_root), batch_size=32, subset=128, cache_dir=str(shared_decode_cache))
    batches = list(dm.batches("val"))

    def val_loss(module: ImageClassifier) -> float:
        module.eval()
        with torch.no_grad():
            losses = [F.cross_entropy(module(x), y, reduction="sum") for x, y in batches]
        return float(torch.stack(losses).sum()) / sum(len(y) for _, y in batches)

    module = ImageClassifier.load_from_checkpoint(straight / "checkpoints" / "last.ckpt", map_location="cpu")
    averaged = val_loss(module)  # load_from_checkpoint reads state_dict: the average
    module.load_state_dict(_last(straight)["current_model_state"])
    live = val_loss(module)
    assert averaged == pytest.approx(logged, rel=1e-4)
    assert abs(live - logged) > 1e-3


def test_resume_is_exact_with_ema(straight: Path, repo_root: Path, cifar_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "halves"
    first = exact_fit(repo_root, cifar_root, run, *EMA, steps=EXACT_STEPS // 2)
    assert first.returncode == 0, first.stderr[-3000:]
    second = exact_fit(repo_root, cifar_root, run, *EMA, "--ckpt_path", "last")
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = _last(straight), _last(run)
    assert a["global_step"] == b["global_step"] == EXACT_STEPS
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after the resume"


def test_callback_only_for_fit() -> None:
    module = ImageClassifier("resnet20", 10, width=0.25, ema=EMAConfig(decay=0.99))
    assert module.configure_callbacks() == []  # no Trainer: nothing to average
    assert isinstance(module.hparams.ema, dict)  # plain data in checkpoints
    with pytest.raises(ValueError, match="ema.decay must be in"):
        EMAConfig(decay=1.5)
    callback = EMAWeights(EMAConfig(update_every_n_steps=4, update_starting_at_step=8))
    assert [s for s in range(20) if callback.should_update(step_idx=s)] == [8, 12, 16]


def test_average_follows_live_weights_until_its_first_update() -> None:
    # a validation or checkpoint before update_starting_at_step shows the live weights, not the
    # copy taken when fit began
    module = ImageClassifier("resnet20", 10, width=0.25)
    callback = EMAWeights(EMAConfig(update_starting_at_step=100))
    callback.setup(None, module, "fit")
    with torch.no_grad():
        module.model.fc.weight.add_(1.0)  # training moved the weights
    average = callback._average_model.module
    assert not torch.equal(average.model.fc.weight, module.model.fc.weight)
    checkpoint = {"state_dict": module.state_dict()}
    callback.on_save_checkpoint(None, module, checkpoint)
    assert torch.equal(checkpoint["state_dict"]["model.fc.weight"], module.model.fc.weight)
    callback._average_model.update_parameters(module)  # the first update
    with torch.no_grad():
        module.model.fc.weight.add_(1.0)
    callback.on_save_checkpoint(None, module, checkpoint := {"state_dict": module.state_dict()})
    saved = checkpoint["state_dict"]["model.fc.weight"]
    torch.testing.assert_close(saved, module.model.fc.weight.detach() - 1)  # now the average: before the step


def test_decay_warmup_ramps_as_timm_and_forgets_the_initial_weights() -> None:
    # 50 updates towards weights moved by +1 from the start: without the ramp the average keeps
    # 0.999 ** 49 of the initial weights; with timm's ramp (power 3/4) the k-th update uses
    # 1 - (1 + k) ** -0.75, and the initial weights keep only the product of those
    def averaged_shift(cfg: EMAConfig) -> float:
        module = ImageClassifier("resnet20", 10, width=0.25)
        callback = EMAWeights(cfg)
        callback.setup(None, module, "fit")
        start = module.model.fc.weight.detach().clone()
        with torch.no_grad():
            module.model.fc.weight.add_(1.0)
        callback._average_model.module.model.fc.weight.data.copy_(start)
        callback._average_model.n_averaged.fill_(1)  # as if the first update (a copy) had taken `start`
        for _ in range(49):
            callback._average_model.update_parameters(module)
        return float((callback._average_model.module.model.fc.weight - start).mean())

    plain = averaged_shift(EMAConfig(decay=0.999))
    ramped = averaged_shift(EMAConfig(decay=0.999, warmup_power=0.75))
    kept = 1.0
    for k in range(1, 50):
        kept *= min(0.999, 1 - (1 + k) ** -0.75)
    assert plain == pytest.approx(1 - 0.999**49, abs=1e-5)
    assert ramped == pytest.approx(1 - kept, abs=1e-5) and ramped > 0.99
    with pytest.raises(ValueError, match="warmup_power must be > 0"):
        EMAConfig(warmup_power=0)
