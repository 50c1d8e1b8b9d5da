"""``resnet-lit plan`` and the recipes at scale: every config in configs/ means the same training on one
GPU and on 32 nodes x 8 GPUs (same epochs, warm-up and EMA horizon; the lr by its stated rule), a
large global batch without a gradual warm-up is refused in one line, and the plan is what ``fit``
does (a real fit's steps and lr against the plan's)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml

from resnet_lit.commands import plan as plan_command
from resnet_lit.commands.plan import parse_fit_config
from resnet_lit.runs.cli import main
from resnet_lit.training.ema import EMAConfig, ema_at_scale, half_life_steps
from resnet_lit.training.schedules import ScheduleConfig, lr_factor

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(
    str(p.relative_to(REPO)) for p in [
        *REPO.glob("configs/*.yaml"), *REPO.glob("configs/cifar10/*.yaml"), *REPO.glob("configs/recipes/*.yaml"),
        *REPO.glob("configs/finetune/*.yaml"), *REPO.glob("configs/experiments/imagewoof/*.yaml")])
ONE_GPU = ["--trainer.devices", "1", "--trainer.num_nodes", "1"]
BIG = ["--trainer.devices", "8", "--trainer.num_nodes", "32"]  # 256 GPUs
GRADUAL = ["--model.schedule.warmup_steps", "0", "--model.schedule.warmup_epochs", "5",
           "--model.schedule.warmup_mode", "linear"]


def planned(*args: str, hint: int | None = None) -> dict[str, str]:
    lines = plan_command.plan(parse_fit_config(list(args)), hint)
    return {k: str(v) for k, v in lines.items()}


def _first(value: str) -> float:
    return float(value.split()[0])


def test_recipe_list_covers_the_configs():
    assert len(RECIPES) >= 25 and "configs/r50.yaml" in RECIPES and "configs/recipes/timm_rsb_a3.yaml" in RECIPES


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES)
def test_every_config_means_the_same_training_on_one_gpu_and_on_256(path):
    n = 1_281_167  # ImageNet's size for every config: 256 GPUs on the small data sets would not fill a step
    one, gradual = planned("--config", path, *ONE_GPU, hint=n), False
    try:
        big = planned("--config", path, *BIG, hint=n)
    except plan_command.PlanError as error:  # the paper's recipes have no warm-up: refused at 256 GPUs
        assert "--model.schedule.warmup_epochs 5 --model.schedule.warmup_mode linear" in str(error), error
        one = planned("--config", path, *ONE_GPU, *GRADUAL, hint=n)
        big = planned("--config", path, *BIG, *GRADUAL, hint=n)
        gradual = True
    g1, g256 = int(one["global_batch"].split()[0]), int(big["global_batch"].split()[0])
    assert g256 == 256 * g1
    ratio = {"linear": 256, "sqrt": 16, "none": 1}[one["lr"].split(", ")[1].split()[0]]
    assert _first(big["lr"]) == pytest.approx(ratio * _first(one["lr"]), rel=1e-5)
    steps1, steps256 = int(one["steps_per_epoch"]), int(big["steps_per_epoch"])
    in_steps = (yaml.safe_load((REPO / path).read_text()).get("trainer") or {}).get("max_steps", -1) > 0
    assert not in_steps or "steps_at_batch" in one, f"{path}: max_steps without schedule.steps_at_batch"
    if in_steps:  # stated in steps at a batch: the same images, to one step's rounding
        assert abs(int(big["images"]) - int(one["images"])) <= g256, (one["images"], big["images"])
        if not gradual:
            assert abs(int(big["warmup_steps"]) * g256 - int(one["warmup_steps"]) * g1) <= g256
    else:  # stated in epochs
        assert float(big["epochs"]) == float(one["epochs"])
    if gradual or not in_steps:  # a warm-up in epochs
        assert float(big["warmup_epochs"]) == pytest.approx(float(one["warmup_epochs"]), abs=1 / steps256 + 1 / steps1)
    for m1, m256 in zip(eval(one.get("milestones_epochs", "[]")), eval(big.get("milestones_epochs", "[]"))):
        if in_steps:
            continue  # compared in images above (an epoch at 256 GPUs drops each rank's remainder)
        assert m256 == pytest.approx(m1, abs=1 / steps256 + 1 / steps1)
    if "ema_half_life_images" in one:
        assert int(big["ema_half_life_images"]) == pytest.approx(int(one["ema_half_life_images"]), rel=1e-3)
        # in epochs too, where an epoch at 256 GPUs is shorter by the images each rank's last batch drops
        shorter = (steps1 * g1) / (steps256 * g256)
        assert float(big["ema_half_life_epochs"]) == pytest.approx(float(one["ema_half_life_epochs"]) * shorter,
                                                                   abs=1 / steps256)


def test_r50_at_256_gpus_is_refused_in_one_line_with_what_to_add(capsys):
    assert plan_command.main(["--config", "configs/r50.yaml", *BIG]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr 25.6" in err and "global batch 65536" in err
    assert "--model.schedule.warmup_epochs 5 --model.schedule.warmup_mode linear" in err
    assert plan_command.main(["--config", "configs/r50.yaml", *BIG, *GRADUAL]) == 0
    out = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert out["steps_per_epoch"] == "19" and out["epochs"] == "90" and out["warmup_epochs"] == "5"
    assert out["milestones_epochs"] == "[30, 60]" and out["lr"].startswith("25.6 ")
    assert plan_command.main(["--config", "configs/r50.yaml", "--trainer.devices", "8"]) == 0  # 8x: as Goyal's 2k


def test_torchvision_recipe_keeps_its_five_epoch_warmup_and_16_epoch_ema_at_any_scale(capsys):
    for scale in (ONE_GPU, ["--trainer.devices", "8"], BIG):
        plan = planned("--config", "configs/recipes/torchvision_r50.yaml", *scale)
        assert float(plan["warmup_epochs"]) == pytest.approx(5, abs=0.03), plan
        assert float(plan["ema_half_life_epochs"]) == pytest.approx(16.26, abs=0.05), plan
        assert plan["epochs"] == "600"


def test_plan_counts_the_training_folder_and_takes_a_size_hint(imagewoof_root, tmp_path):
    args = ["--config", "configs/finetune/imagewoof_r18.yaml", "--data.init_args.root", str(imagewoof_root)]
    plan = planned(*args)
    assert plan["train_images"].startswith("800: counted in") and plan["steps_per_epoch"] == "12"
    assert plan["warmup_steps"] == "24" and plan["epochs"] == "15"
    hinted = plan_command.plan(parse_fit_config(args), 6400)
    assert hinted["steps_per_epoch"] == 100 and hinted["warmup_steps"] == 200
    repeated = planned(*args, "--data.augment.repeated_augmentation", "2")  # all_repeats: each image twice an epoch
    assert repeated["steps_per_epoch"] == "25"
    assert planned(*args, "--data.augment.repeated_augmentation", "2", "--data.augment.repeated_augmentation_epoch",
                   "dataset_size")["steps_per_epoch"] == "12"


def test_plan_takes_exactly_fits_arguments_and_names_a_bad_one(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["plan", "--config", "configs/r50.yaml", "--trainer.max_step", "3"])
    assert stop.value.code == 2
    assert "--trainer.max_steps" in capsys.readouterr().err
    assert plan_command.main(["--config", "configs/r50.yaml", "--ckpt_path", "auto",
                              "--data.train_size_hint", "2560"]) == 0
    out = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert out["steps_per_epoch"] == "10" and out["total_steps"] == "900"
    assert {"global_batch", "lr", "steps_per_epoch", "total_steps", "epochs", "warmup_epochs", "milestones_epochs",
            "checkpoint_every", "evaluations"} <= set(out)


def test_steps_stated_at_a_batch_are_the_same_images_at_another():
    schedule = ScheduleConfig(kind="step", unit="step", milestones=[32000, 48000], warmup_steps=400,
                              warmup_mode="constant", steps_at_batch=128)
    assert schedule.milestones_at(1024, 48) == [4000, 6000] and schedule.warmup_steps_at(1024, 48) == 50
    assert schedule.milestones_at(128, 390) == [32000, 48000] and schedule.warmup_steps_at(128, 390) == 400
    assert lr_factor(3999, schedule, global_batch=1024) == 1.0 and lr_factor(4000, schedule, global_batch=1024) == 0.1
    assert lr_factor(49, schedule, global_batch=1024) == 0.1 and lr_factor(50, schedule, global_batch=1024) == 1.0
    epochs = ScheduleConfig(kind="cosine", warmup_epochs=2, warmup_mode="linear", warmup_factor=0.0)
    assert lr_factor(390, epochs, total_steps=3900, steps_per_epoch=390) == pytest.approx(0.5)
    assert lr_factor(780, epochs, total_steps=3900, steps_per_epoch=390) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="give one of the two"):
        ScheduleConfig(warmup_steps=10, warmup_epochs=1)


@pytest.mark.parametrize("factor", [1.0, 1 / 8, 1 / 64, 4.0])
def test_ema_at_another_batch_keeps_its_half_life_in_images(factor):
    stated = EMAConfig(decay=0.99891, update_every_n_steps=32, update_starting_at_step=640, warmup_power=0.75)
    scaled = ema_at_scale(stated, factor)
    assert half_life_steps(scaled) == pytest.approx(half_life_steps(stated) * factor, rel=1e-9)
    assert scaled.update_every_n_steps == max(1, round(32 * factor))
    assert scaled.update_starting_at_step == round(640 * factor)
    # the ramp's time scale, in stated steps, is unchanged
    assert scaled.warmup_gamma * scaled.update_every_n_steps / factor == pytest.approx(32)


def test_the_plan_is_what_fit_does(repo_root, cifar_root, tmp_path):
    """A real fit at global batch 16 (8 x 2 accumulated) of a schedule stated at batch 32: the plan's
    total steps, warm-up and lr are the run's."""
    run_dir = tmp_path / "run"
    args = ["--config", "configs/cifar10/resnet20.yaml", "--config", "configs/trainer/cpu.yaml",
            "--data.root", str(cifar_root), "--data.subset", "64", "--data.batch_size", "8",
            "--trainer.accumulate_grad_batches", "2", "--model.width", "0.25",
            "--model.schedule.kind", "cosine", "--model.schedule.steps_at_batch", "32",
            "--model.schedule.warmup_epochs", "1", "--model.schedule.warmup_mode", "linear",
            "--model.schedule.warmup_factor", "0.1", "--model.optimizer.reference_batch", "16",
            "--trainer.max_steps", "6", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", "--run_dir", str(run_dir)]
    plan = plan_command.plan(parse_fit_config(args))
    assert plan["total_steps"] == 12 and plan["steps_per_epoch"] == 4 and plan["warmup_steps"] == 4
    main(["fit", *args])
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lrs = {int(r["step"]): float(r["lr"]) for r in rows if r.get("lr")}
    assert max(lrs) == plan["total_steps"] - 1
    schedule = ScheduleConfig(kind="cosine", steps_at_batch=32, warmup_epochs=1, warmup_mode="linear",
                              warmup_factor=0.1)
    for step, lr in lrs.items():
        expected = 0.1 * lr_factor(step, schedule, plan["total_steps"], plan["steps_per_epoch"], 16)
        assert lr == pytest.approx(expected, rel=1e-6), (step, lr, expected)
    assert not math.isnan(lrs[0])
