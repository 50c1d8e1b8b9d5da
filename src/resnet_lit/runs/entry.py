"""The ``resnet-lit`` command's entry point (pyproject's console script and ``python -m resnet_lit``).

Importing torch and Lightning takes seconds on a small CPU (docs/benchmarks.md), so what needs no
model and no Trainer is answered here without them: ``--version``, ``--help``, ``COMMAND --help``
(one screen, ``runs.help``), a missing or misspelt command. A tool (export, report, ...) is handed its
arguments and imports what it needs; fit / validate / test / predict go on to ``runs.cli.main``,
which also calls :func:`answer_without_lightning` first, so tests that drive it in-process see the
same behaviour.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import NoReturn

from resnet_lit.runs import help as help_text
from resnet_lit.runs.exit_codes import OK, USAGE
from resnet_lit.runs.flag_errors import suggest

# Commands that are not Trainer entry points: name -> "module:function(argv) -> int".
TOOLS = {
    "export": "resnet_lit.commands.export:main",
    "report": "resnet_lit.commands.report:main",
    "imagenet-val": "resnet_lit.commands.imagenet_val:main",
    "shards": "resnet_lit.commands.shards:main",
    "plan": "resnet_lit.commands.plan:main",
}
SUBCOMMANDS = ("fit", "validate", "test", "predict")
EVALUATIONS = ("validate", "test", "predict")
_HELP = ("--help", "-h")


def usage_error(message: str) -> NoReturn:
    print(f"resnet-lit: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE)


def _run_tool(name: str, argv: list[str]) -> int:
    module_name, function = TOOLS[name].split(":")
    return int(getattr(importlib.import_module(module_name), function)(argv) or 0)


def wants_full_help(args: list[str]) -> bool:
    """``--help full`` (or ``--help=full``): LightningCLI's full list instead of the one screen."""
    return "--help=full" in args or any(a in _HELP and args[i + 1:i + 2] == ["full"] for i, a in enumerate(args))


def answer_without_lightning(args: list[str]) -> None:
    """Exit with the answer when ``args`` need no Trainer (help, version, a tool, a bad command);
    return when they are a Trainer command for ``runs.cli``."""
    if args[:1] in (["--help"], ["-h"]):
        print(help_text.OVERVIEW, end="")
        raise SystemExit(OK)
    if args[:1] in (["--version"], ["-V"]):
        from resnet_lit import __version__

        print(f"resnet-lit {__version__}")
        raise SystemExit(OK)
    if args and args[0] in TOOLS:
        raise SystemExit(_run_tool(args[0], args[1:]))
    if not args or (args[0] not in SUBCOMMANDS and not args[0].startswith("-")):
        listed = f"{', '.join(SUBCOMMANDS)}, or a tool: {', '.join(TOOLS)}"
        if not args:
            usage_error(f"give a command: {listed}. `resnet-lit --help` and `resnet-lit fit --help` list the options.")
        usage_error(f"{args[0]!r} is not a command{suggest(args[0], [*SUBCOMMANDS, *TOOLS])} "
                    f"Give one of {listed} (`resnet-lit --help`).")
    if args[0] in SUBCOMMANDS and any(a in _HELP for a in args) and not wants_full_help(args):
        print(help_text.command_help(args[0]), end="")
        raise SystemExit(OK)


def cli_args(args: list[str]) -> list[str]:
    """The arguments LightningCLI gets: ``--help full`` as its own ``--help``, and an evaluation of a
    run's checkpoint writing into that run's directory unless ``--run_dir`` is given (not into a
    ``runs/...`` folder below wherever the command happens to be started)."""
    if wants_full_help(args):
        args = [a for i, a in enumerate(args) if not (a == "full" and args[i - 1] in _HELP)]
        return ["--help" if a == "--help=full" else a for a in args]
    if args[:1] and args[0] in EVALUATIONS and not _given(args, "--run_dir"):
        ckpt = _given(args, "--ckpt_path")
        if ckpt and Path(ckpt).parent.name == "checkpoints" and Path(ckpt).is_file():
            return [*args, "--run_dir", str(Path(ckpt).parent.parent)]
    return args


def _given(args: list[str], flag: str) -> str | None:
    """The last value given to ``flag`` on the command line (``--flag V`` or ``--flag=V``), if any."""
    values = [a.split("=", 1)[1] if "=" in a else args[i + 1] for i, a in enumerate(args)
              if a.startswith(flag + "=") or (a == flag and i + 1 < len(args))]
    return values[-1] if values else None


def main(args: list[str] | None = None) -> None:
    """``resnet-lit``: answers what it can without torch, then runs ``runs.cli.main``."""
    answer_without_lightning(list(sys.argv[1:] if args is None else args))
    from resnet_lit.runs import cli  # torch, Lightning: seconds of imports, only for a Trainer command

    cli.main(args)
