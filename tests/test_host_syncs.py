"""No host synchronisation per training step outside the logging steps: the CPU-side check of the
code path that ``torch.cuda.set_sync_debug_mode`` makes on a GPU.

A real short ``resnet-lit fit`` (in-process, the CLI's own callbacks, logger and checkpoints) runs
with every tensor-to-host conversion patched: ``item``, ``tolist``, ``cpu``, ``numpy`` and Python's
``bool`` / ``int`` / ``float`` / ``index`` of a tensor, each a device synchronisation on a GPU.
Every call made between the start of a training batch and the start of the next one is recorded
with its step and the place in the code that made it; data loading (host index tensors of the
sampler, worker batches) is left out: those tensors never live on the device. On the steps the
logger writes (``log_every_n_steps``) conversions are expected (the logged loss, the non-finite
check); on the others there must be none.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from fit_helpers import small_fit_args

from resnet_lit.lightning_private import should_update_logs
from resnet_lit.runs.cli import main

CONVERSIONS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
RECORDS: list[tuple[int, bool, str, str]] = []  # (training batch, logging step?, conversion, where)
_WINDOW: list[tuple[int, bool] | None] = [None]  # the training batch under way, or None outside one
_HOST_ONLY = ("torch/utils/data/", "resnet_lit/data/samplers.py")  # host tensors: indices and worker batches


class SyncWindow(pl.Callback):
    """Opens a window at each training batch's start (closed at the epoch's end, before validation)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _WINDOW[0] = (trainer.global_step, should_update_logs(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _WINDOW[0] = None

    def on_validation_start(self, trainer, pl_module) -> None:
        _WINDOW[0] = None


def _where() -> str | None:
    """The innermost caller outside torch and this file (``path:line``), or None for data loading."""
    frames = traceback.extract_stack()[:-2]
    if any(marker in f.filename for f in frames for marker in _HOST_ONLY):
        return None
    for f in reversed(frames):
        if "/torch/" not in f.filename and not f.filename.endswith("test_host_syncs.py"):
            name = f.filename
            for root in ("site-packages/", "src/"):
                name = name.split(root, 1)[-1]
            return f"{name}:{f.lineno}"
    return "?"


def _counting(name: str, original):
    def wrapper(self, *args, **kwargs):
        window = _WINDOW[0]
        if window is not None:
            where = _where()
            if where is not None:
                RECORDS.append((window[0], window[1], name, where))
        return original(self, *args, **kwargs)

    return wrapper


@pytest.mark.slow
def test_no_host_sync_outside_logging_steps(cifar_root: Path, tmp_path: Path, monkeypatch) -> None:
    """12 steps of the ResNet-20 recipe (3 epochs of 4), logging every 4th step: the 9 other steps
    convert no tensor to a host value, in the step, the optimiser, the callbacks or the logger."""
    RECORDS.clear()
    for name in CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, _counting(name, getattr(torch.Tensor, name)))
    window = {"class_path": "test_host_syncs.SyncWindow"}
    import json

    args = small_fit_args(tmp_path / "run", root=cifar_root, subset=128, steps=12, width=0.25,
                          extra=["--trainer.log_every_n_steps", "4", "--trainer.callbacks+=" + json.dumps(window)])
    try:
        main(["fit", *args])
    finally:
        _WINDOW[0] = None
    logging_steps = {step for step, logging, _, _ in RECORDS if logging}
    assert logging_steps, "no conversion on a logging step: the patch or the window recorded nothing"
    outside = sorted({(name, where) for step, logging, name, where in RECORDS if not logging})
    assert not outside, "host conversions on steps the logger does not write:\n" + "\n".join(
        f"  {name} at {where}" for name, where in outside)
