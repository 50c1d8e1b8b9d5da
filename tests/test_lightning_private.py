"""Every private Lightning name resnet-lit uses (listed in resnet_lit/lightning_private.py) exists in the
installed Lightning: an upgrade that removes or renames one fails here, by name."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import DDPStrategy

from resnet_lit.lightning_private import PRIVATE_NAMES


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("lightning_private")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=folder)
    return {
        "Trainer": trainer,
        "ModelCheckpoint": ModelCheckpoint(dirpath=folder),
        "RichProgressBar": RichProgressBar(),
        "CSVLogger": CSVLogger(folder),
        "ExperimentWriter": ExperimentWriter(str(folder / "writer")),
        "DDPStrategy": DDPStrategy(),
        "LightningCLI": LightningCLI,
        "LightningModule": pl.LightningModule(),
        "WandbLogger": WandbLogger(save_dir=str(folder), offline=True),
        "fit_loop_state": trainer.fit_loop.state_dict(),  # what a checkpoint holds under loops/fit_loop
    }


@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_private_lightning_name_exists(roots: dict[str, Any], name: str) -> None:
    if name.startswith("fit_loop_state/"):
        value: Any = roots["fit_loop_state"]
        for key in name.split("/")[1:]:
            assert isinstance(value, dict) and key in value, f"{name}: no key {key!r} in a checkpoint's fit loop state"
            value = value[key]
        return
    root, *attributes = name.split(".")
    value = roots[root]
    for attribute in attributes:
        assert hasattr(value, attribute), f"{name}: Lightning {pl.__version__} has no {attribute!r} here"
        value = getattr(value, attribute)
