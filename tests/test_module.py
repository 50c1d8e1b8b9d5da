"""ImageClassifier's own bookkeeping: the training-accuracy counters (against torchmetrics, in
checkpoints) and evaluation without the compiled code (`compile_eval=False`)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from resnet_lit.training.classifier import ImageClassifier


@pytest.mark.parametrize("num_classes", [10, 3])
def test_train_hit_counters_equal_torchmetrics(num_classes: int) -> None:
    module = ImageClassifier(arch="resnet20", num_classes=num_classes, width=0.25)
    top5 = min(5, num_classes)
    ref1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
    ref5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
    g = torch.Generator().manual_seed(0)
    for batch in (32, 32, 7):  # a short last batch too
        logits, y = torch.randn(batch, num_classes, generator=g), torch.randint(0, num_classes, (batch,), generator=g)
        module.train_accuracy.update(logits, y)
        ref1.update(logits, y)
        ref5.update(logits, y)
    hits1, hits5 = module.train_accuracy.hits.tolist()
    assert module.train_accuracy.seen == 71
    assert hits1 / 71 == pytest.approx(ref1.compute().item(), abs=1e-6)
    assert hits5 / 71 == pytest.approx(ref5.compute().item(), abs=1e-6)
    if num_classes <= 5:
        assert hits5 == 71  # top-k over all classes always hits
    assert 0 < hits1 < hits5 <= 71


def test_counts_go_into_a_checkpoint_only_mid_epoch() -> None:
    module = ImageClassifier(arch="resnet20", num_classes=10, width=0.25)
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    assert "train_counts" not in ckpt["resnet_lit"]  # nothing counted: an epoch end
    logits = -torch.arange(10.0).repeat(4, 1)  # class 0 first, 1 second, ..., 9 last
    module.train_accuracy.update(logits, torch.tensor([0, 3, 4, 9]))  # top-1, top-5, top-5, neither
    module.on_save_checkpoint(ckpt)
    assert ckpt["resnet_lit"]["train_counts"] == {"epoch": 0, "hits1": 1, "hits5": 3, "seen": 4}
    fresh = ImageClassifier(arch="resnet20", num_classes=10, width=0.25)
    fresh.on_load_checkpoint(ckpt)
    assert fresh.train_accuracy.hits.tolist() == [1, 3] and fresh.train_accuracy.seen == 4
    fresh.train_accuracy.update(logits[:1], torch.tensor([0]))  # counting goes on from there
    assert fresh.train_accuracy.hits.tolist() == [2, 4] and fresh.train_accuracy.seen == 5


GRAPHS: list[list[tuple[int, ...]]] = []


def counting_backend(gm, example_inputs):
    """A torch.compile backend that records the image shapes of each graph and runs it as it is
    (module level: Lightning drops hyperparameters it cannot pickle)."""
    GRAPHS.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.ndim == 4])
    return gm.forward


@pytest.mark.parametrize("compile_eval", [True, False])
def test_compile_eval_false_never_compiles_the_eval_graph(cifar_root, tmp_path, compile_eval: bool) -> None:
    """A real fit with validation (batches of 32 and a last one of 16) and a backend that counts
    the GRAPHS dynamo hands it: eager evaluation leaves only the training graph."""
    import lightning.pytorch as pl

    from resnet_lit.data import CIFARDataModule

    GRAPHS.clear()
    torch._dynamo.reset()
    module = ImageClassifier(arch="resnet20", num_classes=10, width=0.25,
                             compile={"backend": counting_backend}, compile_eval=compile_eval,
                             schedule={"unit": "step", "milestones": [100]})
    # val: 32 + 16 images, the short batch kept (padding is test_compile_counts.py's subject)
    data = CIFARDataModule(str(cifar_root), batch_size=32, subset=48, pad_eval_batches=False)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path)
    trainer.fit(module, data)
    val = trainer.validate(module, data, verbose=False)[0]
    torch._dynamo.reset()
    assert 0 <= val["val/error"] <= 100
    batches = [next(s[0] for s in g if s[1:] == (3, 32, 32)) for g in GRAPHS]  # the images' batch per graph
    if compile_eval:
        # training, eval mode (batch 32), the last batch of 16, and eval under trainer.validate's
        # inference mode: each a compilation (and with CUDA graphs, a recording)
        assert len(GRAPHS) >= 3 and 16 in batches, batches
    else:
        assert batches == [32], batches  # the training graph only
