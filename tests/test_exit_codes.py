"""The exit statuses: README's table, the docstring of runs/cli.py and runs/exit_codes.py say the same,
and the code exits only with those constants (no bare numbers that could drift from the table)."""

from __future__ import annotations

import ast
import re
import signal
from pathlib import Path

from resnet_lit.runs import exit_codes

SRC = Path(__file__).resolve().parents[1] / "src" / "resnet_lit"
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_table() -> dict[int, str]:
    section = README.read_text().split("### Exit status", 1)[1].split("\n#", 1)[0]
    return {int(status): meaning for status, meaning in re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.M)}


def _cli_docstring_table() -> dict[int, str]:
    doc = ast.get_docstring(ast.parse((SRC / "runs" / "cli.py").read_text())) or ""
    section = doc.split("Exit status", 1)[1]
    return {int(status): meaning for status, meaning in re.findall(r"^    (\d+)\s{2,}(.+)$", section, flags=re.M)}


def test_the_constants_are_the_documented_numbers() -> None:
    assert (exit_codes.OK, exit_codes.RUN_FAILED, exit_codes.USAGE) == (0, 1, 2)
    assert {exit_codes.stopped_by(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)} == {130, 143, 138}


def test_readme_and_cli_docstring_state_the_same_table_as_the_code() -> None:
    code = exit_codes.table()
    for documented in (_readme_table(), _cli_docstring_table()):
        assert sorted(documented) == sorted(code)
        for status, meaning in documented.items():
            assert meaning.startswith(code[status]), (status, meaning, code[status])


def test_a_signal_stop_exits_with_the_tables_status() -> None:
    from resnet_lit.runs import interrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        interrupt._stopped_by[:] = [signum]
        assert interrupt.exit_status() == exit_codes.stopped_by(signum)
    interrupt._stopped_by.clear()
    assert interrupt.exit_status() == 143  # Lightning's own SIGTERM path


def test_commands_exit_with_the_constants_not_bare_numbers() -> None:
    """SystemExit(...), os._exit(...) and a command's `return N` name a constant of runs/exit_codes.py."""
    bare = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            value = None
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "SystemExit", "_exit", "exit") and node.args:
                value = node.args[0]
            if isinstance(node, ast.FunctionDef) and node.name == "main" and path.parent.name == "commands":
                bare += [f"{path.relative_to(SRC)}:{r.lineno}" for r in ast.walk(node)
                         if isinstance(r, ast.Return) and isinstance(r.value, ast.Constant)]
            if isinstance(value, ast.Constant) or (isinstance(value, ast.BinOp) and any(
                    isinstance(side, ast.Constant) for side in (value.left, value.right))):
                bare.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not bare, bare
