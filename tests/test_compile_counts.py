"""After the first epoch a compiled fit compiles nothing more: no new graph and no recompilation, in
training or in evaluation, over several epochs of a real small fit whose validation set ends in a
short batch (padded to full size, data/padding.py). Counted by a torch.compile backend that records
every graph dynamo hands it, and by dynamo's own counters."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch._dynamo.utils import counters

from resnet_lit.data import CIFARDataModule
from resnet_lit.training.classifier import ImageClassifier

GRAPHS: list[list[tuple[int, ...]]] = []  # per compiled graph: the shapes of its 4-d inputs


def counting_backend(gm, example_inputs):
    """A torch.compile backend that records each graph's image shapes and runs it as it is (module
    level: Lightning drops hyperparameters it cannot pickle)."""
    GRAPHS.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.ndim == 4])
    return gm.forward


class CompileCounts(pl.Callback):
    """After each training epoch (its validation included): graphs handed to the backend, dynamo's
    unique graphs, and the frames it compiled (a recompilation compiles a frame again)."""

    def __init__(self) -> None:
        self.after_epoch: list[tuple[int, int, int]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.after_epoch.append((len(GRAPHS), counters["stats"]["unique_graphs"], counters["frames"]["ok"]))


def test_no_new_graph_after_the_first_epoch(cifar_root: Path, tmp_path: Path) -> None:
    """4 epochs of 2 training steps (batch 32) and a validation of 80 images in batches of 32 (the
    last one of 16, padded): every graph is compiled in the first epoch, at one image batch size."""
    GRAPHS.clear()
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    module = ImageClassifier(arch="resnet20", num_classes=10, width=0.25, compile={"backend": counting_backend},
                             schedule={"unit": "step", "milestones": [4, 6]})  # the lr changes twice
    data = CIFARDataModule(str(cifar_root), batch_size=32, subset=80)
    counts = CompileCounts()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                         callbacks=[counts], default_root_dir=tmp_path)
    try:
        trainer.fit(module, data)
    finally:
        torch._dynamo.reset()
    assert trainer.global_step == 8 and len(counts.after_epoch) == 4
    assert counts.after_epoch[0][0] >= 2  # the training graph and the evaluation graph at least
    assert counts.after_epoch == [counts.after_epoch[0]] * 4, counts.after_epoch
    image_batches = {s[0] for g in GRAPHS for s in g if s[1:] == (3, 32, 32)}
    assert image_batches == {32}, GRAPHS  # the short validation batch (16) never reached the compiler


def test_another_evaluation_batch_and_a_second_training_size_compile_static_graphs(imagewoof_root: Path,
                                                                                   tmp_path: Path) -> None:
    """An evaluation batch unlike the training batch (the fast CIFAR recipe: 1000 against 128) and the
    second size of progressive resizing: each a graph of its own with fixed sizes. torch's default
    (dynamic=None) would hand the backend a graph with symbolic sizes the second time."""
    from resnet_lit.data import ImageNetDataModule

    GRAPHS.clear()
    SYMBOLIC.clear()
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = ImageClassifier(arch="resnet20", num_classes=10, width=0.25,
                             compile={"backend": symbol_counting_backend}, compile_eval=True,
                             schedule={"unit": "step", "milestones": [100]})
    data = ImageNetDataModule(root=str(imagewoof_root), batch_size=8, eval_batch_size=4, num_workers=0,
                              augmentation="modern", lighting=0.0, test_size=32,
                              progressive_resize={"start_size": 32, "end_size": 48, "start_epoch": 0,
                                                  "end_epoch": 1, "step": 16})
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=2,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    try:
        trainer.fit(module, data)
    finally:
        torch._dynamo.reset()
    images = sorted({s for g in GRAPHS for s in g})
    assert {(8, 3, 32, 32), (8, 3, 48, 48), (4, 3, 32, 32)} <= set(images), images
    assert SYMBOLIC == [], f"graphs with symbolic sizes: {SYMBOLIC}"


SYMBOLIC: list[str] = []


def symbol_counting_backend(gm, example_inputs):
    """``counting_backend`` that also records any symbolic size among a graph's inputs."""
    SYMBOLIC.extend(str(t) for t in example_inputs if isinstance(t, torch.SymInt))
    SYMBOLIC.extend(str(t.shape) for t in example_inputs
                    if isinstance(t, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in t.shape))
    return counting_backend(gm, example_inputs)
