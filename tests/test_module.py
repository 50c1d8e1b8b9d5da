"""ImageClassifier's own bookkeeping: the training-accuracy counters against torchmetrics."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from resnet_lit.module import ImageClassifier


@pytest.mark.parametrize("num_classes", [10, 3])
def test_train_hit_counters_equal_torchmetrics(num_classes: int) -> None:
    module = ImageClassifier(arch="resnet20", num_classes=num_classes, width=0.25)
    top5 = min(5, num_classes)
    ref1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
    ref5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
    g = torch.Generator().manual_seed(0)
    for batch in (32, 32, 7):  # a short last batch too
        logits, y = torch.randn(batch, num_classes, generator=g), torch.randint(0, num_classes, (batch,), generator=g)
        module._count_train_hits(logits, y)
        ref1.update(logits, y)
        ref5.update(logits, y)
    hits1, hits5 = module._train_hits.tolist()
    assert module._train_seen == 71
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
    module._count_train_hits(logits, torch.tensor([0, 3, 4, 9]))  # top-1, top-5, top-5, neither
    module.on_save_checkpoint(ckpt)
    assert ckpt["resnet_lit"]["train_counts"] == {"epoch": 0, "hits1": 1, "hits5": 3, "seen": 4}
    fresh = ImageClassifier(arch="resnet20", num_classes=10, width=0.25)
    fresh.on_load_checkpoint(ckpt)
    assert fresh._train_hits.tolist() == [1, 3] and fresh._train_seen == 4
    fresh._count_train_hits(logits[:1], torch.tensor([0]))  # counting goes on from there
    assert fresh._train_hits.tolist() == [2, 4] and fresh._train_seen == 5
