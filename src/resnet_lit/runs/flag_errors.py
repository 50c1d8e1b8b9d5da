"""A misspelt option in one line, with the nearest valid key: ``did you mean --trainer.max_steps?``.

The parsers take no abbreviations (``allow_abbrev=False``: argparse would otherwise apply
``--trainer.max_step 7`` to ``max_steps`` silently), so a misspelt key is always an error, and
``one_line`` turns jsonargparse's message for it into one line with a suggestion from ``difflib``.
Three messages name an unknown key: "unrecognized arguments: --x 1" (a command-line flag),
"Group 'trainer' does not accept option 'x'" or "Subcommand 'fit' does not accept option
'trainer.x'" (a config file) and, for the DataModule (chosen by ``class_path``, so its options are
known only once the class is), "Problem with given class_path 'C': Option 'x' is not accepted".
An option that moved into a dataclass argument of the DataModule (``--data.mixup_alpha``, now
``--data.augment.mixup_alpha``: data/augment.py) is named at its new place (``moved_to``).
A value of the wrong type (jsonargparse's nested "Does not validate against any of the Union
subtypes" report) becomes ``--data.batch_size abc: expected int`` (``type_error_line``). Any
other parser error keeps its message, except a command given no data (``resnet-lit fit`` alone),
which is told to give a config.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path

_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_GROUP = re.compile(r"(Group|Subcommand) '([\w.]+)' does not accept option '([\w.]+)'")
_REQUIRED_DATA = re.compile(r"the following arguments are required: .*?\b(\w+)\.data\b")
_CLASS_OPTION = re.compile(r"Parser key \"(\w+)\".*?class_path '([\w.]+)'.*?Option '([\w.]+)' is not accepted", re.S)


def option_strings(parsers: Iterable[object]) -> list[str]:
    """Every ``--long`` option the parsers (and their argument groups) accept."""
    found = {s for p in parsers for action in getattr(p, "_actions", ()) for s in action.option_strings}
    return sorted(s for s in found if s.startswith("--"))


def suggest(key: str, candidates: Sequence[str]) -> str:
    """``: did you mean X?`` for the nearest candidate, or ``""`` when none is close."""
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
    if not close:  # a key that is a prefix of a valid one (max_step) is close even when short
        close = [c for c in candidates if c.startswith(key)][:1]
    return f": did you mean {close[0]}?" if close else ""


def one_line(message: str, options: Sequence[str], args: Sequence[str]) -> str | None:
    """The one-line form of a parser ``message`` about unknown keys; None for any other message."""
    message = message.strip()
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        flags = [token.split("=", 1)[0] for token in unrecognized.group(1).split() if token.startswith("-")]
        if not flags:
            return None
        return "; ".join(f"unknown option {flag}{suggest(flag, options)}" for flag in flags)
    required = _REQUIRED_DATA.search(message)
    if required:  # `resnet-lit fit` alone: what a new user types first
        return (f"give a config, e.g. `resnet-lit {required.group(1)} --config configs/cifar10/resnet20.yaml` "
                "(configs/ has a recipe for every network), or a DataModule: --data CIFARDataModule --data.root DIR")
    group = _GROUP.search(message)
    if group:  # a key in a config file: "trainer.max_step" (in a group, or of the subcommand itself)
        kind, name, option = group.groups()
        key = f"{name}.{option}" if kind == "Group" else option
        return f"unknown key {key!r} in a config file{suggest(key, [o[2:] for o in options])}"
    option = _CLASS_OPTION.search(message)
    if option:
        key, class_path, name = option.groups()
        valid = _init_parameters(class_path)
        given = next((a.split("=", 1)[0] for a in args if a.startswith(f"--{key}.") and
                      a.split("=", 1)[0].rsplit(".", 1)[-1] == name), None)
        short = class_path.rsplit(".", 1)[-1]
        home = moved_to(class_path, name)
        if home and given:
            return f"{given} moved: write {given.rsplit('.', 1)[0]}.{home}.{name}"
        if home:
            return (f"{key} option {name!r} moved under {home}: write {key}.init_args.{home}.{name} in the config file "
                    f"(--{key}.{home}.{name} on the command line)")
        if given:
            return f"{given} is not an option of {short}{suggest(f'--{key}.{name}', [f'--{key}.{p}' for p in valid])}"
        return f"{key} option {name!r} is not accepted by {short}{suggest(name, valid)}"
    return type_error_line(message, args)


_KEY = re.compile(r'Parser key "([\w.]+)"')
_EXPECTED = re.compile(r"Expected a (.+?)(?:\. Got value: .*)?$", re.M)
_GOT = re.compile(r"(?:Got value|Given value): (.*)$", re.M)


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> ``int``, ``typing.Literal['a', 'b']`` -> ``one of a, b``, NoneType -> ``null``."""
    text = text.strip()
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if literal:
        return "one of " + ", ".join(v.strip().strip("'\"") for v in literal.group(1).split(","))
    cls = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", text)
    name = cls.group(1) if cls else text
    return {"NoneType": "null", "dict": "a mapping (key: value)", "str": "a string"}.get(name, name)


def _innermost_block(message: str) -> str:
    """The last ``Parser key`` line and the lines indented below it (its own report, not the outer Union's)."""
    lines = message.splitlines()
    start = max(i for i, line in enumerate(lines) if _KEY.search(line))
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    return "\n".join(block)


def type_error_line(message: str, args: Sequence[str]) -> str | None:
    """A value of the wrong type, in one line: ``--data.batch_size abc: expected int``.

    jsonargparse nests its report (a DataModule option sits inside the ``data`` Union): the key is
    the path of ``Parser key`` names, the expected types those listed under the innermost one."""
    keys = _KEY.findall(message)
    expected = _EXPECTED.findall(_innermost_block(message)) if keys else []
    if not keys or not expected:
        return None
    key = ".".join(keys) if len(keys) > 1 and "class_path" in message else keys[-1]
    flag = f"--{key}"
    # A flag given twice (--trainer.max_steps 3 --trainer.max_steps ten): name the value that failed,
    # the one jsonargparse reports, else the last given (the one that counts).
    values = [a.split("=", 1)[1] if "=" in a else args[i + 1] for i, a in enumerate(args)
              if a.startswith(flag + "=") or (a == flag and i + 1 < len(args))]
    given = [g.strip() for g in _GOT.findall(message) if not g.startswith("NestedArg")]
    value = next((v for v in reversed(values) if v in given), values[-1] if values else None)
    where = f"{flag} {value}" if value is not None else f"{key} (from a config file)"
    if value is None:
        where += f" = {given[-1]}" if given else ""
    names = list(dict.fromkeys(_type_name(t) for t in expected))
    return f"{where}: expected {' or '.join(names)}"


def _init_parameters(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def moved_to(class_path: str, name: str) -> str | None:
    """The argument of ``class_path``'s ``__init__`` whose dataclass has a field ``name`` (``augment``
    for ``mixup_alpha``), or None: where a key that is no longer an argument of its own now lives."""
    module, _, cls_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
        hints = typing.get_type_hints(cls.__init__)
    except (ImportError, AttributeError, NameError, TypeError):
        return None
    for parameter, hint in hints.items():
        for kind in (hint, *typing.get_args(hint)):  # AugmentConfig, or AugmentConfig | None
            if is_dataclass(kind) and name in {f.name for f in fields(kind)}:
                return parameter
    return None


def check_config_files(args: list[str], fail: Callable[[str], None]) -> None:
    """A missing --config (-c) file is the most common mistake: name it in one line."""
    for i, arg in enumerate(args):
        flag, path = _config_file(arg, args[i + 1] if i + 1 < len(args) else None)
        if path is not None and not Path(path).is_file():
            fail(f"{flag} {path}: no such file (relative paths are read from {os.getcwd()}).")


def _config_file(arg: str, following: str | None) -> tuple[str, str | None]:
    """The config file an argument names: ``--config F``, ``--config=F``, ``-c F``, ``-c=F`` or ``-cF``."""
    for flag in ("--config", "-c"):
        if arg == flag:
            return flag, following
        if arg.startswith(flag + "="):
            return flag, arg[len(flag) + 1 :]
    if arg.startswith("-c") and not arg.startswith("--"):
        return "-c", arg[2:]
    return "", None
