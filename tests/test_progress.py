"""Progress as a user reads it, from a real fit on real CIFAR-10 images: steps of max_steps and the
time left, in a terminal (the rich bar) and off one (plain lines: SLURM logs, nohup, CI)."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl

from resnet_lit import CIFARDataModule, ImageClassifier
from resnet_lit.runs.callbacks import LineProgress, StepRichProgressBar
from resnet_lit.training.optimizers import OptimizerConfig
from resnet_lit.training.schedules import ScheduleConfig


def _fit(cifar_root: Path, cache: Path, bar: pl.Callback, steps: int = 3) -> None:
    data = CIFARDataModule(root=str(cifar_root), batch_size=16, subset=64, num_workers=0, cache_dir=str(cache))
    model = ImageClassifier(arch="resnet20", num_classes=10, width=0.25, optimizer=OptimizerConfig(reference_batch=128),
                            schedule=ScheduleConfig(kind="step", unit="step", milestones=[100]))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[bar])
    trainer.fit(model, data)


def test_plain_lines_say_step_of_max_steps_and_time_left(cifar_root, shared_decode_cache, capsys):
    _fit(cifar_root, shared_decode_cache, LineProgress(every_n_steps=1000, every_n_seconds=0))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 0 step")]
    assert [re.search(r"step (\d+/\d+)", line).group(1) for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r"\(\d+:\d\d:\d\d left\) lr=", line) for line in lines[1:]), lines


def test_the_rich_bar_counts_steps_not_epochs(cifar_root, shared_decode_cache, capsys):
    # Lightning's own bar reads "Epoch 0/-2" here: max_epochs is -1 when max_steps ends the run
    _fit(cifar_root, shared_decode_cache, StepRichProgressBar(console_kwargs={"force_terminal": True, "width": 200}))
    out = capsys.readouterr().out
    assert "step 3/3" in out and "0/-2" not in out
