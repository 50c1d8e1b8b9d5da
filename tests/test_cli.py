"""The resnet-lit command end to end on real CIFAR-10 images: fit, checkpoints, reloads, resume,
loggers, and the messages a new user gets for common mistakes."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fit_helpers import small_fit_args

import resnet_lit
from resnet_lit.checkpointing.contents import FORMAT
from resnet_lit.runs.cli import main
from resnet_lit.training.classifier import ImageClassifier

CPU = ["--config", "configs/trainer/cpu.yaml"]


@pytest.fixture(autouse=True)
def _in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # configs are given relative to the project's root, as in the README


@pytest.fixture(scope="module")
def cache_dir(shared_decode_cache) -> Path:
    return shared_decode_cache


def fit_args(run_dir: Path, cache_dir: Path, *extra: str, steps: int = 6, subset: int = 192) -> list[str]:
    """The small real fit, in-process: 192 images / 32 = 6 steps an epoch, 2 validation batches."""
    return ["fit", *small_fit_args(run_dir, subset=subset, steps=steps, cache_dir=cache_dir,
                                   extra=["--trainer.limit_val_batches", "2", *extra])]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir, repo_root) -> Path:
    """One short real fit shared by the tests that inspect its outputs."""
    run_dir = tmp_path_factory.mktemp("runs") / "r20"
    os.chdir(repo_root)
    main(fit_args(run_dir, cache_dir))
    return run_dir


def test_fit_writes_config_metrics_and_checkpoints(trained_run):
    assert (trained_run / "config.yaml").is_file()
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["model"]["arch"] == "resnet20"
    hparams = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=True)["hyper_parameters"]
    assert hparams["num_classes"] == 10  # linked from the DataModule
    assert hparams["class_names"][:3] == ["airplane", "automobile", "bird"]
    rows = read_metrics(trained_run)
    assert {"epoch", "step", "train/loss", "val/error", "train/error"} <= set(rows[0])
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 6 and all(0 < v < 10 for v in losses)
    val_errors = [float(r["val/error"]) for r in rows if r.get("val/error")]
    assert val_errors and all(0 <= v <= 100 for v in val_errors)
    # the epoch's training error so far, every logged step; at the epoch's last step, the epoch's figure
    running = [float(r["train/error_running"]) for r in rows if r.get("train/error_running")]
    epoch_error = [float(r["train/error"]) for r in rows if r.get("train/error")]
    assert len(running) == 6 and all(0 <= v <= 100 for v in running) and len(epoch_error) == 1
    assert running[-1] == pytest.approx(epoch_error[0], abs=1e-4)
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((trained_run / "checkpoints").glob("best-*.ckpt"))) == 1


def test_checkpoint_reloads_in_a_fresh_process_with_identical_logits(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    torch.manual_seed(0)
    batch = torch.randn(4, 3, 32, 32)
    torch.save(batch, tmp_path / "batch.pt")
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    with torch.no_grad():
        expected = model(batch)
    script = (
        "import sys, torch\n"
        "from resnet_lit.training.classifier import ImageClassifier\n"
        "m = ImageClassifier.load_from_checkpoint(sys.argv[1], map_location='cpu').eval()\n"
        "with torch.no_grad():\n"
        "    torch.save(m(torch.load(sys.argv[2])), sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(ckpt), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")],
                   check=True)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    # What the weights are travels with them, for loaders that never build the LightningModule.
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["resnet_lit"]["arch_spec"]["name"] == "resnet20"
    assert raw["resnet_lit"]["arch_spec"]["shortcut"] == "A"
    assert (raw["resnet_lit"]["version"], raw["resnet_lit"]["format"]) == (resnet_lit.__version__, FORMAT)


def test_validate_and_test_from_checkpoint(trained_run, cache_dir, capsys):
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    common = ["--config", "configs/cifar10/resnet20.yaml", *CPU, "--data.subset", "64", "--data.cache_dir",
              str(cache_dir),
              "--run_dir", str(trained_run), "--ckpt_path", ckpt]
    main(["validate", *common])
    main(["test", *common])
    out = capsys.readouterr().out
    assert "val/error" in out and "test/error" in out
    # evaluation logs beside the training run and leaves its metrics alone
    assert any(r.get("val/error") for r in read_metrics(trained_run / "validate"))
    assert any(r.get("test/error") for r in read_metrics(trained_run / "test"))
    assert len([r for r in read_metrics(trained_run) if r.get("train/loss")]) == 6


def test_evaluation_needs_weights_and_takes_init_weights_as_they_are(trained_run, cache_dir, tmp_path, capsys):
    """validate / test without --ckpt_path would measure random weights: refused, naming both ways;
    with --model.init_weights they are what gets evaluated (the same error as from the checkpoint),
    but only if they fit as they are: a re-initialised classifier would measure nothing."""
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    common = ["--config", "configs/cifar10/resnet20.yaml", *CPU, "--data.subset", "64", "--data.cache_dir",
              str(cache_dir)]
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *common, "--run_dir", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "test needs trained weights" in err and "--ckpt_path" in err and "--model.init_weights" in err

    def val_loss(run_dir: Path) -> float:  # continuous, unlike a 64-image error: equal only for equal weights
        return next(float(r["val/loss"]) for r in read_metrics(run_dir / "validate") if r.get("val/loss"))

    main(["validate", *common, "--run_dir", str(tmp_path / "from_ckpt"), "--ckpt_path", ckpt])
    main(["validate", *common, "--run_dir", str(tmp_path / "from_init"), "--model.init_weights", ckpt])
    assert val_loss(tmp_path / "from_init") == pytest.approx(val_loss(tmp_path / "from_ckpt"), rel=1e-6)
    capsys.readouterr()
    from resnet_lit.models import create_model

    torch.save(create_model("resnet20", num_classes=100).state_dict(), other := tmp_path / "cifar100_r20.pth")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *common, "--run_dir", str(tmp_path / "other_head"), "--model.init_weights", str(other)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "fc.weight file [100, 64] vs model [10, 64]" in err and "must fit the model as they are" in err
    assert "Traceback" not in err

def test_resume_continues_the_schedule_where_it_stopped_and_lists_what_it_changes(trained_run, cache_dir, tmp_path,
                                                                                   capsys, caplog):
    """One resume of the shared run (with an evaluation batch changed on purpose): it says what it
    resumes from and what it changes, then continues the schedule and the logs where they stopped."""
    run_dir = tmp_path / "resumed"
    import shutil

    shutil.copytree(trained_run, run_dir)
    main(fit_args(run_dir, cache_dir, "--ckpt_path", "last", "--data.eval_batch_size", "48", steps=10))
    said = capsys.readouterr().out + caplog.text
    line = next(line for line in said.splitlines() if "resuming" in line)
    assert f"resuming --ckpt_path last: {run_dir / 'checkpoints' / 'last.ckpt'} (saved at epoch 0, step 6)" in line
    assert "changed: data.eval_batch_size" in line and "-> 48" in line and "trainer.max_steps 6 -> 10" in line
    raw = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert raw["global_step"] == 10
    rows = read_metrics(run_dir)
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == list(range(10))  # 6 rows from the first run kept, 4 added: no step twice, none skipped
    lr_steps = [int(r["step"]) for r in rows if r.get("lr")]
    assert lr_steps == list(range(10))  # one lr column: both parameter groups have the same lr
    assert not [k for k in rows[0] if k.startswith("lr") and k != "lr"]
    epochs = [int(r["epoch"]) for r in rows if r.get("train/error")]
    assert epochs == [0, 1]  # each epoch's training error once, none made up by the resume
    loss_epochs = [int(r["epoch"]) for r in rows if r.get("train/loss")]
    assert loss_epochs == [0] * 6 + [1] * 4  # 192 images / 32 = 6 steps an epoch: the resume starts epoch 1
    scheduler = raw["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 10  # the LambdaLR counts on from the checkpoint


def test_resume_from_a_checkpoint_written_in_the_validation_at_an_epoch_end(cache_dir, tmp_path):
    # Saved on validation end (not on train epoch end): after epoch 0's last batch, before the
    # module logs and resets the epoch's training counts. Resumed from it, Lightning replays
    # epoch 0's end; that must not log a second train/error row nor lose the val/error row.
    run_dir = tmp_path / "run"
    on_val_end = ("--checkpoint.save_on_train_epoch_end", "false")
    main(fit_args(run_dir, cache_dir, *on_val_end, steps=2, subset=64))  # one epoch of 64 / 32 = 2 steps
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    raw = torch.load(best, map_location="cpu", weights_only=True)
    assert raw["global_step"] == 2 and "train_counts" not in raw["resnet_lit"]
    main(fit_args(run_dir, cache_dir, *on_val_end, "--ckpt_path", str(best), steps=4, subset=64))
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows if r.get("train/error")] == [0, 1]
    assert [int(r["epoch"]) for r in rows if r.get("val/error")] == [0, 1]


def test_a_resume_with_flags_that_change_the_training_is_refused(trained_run, cache_dir, tmp_path, capsys):
    """Lightning's CLI would take the checkpoint's arch and lr over the command's and say nothing; here
    the command stops, naming each differing key with both values and the way to a new run."""
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path / "other", cache_dir, "--ckpt_path", ckpt, "--model.arch", "resnet56",
                      "--model.optimizer.lr", "0.05", steps=10))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--ckpt_path {ckpt} was trained otherwise" in err
    assert "model.arch: checkpoint resnet20, this command resnet56" in err
    assert "model.optimizer.lr: checkpoint 0.1, this command 0.05" in err
    assert f"--model.init_weights {ckpt} --run_dir NEW_DIR" in err
    assert not (tmp_path / "other" / "checkpoints").exists()  # nothing trained


def test_evaluating_a_checkpoint_of_another_net_or_other_classes_is_refused(trained_run, cache_dir, tmp_path, capsys):
    """test / validate / predict check what the weights are: the network and its classes (a fine-tune's
    checkpoint given to the CIFAR-10 config would otherwise report test/error=100 without a word)."""
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    common = ["--config", "configs/cifar10/resnet20.yaml", *CPU, "--data.subset", "64", "--data.cache_dir",
              str(cache_dir), "--run_dir", str(tmp_path / "eval")]
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *common, "--model.arch", "resnet32", "--ckpt_path", str(ckpt)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "model.arch: checkpoint resnet20, this command resnet32" in err and "config.yaml" in err
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["hyper_parameters"]["class_names"] = [f"breed{i}" for i in range(10)]  # another dataset's ten classes
    torch.save(raw, other := tmp_path / "other_classes.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *common, "--ckpt_path", str(other)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "model.class_names: checkpoint [breed0, breed1, breed2, ... (10 items)], this command [airplane" in err


def test_a_second_fit_into_the_same_run_dir_is_refused(trained_run, cache_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(trained_run, cache_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "last.ckpt exists" in err and "--ckpt_path last" in err and "--run_dir" in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.no_such_option", "1"], "no_such_option"),
        (["--model.width", "wide"], "width"),
        (["--trainer.max_steps", "many"], "max_steps"),
        (["--config", "configs/cifar10/resnet21.yaml"], "configs/cifar10/resnet21.yaml: no such file"),
        (["-c", "configs/cifar10/resnet21.yaml"], "-c configs/cifar10/resnet21.yaml: no such file"),
        (["--model.arch", "resnet21"], "resnet21"),
    ],
)
def test_bad_input_exits_with_a_short_message_naming_it(args, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/cifar10/resnet20.yaml", *CPU, "--run_dir", str(tmp_path / "bad"), *args])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert len(err.splitlines()) < 25  # a paragraph, not a page of usage


@pytest.mark.parametrize("args", [[], ["fitt", "--config", "configs/cifar10/resnet20.yaml"]])
def test_a_missing_or_misspelt_command_lists_the_commands(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "fit, validate, test, predict" in err and "export, report, imagenet-val" in err


def test_missing_checkpoint_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--config", "configs/cifar10/resnet20.yaml", *CPU, "--run_dir", str(tmp_path), "--ckpt_path",
              str(tmp_path / "nope.ckpt")])
    assert "nope.ckpt: no such file" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_cli(repo_root):
    done = subprocess.run([sys.executable, "-m", "resnet_lit", "fit", "--help"], capture_output=True, text=True,
                          cwd=repo_root)
    assert done.returncode == 0
    assert "--model.arch" in done.stdout and "--run_dir" in done.stdout


def test_wandb_offline_run_and_resume_keeps_the_run_id(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "wb"
    main(fit_args(run_dir, cache_dir, "--config", "configs/logger/wandb.yaml", steps=3))
    first = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(first) == 1 and any(first[0].glob("*.wandb"))  # a real offline run, syncable with `wandb sync`
    run_id = first[0].name.rsplit("-", 1)[-1]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)["wandb_run_id"] == run_id
    assert (run_dir / "metrics.csv").is_file()  # CSV beside wandb, for `resnet-lit report`
    main(fit_args(run_dir, cache_dir, "--config", "configs/logger/wandb.yaml", "--ckpt_path", "last", steps=5))
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))  # one folder per start (same second: shared)
    assert {r.name.rsplit("-", 1)[-1] for r in runs} == {run_id}  # a new id would add a folder
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 5 and resumed["wandb_run_id"] == run_id
    import wandb

    wandb.teardown()  # stop this process's wandb service: later tests' subprocesses must not attach to it
    os.environ.pop("WANDB_SERVICE", None)


@pytest.mark.slow
def test_resnet20_overfits_128_real_images(cache_dir, tmp_path):
    """The whole loop learns: data, augmentation, model, loss, optimiser, schedule and metrics
    together drive the training error of a half-width ResNet-20 on 128 real CIFAR-10 images under 5 %
    in 160 steps (about 25 s on 2 cores; 1.6 % on the run that set it)."""
    run_dir = tmp_path / "overfit"
    main([
        "fit", "--config", "configs/cifar10/resnet20.yaml", *CPU,
        "--data.subset", "128", "--data.pad", "0", "--data.batch_size", "32", "--data.cache_dir", str(cache_dir),
        "--model.width", "0.5", "--model.optimizer.lr", "0.2", "--model.schedule.kind", "cosine",
        "--trainer.max_steps", "-1", "--trainer.max_epochs", "40", "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "4", "--run_dir", str(run_dir),
    ])
    errors = [float(r["train/error"]) for r in read_metrics(run_dir) if r.get("train/error")]
    assert len(errors) == 40
    assert errors[0] > 50  # it starts at chance level ...
    assert errors[-1] < 5  # ... and ends having learnt every image


def test_a_gpu_recipe_on_a_cpu_says_what_to_add(cache_dir, tmp_path, capsys, monkeypatch):
    """The README's first command on a machine without a GPU: it runs, and says how to run faster."""
    monkeypatch.setattr("resnet_lit.runs.console._cpu_has_bf16", lambda: False)  # as on a CPU without bf16 instructions
    no_steps = ["--data.subset", "64", "--data.cache_dir", str(cache_dir), "--trainer.max_steps", "0",
                "--model.schedule.steps_at_batch", "null",
                "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"]
    main(["fit", "--config", "configs/cifar10/resnet20.yaml", "--trainer.accelerator", "cpu", *no_steps,
          "--run_dir", str(tmp_path / "gpu_recipe")])
    err = capsys.readouterr().err
    assert "note: training on the CPU" in err and "compiled" in err and "bf16-mixed" in err
    assert "--config configs/trainer/cpu.yaml" in err
    main(["fit", "--config", "configs/cifar10/resnet20.yaml", *CPU, *no_steps, "--run_dir",
          str(tmp_path / "cpu_overlay")])
    assert "note: training on the CPU" not in capsys.readouterr().err


def test_init_weights_that_cannot_start_the_run_is_one_message(cache_dir, tmp_path, capsys):
    """The weights are read when fit starts, after the parser: a missing file still gets one message
    naming the flag and the path, no traceback, and no checkpoint that would block the next try."""
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(run_dir, cache_dir, "--model.init_weights", str(tmp_path / "nope.pth")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--model.init_weights {tmp_path / 'nope.pth'}: weights file not found" in err
    assert "--model.init_weights null" in err and "Traceback" not in err
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag_prints_the_package_version(flag, capsys):
    from resnet_lit import __version__

    with pytest.raises(SystemExit) as exit_info:
        main([flag])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"resnet-lit {__version__}\n"


def test_a_short_run_and_its_resume_print_no_lightning_noise(repo_root, cache_dir, tmp_path):
    """What a user reads on stderr: the model line, and none of Lightning's messages that are noise for
    our runs (runs/console.py lists them). Stopped before the first validation, then resumed."""
    from fit_helpers import run_fit, small_fit_args

    run_dir = tmp_path / "run"
    args = small_fit_args(run_dir, subset=128, steps=2, cache_dir=cache_dir)
    first = run_fit(repo_root, args)
    again = run_fit(repo_root, [*small_fit_args(run_dir, subset=128, steps=3, cache_dir=cache_dir),
                                "--ckpt_path", "last"])
    for done in (first, again):
        assert done.returncode == 0, done.stderr[-3000:]
        output = done.stdout + done.stderr
        for noise in ("srun", "Tip:", "LeafSpec", "FLOPs", "could not find the monitored key",
                      "exists and is not empty"):
            assert noise not in output, f"{noise!r} printed:\n{output[-3000:]}"
    assert "resnet20: 0.27 M parameters, 40.55 M multiply-adds per 3x32x32 image" in first.stdout + first.stderr


@pytest.mark.parametrize(
    "args, line",
    [
        (["--data.batch_size", "abc"], "--data.batch_size abc: expected int"),
        (["--data.eval_batch_size=abc"], "--data.eval_batch_size abc: expected int or null"),
        (["--trainer.max_steps", "many"], "--trainer.max_steps many: expected int"),
        (["--model.freeze", "stem2"], "--model.freeze stem2: expected one of none, stem, stage1, stage2, stage3, "
                                      "stage4, backbone"),
        (["--model.compile", "maybe"], "--model.compile maybe: expected bool or a mapping (key: value)"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_key_value_and_type(args, line, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/cifar10/resnet20.yaml", *CPU, "--run_dir", str(tmp_path / "bad"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"resnet-lit: error: {line} (`resnet-lit fit --help` lists every option)"]


def test_default_root_dir_is_the_run_dir_or_refused_naming_run_dir(cache_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # the recipe sets run_dir: two directories, one line
        main(["fit", "--config", "configs/cifar10/resnet20.yaml", *CPU, "--trainer.default_root_dir",
              str(tmp_path / "elsewhere")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"resnet-lit: error: --trainer.default_root_dir {tmp_path / 'elsewhere'}: a run writes everything into its "
        f"--run_dir (here runs/cifar10/resnet20); use --run_dir {tmp_path / 'elsewhere'} instead."]
    run_dir = tmp_path / "root"  # without a run_dir anywhere (--run_dir null), it is the run directory
    main([*fit_args(run_dir, cache_dir, steps=2), "--run_dir", "null", "--trainer.default_root_dir", str(run_dir)])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "metrics.csv").is_file()


def test_a_start_that_fails_leaves_no_run_directory_behind(tmp_path, capsys):
    run_dir = tmp_path / "never"
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/finetune/imagewoof_r18.yaml", *CPU, "--data.root", str(tmp_path / "nope"),
              "--run_dir", str(run_dir)])
    err = capsys.readouterr().err
    assert "train/ and val/ (class folders) or train.tar.gz and val.tar.gz" in err
    assert not run_dir.exists()  # neither fit.lock nor config.yaml left: the next start is a first start


def test_top_level_help_fits_one_screen_and_its_examples_name_real_files(capsys, repo_root):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) <= 40 and max(len(line) for line in lines) <= 100
    for name in ("fit", "validate", "test", "predict", "export", "report", "imagenet-val"):
        assert f"  {name} " in out
    for config in re.findall(r"configs/[\w/]+\.yaml", out):
        assert (repo_root / config).is_file(), config


def test_optional_forced_callbacks_can_be_switched_off(cache_dir, tmp_path, capsys):
    run_dir = tmp_path / "off"
    main(fit_args(run_dir, cache_dir, "--callbacks_off", "[throughput, lr_monitor, checkpoint]", steps=2))
    columns = set(read_metrics(run_dir)[0])
    assert "train/loss" in columns and not {c for c in columns if c == "lr" or c.startswith(("lr/", "train/images"))}
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]  # no best-*.ckpt; resume kept
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["callbacks_off"] == [
        "throughput", "lr_monitor", "checkpoint"]
    with pytest.raises(SystemExit):  # the callbacks that make resume exact stay on
        main(fit_args(tmp_path / "x", cache_dir, "--callbacks_off", "[rng_state]"))
    assert "--callbacks_off [rng_state]: expected one of checkpoint, throughput, lr_monitor, predictions" in \
        capsys.readouterr().err
