"""What a new user meets first: ``--help`` on one screen per command, ``--version`` and ``--help``
without importing torch, a misspelt command, where an evaluation writes (the README's set-up notes:
test_docs.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from fit_helpers import exit_of

from resnet_lit.runs.cli import main
from resnet_lit.runs.entry import cli_args

CIFAR = ["--config", "configs/cifar10/resnet20.yaml", "--config", "configs/trainer/cpu.yaml"]
COMMANDS = ("fit", "validate", "test", "predict")


@pytest.fixture(autouse=True)
def _in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # configs are given relative to the project's root, as in the README


def _exit(args: list[str], capsys) -> tuple[int | None, str, str]:
    return exit_of(main, args, capsys)


# ----------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_is_one_screen_by_group(command, capsys):
    code, out, _ = _exit([command, "--help"], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) <= 80 and max(len(line) for line in lines) <= 100, len(lines)
    assert lines[0].startswith(f"resnet-lit {command}: ")  # what the command does, first
    groups = ("config", "run directory", "data", "trainer") + (("model", "resume") if command == "fit" else ())
    for group in groups:
        assert re.search(rf"^{group}\b", out, flags=re.M), group
    assert "--help full" in out and "--data.help CIFARDataModule" in out  # how to see everything
    assert "--ckpt_path last" in out and "usage:" not in out.split("every option", 1)[1]


def test_fit_help_documents_auto_and_full_help_lists_every_option(capsys):
    _, short, _ = _exit(["fit", "--help"], capsys)
    assert "--ckpt_path auto" in short and "fresh start" in short
    code, full, _ = _exit(["fit", "--help", "full"], capsys)
    assert code == 0 and len(full.splitlines()) > 500  # LightningCLI's full list, untouched
    for option in ("--trainer.gradient_clip_val", "--model.arch", "--model.schedule.milestones", "--data.help",
                   "--last_checkpoint.every_n_train_steps", "--callbacks_off", "--print_config"):
        assert option in full, option
    ckpt_help = full.split("\n  --ckpt_path CKPT_PATH\n", 1)[1].split("\n  --", 1)[0]
    assert "auto" in ckpt_help and "last" in ckpt_help and "registry" not in ckpt_help, ckpt_help


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_the_short_help_is_a_real_option(command, capsys):
    _, short, _ = _exit([command, "--help"], capsys)
    _, full, _ = _exit([command, "--help", "full"], capsys)
    for module in ("CIFARDataModule", "ImageNetDataModule"):  # the DataModule's options are listed per class
        full += _exit([command, "--data.help", module], capsys)[1]
    for flag in set(re.findall(r"^  (--[\w.]+)", short, flags=re.M)) - {"--help"}:
        if not flag.endswith(".help"):
            assert re.search(rf"^\s+(-\w \w+, )?{re.escape(flag)}\b", full, flags=re.M), flag


def _imported_by(args: list[str]) -> tuple[str, set[str]]:
    code = ("import sys\nfrom resnet_lit.runs.entry import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "sys.stderr.write(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'lightning', 'jsonargparse', 'torchvision'))))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, set(done.stderr.split())


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["fit", "--help"], ["predict", "-h"]])
def test_version_and_help_import_neither_torch_nor_lightning(args):
    """The console script's entry point answers these without the seconds torch takes to import
    (docs/benchmarks.md has the times)."""
    out, imported = _imported_by(args)
    assert out.startswith("resnet-lit ") and not imported, imported


def test_the_console_script_and_python_dash_m_use_the_light_entry_point(repo_root):
    pyproject = (repo_root / "pyproject.toml").read_text()
    assert re.search(r'^resnet-lit = "resnet_lit\.runs\.entry:main"', pyproject, flags=re.M)
    assert "resnet_lit.runs.entry import main" in (repo_root / "src/resnet_lit/__main__.py").read_text()


def test_a_misspelt_command_gets_a_suggestion(capsys):
    code, _, err = _exit(["fitt", *CIFAR], capsys)
    assert code == 2 and "'fitt' is not a command: did you mean fit?" in err and len(err.splitlines()) == 1
    assert "fit, validate, test, predict" in err



def test_an_evaluation_writes_into_its_checkpoints_run_directory(tmp_path, capsys):
    run = tmp_path / "elsewhere" / "my_run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")
    for command in ("validate", "test", "predict"):
        assert cli_args([command, *CIFAR, "--ckpt_path", str(ckpt)])[-2:] == ["--run_dir", str(run)]
        assert cli_args([command, *CIFAR, f"--ckpt_path={ckpt}", "--run_dir", "x"])[-1] == "x"  # given: kept
    loose = tmp_path / "model.ckpt"
    loose.write_bytes(b"")
    assert "--run_dir" not in cli_args(["predict", *CIFAR, "--ckpt_path", str(loose)])  # not a run's: the config's
    assert "--run_dir" not in cli_args(["fit", *CIFAR, "--ckpt_path", str(ckpt)])  # fit resumes its own run_dir
    # as the parser sees it: the recipe's runs/cifar10/resnet20 (below the current directory) is replaced
    code, out, _ = _exit(["predict", *CIFAR, "--ckpt_path", str(ckpt), "--print_config"], capsys)
    assert code == 0 and re.search(rf"^run_dir: {re.escape(str(run))}$", out, flags=re.M), out[:500]
