"""What a command starts from: ``--ckpt_path`` and the run directory turned into a resume plan.

``plan_resume`` answers, before any class is built, which checkpoint file a command restores
(or none: a fresh start) and why: ``--ckpt_path auto`` (the newest of the run's ``last.ckpt`` and
an ``hpc_ckpt_N.ckpt``, or a fresh start; resume.py), ``last`` (this run's ``last.ckpt``, which
must exist), a file, or nothing (a ``fit`` that would overwrite a run is refused). It reads the
file once (``read_training_checkpoint``): a broken, newer or weights-only file is one line.

``compare_with_checkpoint`` then checks the built model and DataModule against the checkpoint's
hyperparameters. A resume continues one training, so what defines it must agree: the network, its
classes, the optimiser, schedule and loss, the data and its augmentation. A differing key stops the
command with one line naming it and both values, and the way on (``--model.init_weights`` starts a
new run from those weights). What a resume may change on purpose is applied and listed in one
line: ``RESUME_MAY_CHANGE`` below (where data is read from and how fast, evaluation settings,
compilation), and the trainer's length, logging and checkpoint cadence (not hyperparameters at
all). ``validate``/``test``/``predict`` check only what the weights are: the network and classes.

Lightning's own CLI would instead overwrite the configuration's model arguments with the
checkpoint's, dropping the command's flags without a word; the CLI turns that off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from resnet_lit.checkpointing.contents import RECORD_KEY, TRAINER_LIMITS, read_training_checkpoint
from resnet_lit.checkpointing.resume import AUTO, hpc_checkpoints, resolve_ckpt_path

# Hyperparameters a resumed fit may change; every other one must equal the checkpoint's.
RESUME_MAY_CHANGE = {
    # the model: how it runs, not what it computes; init_weights is never read again on a resume
    "model": {"init_weights", "compile", "compile_eval", "channels_last"},
    # the data: where it is read from and how fast, and what evaluation uses
    "data": {"root", "train_dir", "val_dir", "test_dir", "predict_path", "num_workers", "cache_dir", "download",
             "on_bad_image", "scan", "pin_memory", "data_on_device", "decode", "eval_batch_size",
             "pad_eval_batches", "test_mode", "test_size", "test_resize"},
}
# What the weights are: validate / test / predict refuse a checkpoint that differs in one of these.
WHAT_THE_WEIGHTS_ARE = ("arch", "num_classes", "class_names", "shortcut", "stride_in_1x1", "width", "in_chans")


class ResumeError(ValueError):
    """A resume that cannot go ahead; the message is the one line the CLI prints."""


@dataclass(frozen=True)
class ResumePlan:
    """``ckpt_path``: the file Lightning restores (None: a fresh start); ``why``: one line saying so;
    ``checkpoint``: its contents, read once (for the comparison and the wandb run id)."""

    ckpt_path: str | None
    why: str
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def position(self) -> str:
        """``epoch E, step S`` of the checkpoint, as its run counted them."""
        if self.checkpoint is None:
            return ""
        return f"saved at epoch {self.checkpoint.get('epoch', '?')}, step {self.checkpoint.get('global_step', '?')}"


def plan_resume(command: str, ckpt_path: str | None, run_dir: str | Path, checkpoint_dir: str | Path) -> ResumePlan:
    """The checkpoint ``command`` (fit, validate, test, predict) starts from, or a ``ResumeError``."""
    run_dir, checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
    given = ckpt_path
    if command == "fit":  # auto (requeued jobs) -> the newest hpc/last checkpoint or None
        ckpt_path = resolve_ckpt_path(ckpt_path, run_dir, checkpoint_dir)
    if ckpt_path == "last":  # Lightning would look in a new version folder; ours is fixed
        last = checkpoint_dir / "last.ckpt"
        if not last.is_file():
            raise ResumeError(f"--ckpt_path last: no checkpoint at {last}. "
                              "Start a new run without --ckpt_path, or name the checkpoint file.")
        ckpt_path = str(last)
    if ckpt_path is None:
        if command == "fit":
            _refuse_to_overwrite(checkpoint_dir, run_dir)
        why = "nothing to resume in " + str(run_dir) if given == AUTO else "a new run"
        return ResumePlan(None, why)
    if not Path(ckpt_path).is_file():
        raise ResumeError(f"--ckpt_path {ckpt_path}: no such file.")
    try:
        checkpoint = read_training_checkpoint(ckpt_path)
    except ValueError as error:  # CheckpointFileError, UnsafeCheckpointError: the line names the file
        raise ResumeError(f"--ckpt_path {error}") from None
    how = {AUTO: "--ckpt_path auto", "last": "--ckpt_path last"}.get(str(given), "--ckpt_path")
    return ResumePlan(str(ckpt_path), f"{how}: {ckpt_path}", checkpoint)


def _refuse_to_overwrite(checkpoint_dir: Path, run_dir: Path) -> None:
    # hpc checkpoints live in the run directory (Lightning's SLURM handler), wherever dirpath points
    if (checkpoint_dir / "last.ckpt").exists() and not hpc_checkpoints(run_dir):
        raise ResumeError(
            f"{checkpoint_dir / 'last.ckpt'} exists: this run directory already holds a run. "
            "Resume it with `--ckpt_path last`, or start a new one with `--run_dir <new directory>`.")


def compare_with_checkpoint(plan: ResumePlan, command: str, model_hparams: Mapping[str, Any],
                            data_hparams: Mapping[str, Any] | None) -> list[str]:
    """The changes a resume applies (``"data.num_workers 4 -> 8"``), or a ``ResumeError`` naming each
    key where the configuration and the checkpoint ``plan`` restores disagree on what they train."""
    checkpoint = plan.checkpoint or {}
    saved_model = dict(checkpoint.get("hyper_parameters") or {})
    if command != "fit":
        keys = set(WHAT_THE_WEIGHTS_ARE)
        if not saved_model.get("class_names") or not model_hparams.get("class_names"):
            keys.discard("class_names")  # a checkpoint or a DataModule that does not name its classes
        saved_model = {k: v for k, v in saved_model.items() if k in keys}
        model_hparams = {k: v for k, v in model_hparams.items() if k in keys}
        differ = _differences("model", saved_model, model_hparams)
        if differ:
            raise ResumeError(_refusal(plan, command, differ))
        return []
    differ = _differences("model", saved_model, model_hparams)
    saved_data = checkpoint.get("datamodule_hyper_parameters")
    if saved_data is not None and data_hparams is not None:
        differ += _differences("data", dict(saved_data), data_hparams)
    refused = [d for d in differ if d[0].split(".")[1] not in RESUME_MAY_CHANGE[d[0].split(".")[0]]]
    if refused:
        raise ResumeError(_refusal(plan, command, refused))
    return [f"{key} {_shown(old)} -> {_shown(new)}" for key, old, new in differ]


def trainer_changes(plan: ResumePlan, limits: Mapping[str, Any]) -> list[str]:
    """``trainer.max_steps 170 -> 300`` for each of ``TRAINER_LIMITS`` the checkpoint's run had otherwise
    (as ``add_trainer_limits`` recorded them)."""
    recorded = ((plan.checkpoint or {}).get(RECORD_KEY) or {}).get("trainer") or {}
    return [f"trainer.{key} {recorded[key]} -> {limits[key]}" for key in TRAINER_LIMITS
            if key in recorded and key in limits and recorded[key] != limits[key]]


def _refusal(plan: ResumePlan, command: str, differ: list[tuple[str, Any, Any]]) -> str:
    keys = "; ".join(f"{key}: checkpoint {_shown(old)}, this command {_shown(new)}" for key, old, new in differ)
    if command == "fit":
        way = (f"To train with these settings from its weights, start a new run: --model.init_weights "
               f"{plan.ckpt_path} --run_dir NEW_DIR (without --ckpt_path); to resume, give the checkpoint's values.")
    else:
        way = "Give the configuration the checkpoint was trained with (its run directory's config.yaml)."
    return f"--ckpt_path {plan.ckpt_path} was trained otherwise ({keys}). {way}"


def _differences(prefix: str, saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, checkpoint's value, configuration's value) wherever both have a key and disagree.
    A key only one side has is a version difference (an option added or removed), not a change."""
    found: list[tuple[str, Any, Any]] = []
    for key in sorted(set(saved) & set(now)):
        old, new = _plain(saved[key]), _plain(now[key])
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(f"{prefix}.{key}", old, new)
        elif old != new:
            found.append((f"{prefix}.{key}", old, new))
    return found


def _plain(value: Any) -> Any:
    """Configuration values as a checkpoint stores them: dataclasses and namespaces as dicts, tuples as
    lists, paths as strings, whole floats equal to ints."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if hasattr(value, "as_dict") and callable(value.as_dict):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _shown(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(map(str, value[:3]))}, ... ({len(value)} items)]"
    return str(value)
