"""Broken inputs get one line that names them, and no traceback: checkpoint and weights files that are
cut short, empty or not checkpoints, in every place one is read; a newer resnet-lit's checkpoint; a
download without internet; a misspelt or abbreviated flag. Each command runs on real files through the
``resnet-lit`` console script's own entry point (``runs.entry.main``): in-process, its exit status and
what it prints captured from the file descriptors, so that a traceback or a second line would show; a
few (a cut checkpoint given to fit, the download, export) as a user runs them, in a fresh process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fit_helpers import RECIPE, fit_env

import resnet_lit
from resnet_lit.checkpointing.contents import FORMAT
from resnet_lit.checkpointing.readable import CheckpointFileError
from resnet_lit.checkpointing.weights import load_state_dict_file
from resnet_lit.commands.export import build_from_file
from resnet_lit.commands.export import main as export_main
from resnet_lit.models import create_model
from resnet_lit.runs.cli import main
from resnet_lit.training.classifier import ImageClassifier

OLD = Path(__file__).parent / "fixtures" / "resnet20_step02.ckpt"  # a real quarter-width ResNet-20 checkpoint, step 2
CONFIGS = [item for config in RECIPE for item in ("--config", config)]


def resnet_lit_cli(repo_root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``resnet-lit ARGS`` in a fresh process, as a user runs it."""
    command = [str(Path(sys.executable).parent / "resnet-lit"), *args]
    return subprocess.run(command, cwd=repo_root, env=env or fit_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture
def resnet_lit_here(repo_root: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``resnet-lit ARGS`` in this process through the console script's entry point (seconds of imports
    saved a command): its exit status and both streams as a finished process would give them."""
    from resnet_lit.runs.entry import main as entry_main

    def run(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.chdir(repo_root)
        capfd.readouterr()
        code = 0
        try:
            entry_main(list(args))
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["resnet-lit", *args], code, out, err)

    return run


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if "error:" in line]


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    lines = error_lines(done)
    assert len(lines) == 1, done.stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def broken(tmp_path: Path, kind: str) -> Path:
    """A real file of the given kind: ``head -c 100000`` of a checkpoint, an empty file, a text file."""
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(OLD.read_bytes()[:100_000])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("epoch,step,val/error\n0,390,31.2\n")
    return path


WHAT = {"truncated": "is cut short or damaged (100000 bytes", "empty": "is empty (0 bytes)",
        "text": "is not a PyTorch checkpoint or weights file"}


@pytest.mark.parametrize(
    "command, kind",
    [("fit", "truncated"), ("test", "empty"), ("validate", "text"), ("predict", "truncated"), ("last", "truncated")],
)
def test_a_broken_checkpoint_is_named_in_one_line(command: str, kind: str, repo_root: Path, tmp_path: Path,
                                                  resnet_lit_here) -> None:
    path = broken(tmp_path, kind)
    run_dir = tmp_path / "run"
    ckpt = str(path)
    if command == "last":  # --ckpt_path last finds the run's own last.ckpt, cut short
        (run_dir / "checkpoints").mkdir(parents=True)
        ckpt, path = "last", shutil.copy(path, run_dir / "checkpoints" / "last.ckpt")
        command = "fit"
    args = (command, *CONFIGS, "--run_dir", str(run_dir), "--ckpt_path", ckpt)
    fresh = (command, kind) == ("fit", "truncated") and ckpt != "last"  # one as a user runs it
    done = resnet_lit_cli(repo_root, *args) if fresh else resnet_lit_here(*args)
    assert_one_line(done, f"--ckpt_path {path} {WHAT[kind]}", "Use an intact copy")


def test_weights_only_given_as_a_checkpoint_point_to_init_weights(tmp_path: Path, resnet_lit_here) -> None:
    raw = torch.load(OLD, map_location="cpu", weights_only=True)
    weights = tmp_path / "weights.pt"
    torch.save({k.removeprefix("model."): v for k, v in raw["state_dict"].items()}, weights)
    done = resnet_lit_here("fit", *CONFIGS, "--run_dir", str(tmp_path / "run"), "--ckpt_path", str(weights))
    assert_one_line(done, f"--ckpt_path {weights} holds weights, not a training checkpoint",
                    f"--model.init_weights {weights}")


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_broken_init_weights_are_named_in_one_line(command: str, tmp_path: Path, cifar_root: Path,
                                                   shared_decode_cache: Path, resnet_lit_here) -> None:
    """Read when the run starts (after the data is set up): still one line, and no checkpoint left."""
    path = broken(tmp_path, "truncated")
    run_dir = tmp_path / "run"
    done = resnet_lit_here(command, *CONFIGS, "--run_dir", str(run_dir), "--data.root", str(cifar_root),
                           "--data.subset", "64", "--data.batch_size", "32", "--trainer.max_steps", "1",
                           "--model.schedule.steps_at_batch", "null", "--data.cache_dir", str(shared_decode_cache),
                           "--model.init_weights", str(path))
    assert_one_line(done, f"--model.init_weights: {path} {WHAT['truncated']}")
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


def test_export_names_a_broken_file_in_one_line(repo_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for kind in WHAT:  # in-process, then the truncated file as a user runs it
        path = broken(tmp_path, kind)
        assert export_main([str(path), "--format", "onnx"]) == 2
        err = capsys.readouterr().err
        assert err == f"resnet-lit export: error: {path} {WHAT[kind]}" + err.split(WHAT[kind], 1)[1]
        assert err.count("\n") == 1 and not path.with_suffix(".onnx").exists()
    done = resnet_lit_cli(repo_root, "export", str(path), "--format", "safetensors")
    assert_one_line(done, f"resnet-lit export: error: {path} {WHAT[kind]}")
    assert not path.with_suffix(".safetensors").exists()


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_python_readers_raise_one_line_naming_the_file(kind: str, tmp_path: Path) -> None:
    path = broken(tmp_path, kind)
    for read in (lambda: create_model("resnet20", weights=path), lambda: load_state_dict_file(path)):
        with pytest.raises(CheckpointFileError) as error:
            read()
        assert str(error.value).startswith(f"{path} {WHAT[kind]}") and "\n" not in str(error.value)
    safetensors = tmp_path / "w.safetensors"  # a safetensors file cut short
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1000)}, str(safetensors))
    safetensors.write_bytes(safetensors.read_bytes()[:200])
    with pytest.raises(CheckpointFileError, match="is not a readable safetensors file"):
        load_state_dict_file(safetensors)


# ------------------------------------------------------------------------------------ checkpoint format


def test_checkpoints_record_version_and_format(tmp_path: Path) -> None:
    model = ImageClassifier(arch="resnet20", num_classes=10, width=0.25)
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["resnet_lit"]["version"] == resnet_lit.__version__
    assert checkpoint["resnet_lit"]["format"] == FORMAT
    assert ImageClassifier.load_from_checkpoint(OLD, map_location="cpu").hparams.arch == "resnet20"


def newer_checkpoint(tmp_path: Path) -> Path:
    raw = torch.load(OLD, map_location="cpu", weights_only=True)
    raw["resnet_lit"].update(version="9.0.0", format=FORMAT + 1)
    path = tmp_path / "newer.ckpt"
    torch.save(raw, path)
    return path


def test_a_newer_format_is_refused_in_one_line(tmp_path: Path, resnet_lit_here) -> None:
    path = newer_checkpoint(tmp_path)
    expected = (f"{path} was written by resnet-lit 9.0.0 in checkpoint format {FORMAT + 1}; this resnet-lit "
                f"{resnet_lit.__version__} reads formats up to {FORMAT}. Upgrade resnet-lit")
    done = resnet_lit_here("test", *CONFIGS, "--run_dir", str(tmp_path / "run"), "--ckpt_path", str(path))
    assert_one_line(done, f"--ckpt_path {expected}")
    for read in (lambda: load_state_dict_file(path), lambda: build_from_file(path)):
        with pytest.raises(CheckpointFileError, match="Upgrade resnet-lit"):
            read()
    with pytest.raises(CheckpointFileError, match="this checkpoint was written by resnet-lit 9.0.0"):
        ImageClassifier.load_from_checkpoint(path, map_location="cpu")


# ------------------------------------------------------------------------------------------ download


def test_a_download_without_internet_is_one_line_and_leaves_no_folder(repo_root: Path, tmp_path: Path) -> None:
    """A real failed download: the proxy named in the environment refuses the connection (port 9 of this
    machine), as an offline node does, wherever the test runs."""
    env = {k: v for k, v in fit_env().items() if k.lower() not in ("no_proxy", "all_proxy")}
    env.update(https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    root = tmp_path / "data" / "cifar10"
    done = resnet_lit_cli(repo_root, "fit", *CONFIGS, "--run_dir", str(tmp_path / "run"), "--data.root", str(root),
                          "--data.download", "true", env=env)
    assert_one_line(done, f"could not download cifar10 from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
                    f"into {root}", "train.tar.gz + test.tar.gz", "run without --data.download")
    assert not (tmp_path / "data").exists()  # no empty folder, no lock file, no partial download


# ------------------------------------------------------------------------------------------ flags


def test_an_abbreviated_flag_is_refused_with_the_key_it_abbreviates(tmp_path: Path, resnet_lit_here) -> None:
    """argparse would apply --trainer.max_step to max_steps: refused, naming both."""
    done = resnet_lit_here("fit", *CONFIGS, "--run_dir", str(tmp_path / "run"), "--trainer.max_step", "7")
    assert_one_line(done, "unknown option --trainer.max_step: did you mean --trainer.max_steps?",
                    "`resnet-lit fit --help` lists every option")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["test", "--ckpt_pat", "x.ckpt"], "unknown option --ckpt_pat: did you mean --ckpt_path?"),
        (["fit", "--seed_everythin", "1"], "unknown option --seed_everythin: did you mean --seed_everything?"),
        (["fit", "--model.ach", "resnet20"], "unknown option --model.ach: did you mean --model.arch?"),
        (["fit", "--data.batch", "8"],
         "--data.batch is not an option of CIFARDataModule: did you mean --data.batch_size?"),
        (["fit", "--trainer.max_stepz=7", "--foo", "1"],
         "unknown option --trainer.max_stepz: did you mean --trainer.max_steps?; unknown option --foo ("),
        (["fit", "--config", "{yaml}"],
         "unknown key 'trainer.max_step' in a config file: did you mean trainer.max_steps?"),
    ],
)
def test_misspelt_keys_get_the_nearest_valid_one(args: list[str], expected: str, repo_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo_root)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  max_step: 7\n")
    args = [str(overlay) if a == "{yaml}" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main([args[0], *CONFIGS, "--run_dir", str(tmp_path / "run"), *args[1:]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
