"""``resnet-lit plan``: what a ``fit`` would do at its scale, before anything expensive starts.

    resnet-lit plan --config configs/r50.yaml --config configs/trainer/ddp_multinode.yaml \
        --trainer.num_nodes 32 --trainer.devices 8

takes exactly ``fit``'s arguments (``--ckpt_path`` is accepted and ignored) and prints one
``key: value`` per line: the global batch, the scaled lr, steps per epoch, total steps and epochs, the
warm-up and milestones in epochs, the EMA's half-life in epochs, how often ``last.ckpt`` is written
and how many validations run. It builds no model and reads no image: the training set's size is
``--data.train_size_hint N``, or counted from the ImageNet folder / shards index, or CIFAR's known
50,000 (less a holdout), or ILSVRC-2012's 1,281,167 when the ImageNet root is not on this machine.
A plan that ``fit`` would refuse (a large global batch without warm-up, a batch larger than an
epoch) ends with the same one-line error, exit status 2.

The arithmetic is the run's own: ``ScheduleConfig.warmup_steps_at`` / ``milestones_at`` /
``steps``, ``ema_at_scale`` and ``check_warmup`` are what ``fit`` calls.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule

from resnet_lit.runs.cli import ResNetCLI, _fail
from resnet_lit.runs.console import silence_noise
from resnet_lit.runs.exit_codes import OK, USAGE
from resnet_lit.runs.flag_errors import check_config_files
from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.ema import EMAConfig, ema_at_scale, half_life_steps
from resnet_lit.training.optimizers import OptimizerConfig, scaled_lr
from resnet_lit.training.schedules import ScheduleConfig, check_warmup, global_batch_size

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012's training set
CIFAR_TRAIN_IMAGES = 50_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class PlanError(ValueError):
    """A plan that fit would refuse: one line."""


def main(argv: list[str]) -> int:
    if argv[:1] in (["--help"], ["-h"]):
        print(__doc__)
        return OK
    argv, hint = _take_option(argv, "--data.train_size_hint")
    argv, _ = _take_option(argv, "--ckpt_path")
    config = parse_fit_config(argv)
    try:
        lines = plan(config, int(hint) if hint is not None else None)
    except PlanError as error:
        print(f"resnet-lit: error: {error}", file=sys.stderr)
        return USAGE
    print("\n".join(f"{key}: {value}" for key, value in lines.items()))
    return OK


class _ParseOnly(ResNetCLI):
    """``fit``'s parser and nothing else: no run directory, no model, no data (``resnet-lit plan``)."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def parse_fit_config(args: list[str]) -> Any:
    """``fit``'s configuration from ``args`` (``fit``'s arguments without the word ``fit``), parsed and
    checked as ``fit`` parses it, one line on a mistake, nothing instantiated."""
    check_config_files(args, fail=_fail)
    silence_noise()
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # nothing is drawn
    argv, sys.argv = sys.argv, [sys.argv[0], *args]  # as if typed: LightningCLI warns when both are given
    try:
        cli = _ParseOnly(
            ImageClassifier, LightningDataModule, subclass_mode_data=True, seed_everything_default=0,
            auto_configure_optimizers=False, run=False,
            parser_kwargs={"description": "resnet-lit plan: fit's arguments", "exit_on_error": False,
                           "allow_abbrev": False},
        )
    finally:
        sys.argv = argv
    return cli.config


def _take_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``, and the value (the last one given)."""
    rest, value, i = [], None, 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif argv[i].startswith(name + "="):
            value, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return rest, value


def _plain(value: Any) -> Any:
    """A jsonargparse Namespace (or anything holding them) as plain dicts and lists."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


def world_size(trainer: dict[str, Any]) -> int:
    """Processes of the job from ``trainer.devices`` x ``trainer.num_nodes`` ("auto" / -1: the GPUs
    here, or 1 on a CPU)."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, list):
        count = len(devices)
    elif devices in ("auto", -1):
        import torch

        accelerator = trainer.get("accelerator", "auto")
        count = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
        count = max(count, 1)
    else:
        count = int(devices)
    return count * int(trainer.get("num_nodes") or 1)


def train_images(data: dict[str, Any], hint: int | None) -> tuple[int, str]:
    """The training set's size and where it came from."""
    if hint is not None:
        if hint < 1:
            raise PlanError(f"--data.train_size_hint {hint}: give the number of training images (>= 1)")
        return hint, "--data.train_size_hint"
    class_path = str(data.get("class_path", ""))
    args = data.get("init_args") or {}
    if class_path.endswith("CIFARDataModule"):
        n = CIFAR_TRAIN_IMAGES - (args.get("holdout_size", 5000) if args.get("val_split") == "holdout" else 0)
        if args.get("subset"):
            n = min(n, int(args["subset"]))
        return n, "CIFAR-10's training set" + (" less the holdout" if args.get("val_split") == "holdout" else "")
    if class_path.endswith("ImageNetDataModule"):
        if args.get("shards"):
            index = Path(args["shards"]) / args.get("train_dir", "train") / "index.json"
            if index.is_file():
                chunks = json.loads(index.read_text()).get("chunks", [])
                return sum(int(c.get("chunk_size", 0)) for c in chunks), str(index)
        root = args.get("root")
        split = Path(root).expanduser() / args.get("train_dir", "train") if root else None
        if split is not None and split.is_dir():
            n = sum(1 for p in split.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            return n, f"counted in {split}"
        archive = split.with_name(split.name + ".tar.gz") if split is not None else None
        if archive is not None and archive.is_file():
            import tarfile

            with tarfile.open(archive) as tar:
                n = sum(1 for m in tar if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES)
            return n, f"counted in {archive}"
        return IMAGENET_TRAIN_IMAGES, ("ILSVRC-2012's training set (the root is not on this machine; "
                                       "--data.train_size_hint N for other data)")
    raise PlanError(f"data {class_path}: cannot tell its training set's size without reading it; "
                    "give --data.train_size_hint N")


def plan(config: Any, hint: int | None = None) -> dict[str, Any]:
    """The plan of a parsed ``fit`` configuration, as ordered ``key: value`` pairs."""
    trainer, model, data = _plain(config["trainer"]), _plain(config["model"]), _plain(config["data"])
    optim = OptimizerConfig(**(model.get("optimizer") or {}))
    schedule = ScheduleConfig(**(model.get("schedule") or {}))
    ema = EMAConfig(**model["ema"]) if model.get("ema") else None
    args = data.get("init_args") or {}
    per_device = int(args.get("batch_size") or 0)
    if per_device < 1:
        raise PlanError(f"data.init_args.batch_size {per_device!r}: give the per-device batch")
    world, accumulate = world_size(trainer), int(trainer.get("accumulate_grad_batches") or 1)
    batch = global_batch_size(per_device, world, 1, accumulate)
    n, source = train_images(data, hint)
    augment = args.get("augment") or {}  # data/augment.py: AugmentConfig
    repeats = int(augment.get("repeated_augmentation") or 1)
    epoch_len = n * repeats if augment.get("repeated_augmentation_epoch", "all_repeats") == "all_repeats" else n
    batches = (epoch_len // world) // per_device  # each rank an equal share, the last partial batch dropped
    per_epoch = math.ceil(batches / accumulate)
    if per_epoch < 1:
        raise PlanError(f"global batch {batch} is larger than an epoch of {epoch_len} images: no training step; "
                        "lower data.init_args.batch_size or the number of devices")
    try:
        check_warmup(optim, schedule, batch)
    except ValueError as error:
        raise PlanError(str(error)) from None
    max_epochs = trainer.get("max_epochs")
    max_steps = int(trainer.get("max_steps") or -1)
    steps_cap = schedule.steps(max_steps, batch) if max_steps > 0 else None
    if max_epochs in (None, -1) and steps_cap is None:
        max_epochs = 1000  # Lightning's default when neither is given
    epoch_steps = per_epoch * max_epochs if max_epochs not in (None, -1) else None
    total = min(s for s in (steps_cap, epoch_steps) if s is not None)
    lines: dict[str, Any] = {
        "world_size": world,
        "global_batch": f"{batch} = {per_device} per device x {world} process(es) x {accumulate} accumulation",
        "lr": f"{scaled_lr(optim.lr, optim.reference_batch, batch, optim.scaling):.6g} = {optim.lr:g} at "
              f"{optim.reference_batch} images, {optim.scaling} scaling",
        "train_images": f"{n}: {source}",
        "steps_per_epoch": per_epoch,
        "total_steps": total,
        "epochs": _num(total / per_epoch),
        "images": total * batch,
    }
    if schedule.steps_at_batch is not None:
        factor = _num(schedule.step_factor(batch))
        lines["steps_at_batch"] = f"{schedule.steps_at_batch} (the config's step counts x {factor})"
    warmup = schedule.warmup_steps_at(batch, per_epoch) if schedule.kind != "plateau" else 0
    lines["warmup_steps"] = warmup
    lines["warmup_epochs"] = _num(warmup / per_epoch)
    lines["schedule"] = schedule.kind + (f" (warm-up {schedule.warmup_mode} from {schedule.warmup_factor:g} x lr)"
                                         if warmup else "")
    if schedule.kind == "step":
        milestones = schedule.milestones_at(batch, per_epoch)
        lines["milestones_steps"] = milestones
        lines["milestones_epochs"] = [_num(m / per_epoch) for m in milestones]
    if ema is not None:
        scaled = ema_at_scale(ema, schedule.step_factor(batch))
        lines["ema"] = f"decay {scaled.decay:.8g} every {scaled.update_every_n_steps} step(s)"
        lines["ema_half_life_epochs"] = _num(half_life_steps(scaled) / per_epoch)
        lines["ema_half_life_images"] = round(half_life_steps(scaled) * batch)
    lines["checkpoint_every"] = _checkpoint_every(_plain(config.get("last_checkpoint")) or {}, per_epoch, trainer)
    lines["evaluations"] = _evaluations(trainer, total, per_epoch)
    return lines


def _num(value: float) -> float | int:
    """A figure as printed: an integer when it is one, else 4 decimals."""
    return int(round(value)) if abs(value - round(value)) < 1e-9 else round(value, 4)


def _checkpoint_every(last: dict[str, Any], per_epoch: int, trainer: dict[str, Any]) -> str:
    every = last.get("every_n_train_steps")
    interval = last.get("train_time_interval")
    parts = []
    if every:
        parts.append(f"{every} steps ({_num(every / per_epoch)} epochs)")
    if interval:
        parts.append(f"{interval} of training")
    parts.append(f"each validation (every {int(trainer.get('check_val_every_n_epoch') or 1)} epoch(s), "
                 f"{per_epoch * int(trainer.get('check_val_every_n_epoch') or 1)} steps) and at the end")
    return "; ".join(parts)


def _evaluations(trainer: dict[str, Any], total: int, per_epoch: int) -> int:
    """Validation runs in the fit (Lightning's: every ``check_val_every_n_epoch`` epochs, or every
    ``val_check_interval`` steps / share of an epoch)."""
    interval = trainer.get("val_check_interval")
    every_epochs = trainer.get("check_val_every_n_epoch")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > 1:
        per = interval if every_epochs is None else None
        if per:
            return total // per
        return (total // per_epoch // int(every_epochs or 1)) * (per_epoch // interval)
    share = float(interval) if interval not in (None, 1, 1.0) else 1.0
    per_val_epoch = max(1, int(1 / share)) if share < 1 else 1
    return (total // per_epoch // int(every_epochs or 1)) * per_val_epoch
