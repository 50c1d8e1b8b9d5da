"""What a run prints besides progress: one line about the model, and none of Lightning's messages
that are noise for resnet-lit runs.

Silenced (each is true in general, but says nothing a resnet-lit user can act on):

- the ``srun`` hint, outside a SLURM allocation (SLURM installed on the machine, no job running);
  inside a job (``SLURM_JOB_ID`` set) it stays: there it points at a real mistake;
- the tips advertising Lightning's cloud services;
- ``isinstance(treespec, LeafSpec)`` deprecation: raised inside Lightning by newer torch;
- "Checkpoint directory ... exists and is not empty" when a run resumes (the directory is its own);
  a new run into a used directory is refused by the CLI before it starts;
- "ModelCheckpoint(monitor='val/error') could not find the monitored key" when a run stops
  before its first validation: ``best-*.ckpt`` is written at the first validation.
- "It is recommended to use ``self.log(..., sync_dist=True)``" for the figures of ImageClassifier
  under DDP: they are counted over every rank already (torchmetrics, exact sums) and logged once;
- "Found N module(s) in eval mode at the start of training": the frozen batch norms of a fine-tune
  (``--model.freeze``), in eval mode on purpose (training/finetune.py);
- "Loading `train_dataloader` to estimate number of stepping batches": the schedule's length in steps;
- "The dirpath has changed from ...": predict / validate / test of another run's checkpoint, or a
  resume into another directory; nothing of the old directory's best checkpoints is needed there;
- torch's "No CUDA runtime is found, using CUDA_HOME=...": a CUDA toolkit on a machine without a
  GPU; the run says where it trains anyway.

Every other warning stays, on one line ("resnet-lit: warning: <message>") instead of Python's
"<path>:<line>: <category>: <message>" and the source line under it.

Lightning's model summary table is replaced by :func:`model_line` (its FLOPs column reads 0
without an example input): parameters and the paper's multiply-adds, counted on the network.
:func:`cpu_note` says what a GPU recipe started on a CPU should add.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

_NOISE = (
    r"isinstance\(treespec, LeafSpec\)` is deprecated",
    r"`ModelCheckpoint\(monitor='val/error'\)` could not find the monitored key",
    r"It is recommended to use `self\.log\('(train|val|test)/[^']+', \.\.\., sync_dist=True\)`",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"The dirpath has changed from ",
)
# info lines of Lightning's and torch's loggers (messages' beginnings)
_NOISE_LOGGED = ("💡 Tip", "Loading `train_dataloader` to estimate number of stepping batches",
                 "No CUDA runtime is found")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE_LOGGED)


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
    return f"resnet-lit: warning: {message}\n"


def silence_noise() -> None:
    """Filter the messages listed in this module's docstring, for this process."""
    for message in _NOISE:
        warnings.filterwarnings("ignore", message=f".*{message}")
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system but is not used")
    for name in ("lightning.pytorch.trainer.connectors.logger_connector.logger_connector",
                 "lightning.pytorch.trainer.connectors.callback_connector", "lightning.pytorch.utilities.rank_zero",
                 "torch.utils.cpp_extension"):
        logging.getLogger(name).addFilter(_DropTips())
    warnings.formatwarning = _one_line  # after Lightning's import, which sets its own "<path>: <message>"


def silence_resume_noise() -> None:
    """A resumed run writes into its own checkpoint directory: Lightning's warning about it is noise."""
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty")


def model_line(module: Any) -> str | None:
    """'resnet20: 0.27 M parameters, 40.55 M multiply-adds per 3x32x32 image' for an ImageClassifier."""
    from resnet_lit.models import ARCHS, count_flops, count_params

    net, arch = getattr(module, "model", None), getattr(module, "hparams", {}).get("arch")
    if net is None or arch not in ARCHS:
        return None
    size = 32 if ARCHS[arch].family.startswith("cifar") else 224
    channels = int(module.hparams.get("in_chans", 3))
    flops = count_flops(net, (1, channels, size, size))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = count_params(net)
    frozen = f" ({(total - trainable) / 1e6:.2f} M frozen)" if trainable != total else ""
    return (f"{arch}: {total / 1e6:.2f} M parameters{frozen}, {flops / 1e6:.2f} M multiply-adds "
            f"per {channels}x{size}x{size} image")


def print_model_line(module: Any) -> None:
    line = model_line(module)
    if line:
        rank_zero_info(line)


def cpu_note(trainer: Any, model: Any) -> None:
    """A GPU recipe started without a GPU runs, but slower than it could: say what to add."""
    if trainer.strategy.root_device.type != "cpu" or trainer.global_rank != 0:
        return
    notes = []
    if getattr(model, "hparams", {}).get("compile", False) is not False:
        notes.append("the model is compiled (30-60 s before the first step on a CPU, about 1.1x faster after)")
    if "bf16" in str(trainer.precision) and not _cpu_has_bf16():
        notes.append(f"precision {trainer.precision} on a CPU without bf16 instructions (emulated: slow)")
    if notes:
        print("resnet-lit: note: training on the CPU; " + "; ".join(notes) + ". `--config configs/trainer/cpu.yaml` "
              "runs 32-bit, eager and channels-last (docs/benchmarks.md).", file=sys.stderr, flush=True)


def _cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
