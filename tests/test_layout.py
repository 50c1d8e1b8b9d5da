"""The package's shape: no import circle, no upward import between the subpackages, no module
grown past about 400 lines (docs: README "Where things are"; ../shared/DESIGN.md).

Module-level imports only: an import inside a function is how a lower layer reaches an optional
or heavy dependency at call time, and is not part of the import graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Each subpackage imports only from its own layer or below. The top-level modules (the lazy API in
# __init__, __main__, _version, lightning_private) are not layered: lightning_private is a leaf that
# any layer may use, and __init__/__main__ only name what is below them.
LAYERS = {"models": 0, "data": 1, "checkpointing": 1, "training": 2, "runs": 3, "commands": 3}


def _module_graph() -> dict[str, set[str]]:
    files = {}
    for path in sorted((SRC / "resnet_lit").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resnet_lit"):
                # `from pkg import module` depends on that module, not on the package's __init__
                deps.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                            for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("resnet_lit"))
        graph[name] = deps
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_the_graph_is_read() -> None:
    graph = _module_graph()
    assert "resnet_lit.training.classifier" in graph
    assert "resnet_lit.models" in graph["resnet_lit.training.classifier"]


def test_no_import_circle() -> None:
    graph = _module_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_upward_import() -> None:
    upward = []
    for module, deps in _module_graph().items():
        here = _layer(module)
        if here is None:
            continue
        upward += [f"{module} -> {dep}" for dep in deps if (_layer(dep) or 0) > here]
    assert not upward, upward


def test_no_module_past_about_400_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in (SRC / "resnet_lit").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def test_the_classifier_stays_small() -> None:
    """ImageClassifier wires the pieces (training/*.py hold them): about 200 lines, 230 at most."""
    import inspect

    from resnet_lit.training.classifier import ImageClassifier

    assert len(inspect.getsource(ImageClassifier).splitlines()) <= 230


def test_resume_lives_in_checkpointing() -> None:
    """How resume works is answered from one folder: the plan, the one reader of training checkpoints,
    the callbacks whose state makes it exact; no module elsewhere loads a checkpoint with torch.load."""
    from resnet_lit.checkpointing import contents, resume, resume_plan

    assert {resume_plan.plan_resume.__module__, resume_plan.compare_with_checkpoint.__module__,
            contents.read_training_checkpoint.__module__, resume.LastCheckpoint.__module__,
            contents.RNGState.__module__, contents.EpochEndLoopState.__module__} <= {
        "resnet_lit.checkpointing.resume_plan", "resnet_lit.checkpointing.contents", "resnet_lit.checkpointing.resume"}
    loaders = []
    for path in sorted((SRC / "resnet_lit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "load" and getattr(node.value, "id", "") == "torch":
                loaders.append(path.relative_to(SRC / "resnet_lit").as_posix())
    # data/cache.py loads its own decoded-image cache, not a checkpoint
    assert sorted(set(loaders)) == ["checkpointing/readable.py", "data/cache.py"]


def test_no_private_lightning_name_outside_the_fence() -> None:
    """Private Lightning names are reached through lightning_private.py, where each is listed and checked
    against the installed Lightning (tests/test_lightning_private.py): no other module reads, sets or
    overrides one."""
    from resnet_lit.lightning_private import PRIVATE_NAMES

    private = {name.replace("/", ".").split(".")[-1] for name in PRIVATE_NAMES}
    private = {name for name in private if name.startswith("_")}
    assert {"_trainer", "_fs", "_get_train_description", "_parse_ckpt_path"} <= private
    found = []
    for path in sorted((SRC / "resnet_lit").rglob("*.py")):
        if path.name == "lightning_private.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "name", None)
            if isinstance(node, (ast.Attribute, ast.FunctionDef)) and name in private:
                found.append(f"{path.relative_to(SRC).as_posix()}:{node.lineno} {name}")
    assert found == []


def test_the_readme_names_every_module() -> None:
    """README's "Where things are" names every module of the package, so a newcomer finds a behaviour
    by reading file names (the package markers __init__ / __main__ aside)."""
    readme = (SRC.parent / "README.md").read_text()
    table = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    missing = [path.relative_to(SRC / "resnet_lit").as_posix() for path in sorted((SRC / "resnet_lit").rglob("*.py"))
               if path.stem not in ("__init__", "__main__") and f"{path.name}`" not in table]
    assert missing == []
