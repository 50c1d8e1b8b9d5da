"""``compile_step``: the whole training step as one compiled function (training/fused_step.py).

Real fits on real CIFAR-10 images: the compiled step trains as the default path does (same weights
after the same steps, seed and augmentation draws), compiles nothing after its first epoch across
learning-rate changes, epoch ends and validations, saves its optimiser state as the default path
does, resumes a mid-epoch checkpoint bit for bit, and refuses what it cannot keep in one line."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch._dynamo.utils import counters

from resnet_lit.checkpointing.contents import RNGState
from resnet_lit.data import CIFARDataModule
from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.ema import EMAWeights

GRAPHS: list[int] = []  # nodes of each graph dynamo hands the backend


def counting_backend(gm, example_inputs):
    """Record each graph and run it as traced (module level: Lightning drops hyperparameters it cannot pickle)."""
    GRAPHS.append(len(gm.graph.nodes))
    return gm.forward


class CompileCounts(pl.Callback):
    """After each training epoch (its validation included): graphs compiled, dynamo's unique graphs and frames."""

    def __init__(self) -> None:
        self.after_epoch: list[tuple[int, int, int]] = []
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.after_epoch.append((len(GRAPHS), counters["stats"]["unique_graphs"], counters["frames"]["ok"]))


def _module(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(arch="resnet20", num_classes=10, width=0.25, schedule={"unit": "step", "milestones": [4, 7]},
                           **kwargs)


def _fit(module: ImageClassifier, cifar_root: Path, tmp_path: Path, steps: int, ckpt_path: str | None = None,
         callbacks: list[pl.Callback] = (), checkpoint: bool = False, **trainer_kwargs) -> pl.Trainer:
    torch.manual_seed(1)  # the augmentation's draws
    data = CIFARDataModule(str(cifar_root), batch_size=16, subset=48)  # 3 steps an epoch
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=checkpoint,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=2,
                         num_sanity_val_steps=0, callbacks=[RNGState(), *callbacks], default_root_dir=tmp_path,
                         **trainer_kwargs)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


def _max_difference(a: ImageClassifier, b: ImageClassifier) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


@pytest.mark.slow
def test_compiled_step_trains_as_the_default_path_and_compiles_once(cifar_root: Path, tmp_path: Path) -> None:
    """9 steps (3 epochs, each validated; lr divided at steps 4 and 7), with an EMA of the weights: the
    compiled step against the default path, eager; graphs counted after each epoch."""
    GRAPHS.clear()
    torch._dynamo.reset()
    counters.clear()
    ema = {"decay": 0.9, "warmup_power": 0.75}  # the weights compared at the end are the averages
    fast, counts = _module(compile={"backend": counting_backend}, compile_step=True, ema=ema), CompileCounts()
    try:
        trainer = _fit(fast, cifar_root, tmp_path / "fast", 9, callbacks=[counts])
        trainer.save_checkpoint(tmp_path / "fast.ckpt")
    finally:
        torch._dynamo.reset()
    default = _module(ema=ema)
    reference = CompileCounts()
    _fit(default, cifar_root, tmp_path / "default", 9, callbacks=[reference])
    assert trainer.global_step == 9 and len(counts.after_epoch) == 3
    assert counts.after_epoch == [counts.after_epoch[0]] * 3, counts.after_epoch  # nothing compiled after epoch 1
    # the first step (the optimiser creates its state), the steady step, evaluation: one graph each
    assert counts.after_epoch[0][0] == 3 and counters["stats"]["unique_graphs"] == 3, GRAPHS
    assert counts.lrs == pytest.approx(reference.lrs) and len(set(counts.lrs)) == 3
    averaged = [int(c._average_model.n_averaged) for c in trainer.callbacks if isinstance(c, EMAWeights)]
    assert averaged == [9]  # one update a compiled step
    assert _max_difference(fast, default) < 1e-5
    assert fast.trainer.callback_metrics["train/error"] == reference_error(default)
    saved = torch.load(tmp_path / "fast.ckpt", weights_only=False)["optimizer_states"][0]  # hparams: the test backend
    assert isinstance(saved["param_groups"][0]["lr"], float)  # saved as the default path saves it
    assert len(saved["state"]) == len(list(fast.model.parameters()))  # momentum buffers


def reference_error(module: ImageClassifier) -> torch.Tensor:
    return module.trainer.callback_metrics["train/error"]


@pytest.mark.slow
def test_compiled_step_resumes_mid_epoch_bit_for_bit(cifar_root: Path, tmp_path: Path) -> None:
    """5 steps at once, saving a checkpoint every 2 steps, against 3 more steps resumed from the one
    at step 2 (inside the first epoch). The compiled function runs its own code (``force_eager``: the
    operations the backend above is handed, without tracing them twice more on a CPU)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    with torch.compiler.set_stance("force_eager"):
        whole = _module(compile=True, compile_step=True)
        every_2 = ModelCheckpoint(tmp_path / "ckpt", "{step}", every_n_train_steps=2, save_top_k=-1)
        _fit(whole, cifar_root, tmp_path / "whole", 5, callbacks=[every_2], checkpoint=True)
        resumed = _module(compile=True, compile_step=True)
        trainer = _fit(resumed, cifar_root, tmp_path / "resumed", 5, ckpt_path=str(tmp_path / "ckpt" / "step=2.ckpt"))
    assert trainer.global_step == 5
    assert _max_difference(whole, resumed) == 0.0
    for group in trainer.optimizers[0].param_groups:
        assert isinstance(group["lr"], torch.Tensor)  # the restored float became the step's tensor again


@pytest.mark.parametrize(("trainer_kwargs", "model_kwargs", "named"), [
    ({"accumulate_grad_batches": 2}, {}, "gradient accumulation (trainer.accumulate_grad_batches 2)"),
    ({"gradient_clip_val": 1.0}, {}, "gradient clipping (trainer.gradient_clip_val 1.0)"),
    ({}, {"schedule": {"kind": "plateau"}}, "the plateau schedule"),
])
def test_compiled_step_refuses_what_it_cannot_keep(cifar_root: Path, tmp_path: Path, trainer_kwargs, model_kwargs,
                                                   named: str) -> None:
    torch.manual_seed(0)
    module = ImageClassifier(arch="resnet20", num_classes=10, width=0.25, compile=True, compile_step=True,
                             **model_kwargs)
    with pytest.raises(ValueError, match="compile_step") as error:
        _fit(module, cifar_root, tmp_path, 1, **trainer_kwargs)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_compile_step_needs_compile() -> None:
    with pytest.raises(ValueError, match="model.compile_step needs model.compile"):
        ImageClassifier(arch="resnet20", num_classes=10, compile_step=True)


class FailAtFirstStep(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise RuntimeError("stop here")


@pytest.mark.slow
def test_a_failed_compiled_step_fit_leaves_the_datamodule_augmenting(cifar_root: Path, tmp_path: Path) -> None:
    """The compiled step augments the batches itself (the DataModule's train_batch_fn) and flips no state
    of the DataModule: after a fit that fails, the next fit with the same DataModule (default path)
    trains on augmented float batches."""
    data = CIFARDataModule(str(cifar_root), batch_size=16, subset=32)
    failing = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[FailAtFirstStep()],
                         default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="stop here"):
        failing.fit(_module(compile=True, compile_step=True), data)
    assert not hasattr(data, "defer_train_batch")
    seen = []

    class Inputs(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(batch[0].dtype)

    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Inputs()],
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(_module(), data)
    assert seen == [torch.float32]


@pytest.mark.slow
def test_compiled_step_runs_under_bf16_autocast(cifar_root: Path, tmp_path: Path) -> None:
    """``trainer.precision bf16-mixed``: Lightning's autocast reaches the compiled step (traced by dynamo,
    run as traced): its weights after 3 steps are the bf16 default path's, not the 32-bit ones."""
    runs = {}
    for name, precision, step in [("fast", "bf16-mixed", True), ("default", "bf16-mixed", False),
                                  ("fp32", "32", False)]:
        module = _module(compile={"backend": "eager"}, compile_step=True) if step else _module()
        _fit(module, cifar_root, tmp_path / name, 3, precision=precision, limit_val_batches=0)
        runs[name] = module
    same, apart = _max_difference(runs["fast"], runs["default"]), _max_difference(runs["default"], runs["fp32"])
    assert same < apart / 10, (same, apart)
