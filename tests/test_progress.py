"""Progress as a user reads it, from a real fit on real CIFAR-10 images: step and epoch of their
totals, images/s and the time left, in a terminal (the rich bar) and off one (plain lines: SLURM
logs, nohup, CI); evaluations labelled with the checkpoint they measured, printed once."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from resnet_lit import CIFARDataModule, ImageClassifier
from resnet_lit.runs.callbacks import LineProgress, StepRichProgressBar
from resnet_lit.training.optimizers import OptimizerConfig
from resnet_lit.training.schedules import ScheduleConfig


def _data(cifar_root: Path, cache: Path) -> CIFARDataModule:  # 64 images: 4 steps an epoch
    return CIFARDataModule(root=str(cifar_root), batch_size=16, subset=64, num_workers=0, cache_dir=str(cache))


def _fit(cifar_root: Path, cache: Path, bar: pl.Callback, steps: int = 3, epochs: int | None = None,
         **trainer_args) -> pl.Trainer:
    model = ImageClassifier(arch="resnet20", num_classes=10, width=0.25, optimizer=OptimizerConfig(reference_batch=128),
                            schedule=ScheduleConfig(kind="step", unit="step", milestones=[100]))
    options = {"logger": False, "enable_checkpointing": False, **trainer_args}
    trainer = pl.Trainer(max_steps=-1 if epochs else steps, max_epochs=epochs, accelerator="cpu",
                         enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[bar],
                         **options)
    trainer.fit(model, _data(cifar_root, cache))
    return trainer


def _step_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("step ")]


def test_plain_lines_say_step_and_epoch_of_their_totals_images_per_s_and_time_left(cifar_root, shared_decode_cache,
                                                                                 capsys):
    _fit(cifar_root, shared_decode_cache, LineProgress(every_n_steps=1000, every_n_seconds=0))
    out = capsys.readouterr().out
    lines = _step_lines(out)
    assert [re.match(r"step (\d+/\d+) epoch (\d+/\d+)", line).groups() for line in lines] == [
        ("1/3", "1/1"), ("2/3", "1/1"), ("3/3", "1/1")]
    assert all(re.search(r"[\d,]+ images/s \d+:\d\d:\d\d left lr=", line) for line in lines[1:]), lines
    assert "\x1b" not in out and "\r" not in out  # a log file, not a terminal


def test_runs_bounded_by_epochs_have_totals_and_a_first_line_after_the_first_step(cifar_root, shared_decode_cache,
                                                                                  capsys):
    # was "epoch 0 epoch 0 step 7" (no total, no time left), and the first line came after 60 s
    _fit(cifar_root, shared_decode_cache, LineProgress(every_n_steps=4, every_n_seconds=600), epochs=2)
    out = capsys.readouterr().out
    lines = _step_lines(out)
    assert [re.match(r"step \d+/\d+ epoch \d+/\d+", line).group() for line in lines] == [
        "step 1/8 epoch 1/2", "step 4/8 epoch 1/2", "step 8/8 epoch 2/2"], lines
    assert re.search(r"0:00:\d\d left", lines[1]) and "epoch 0" not in out
    assert re.search(r"^epoch 1 ended at step 4: train/acc1=[\d.]+ train/acc5=[\d.]+ train/error=", out, re.M), out
    assert re.search(r"^validation at step 8/8 epoch 2/2: val/acc1=", out, re.M), out


def test_training_figures_say_the_step_they_are_from(cifar_root, shared_decode_cache, capsys):
    # logged every 2 steps, printed every step: steps 2 and 3 showed step 1's loss as if it were theirs
    _fit(cifar_root, shared_decode_cache, LineProgress(every_n_steps=1, every_n_seconds=600), steps=4,
         log_every_n_steps=2)
    lines = _step_lines(capsys.readouterr().out)
    tagged = [re.search(r"train/loss=\S+( \(at step (\d+)\))?", line) for line in lines]
    assert [m.group(2) if m and m.group(1) else m and "fresh" for m in tagged] == [None, "fresh", "2", "fresh"], lines


def test_the_rich_bar_counts_steps_and_epochs_of_their_totals(cifar_root, shared_decode_cache, capsys):
    # Lightning's own bar reads "Epoch 0/-2" here: max_epochs is -1 when max_steps ends the run
    _fit(cifar_root, shared_decode_cache, StepRichProgressBar(console_kwargs={"force_terminal": True, "width": 200}),
         steps=5)
    out = capsys.readouterr().out
    assert "step 5/5 epoch 2/2" in out and "0/-2" not in out
    assert re.search(r"step 5/5 epoch 2/2 [\d,]+ images/s 0:00:00 left", out), out


def test_a_test_of_a_checkpoint_is_labelled_with_its_step_and_printed_once(cifar_root, shared_decode_cache, tmp_path,
                                                                          capsys):
    fitted = _fit(cifar_root, shared_decode_cache, LineProgress(), steps=6, enable_checkpointing=True,
                  default_root_dir=tmp_path)
    ckpt = tmp_path / "step6.ckpt"
    fitted.save_checkpoint(ckpt)
    capsys.readouterr()
    trainer = pl.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path, name="test", version=""),
                         enable_model_summary=False, limit_test_batches=1, callbacks=[LineProgress()])
    trainer.test(ImageClassifier(arch="resnet20", num_classes=10, width=0.25), _data(cifar_root, shared_decode_cache),
                 ckpt_path=str(ckpt))
    out = capsys.readouterr().out
    # one line, with the epoch and step the checkpoint records (Lightning counts the epoch cut short at
    # max_steps as done: 2); was "epoch 0 step 0" and Lightning's table beside it
    at = torch.load(ckpt, weights_only=True)
    assert (at["epoch"], at["global_step"]) == (2, 6)
    assert re.search(r"^test of the checkpoint epoch=2 step=6: test/acc1=\S+ test/acc5=\S+ test/error=", out, re.M), out
    assert out.count("test/error=") == 1 and "Test metric" not in out and "─" not in out
    (row,) = csv.DictReader((tmp_path / "test" / "metrics.csv").open())
    assert (row["step"], float(row["epoch"])) == ("6", 2.0)
