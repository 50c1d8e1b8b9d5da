"""The Dockerfile, checked without a container engine: structure, package install, entry point."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import tomllib


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def test_dockerfile_installs_package_with_console_entrypoint(repo_root: Path) -> None:
    steps = _instructions(repo_root / "docker" / "Dockerfile")
    keywords = [k for k, _ in steps]
    known = {"FROM", "RUN", "COPY", "ENV", "WORKDIR", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    assert set(keywords) <= known, f"unknown instructions {set(keywords) - known}"
    assert keywords[0] == "FROM"
    base = steps[0][1]
    assert base.startswith("pytorch/pytorch:") and "cuda" in base, base

    copies = [shlex.split(args) for k, args in steps if k == "COPY"]
    sources = {src for parts in copies for src in parts[:-1]}
    assert {"pyproject.toml", "src"} <= sources, sources
    for src in sources:  # every copied path exists in the build context (the repository root)
        assert (repo_root / src).exists(), f"COPY {src}: not in the repository"

    # The package is installed after its sources are copied.
    src_copy = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and shlex.split(a)[0] == "src")
    installs = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install ." in a]
    assert installs and installs[0] > src_copy, "pip install . must follow COPY src"

    entry = json.loads(next(a for k, a in steps if k == "ENTRYPOINT"))
    scripts = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["resnet-lit"] and "resnet-lit" in scripts, (entry, scripts)


def test_dockerignore_keeps_what_the_image_copies(repo_root: Path) -> None:
    rules = [r for r in (repo_root / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
             if r and not r.startswith("#")]
    assert rules[0] == "**"  # everything excluded, then the copied paths re-included
    for needed in ("pyproject.toml", "README.md", "LICENSE", "src/**", "configs/**"):
        assert f"!{needed}" in rules, needed


def test_image_pins_the_versions_the_tests_ran_with(repo_root: Path) -> None:
    """The base image's torch and the pip pins are the torch, torchvision and lightning installed here
    (the image pinned torch 2.5.1, never tested), and the InfiniBand user-space libraries are in."""
    import re

    import lightning
    import torch
    import torchvision

    steps = _instructions(repo_root / "docker" / "Dockerfile")
    base = steps[0][1]
    tag = re.fullmatch(r"pytorch/pytorch:([0-9.]+)-cuda([0-9.]+)-cudnn\d+-runtime", base)
    assert tag, base
    installed = {name: module.__version__.split("+")[0]
                 for name, module in (("torch", torch), ("torchvision", torchvision), ("lightning", lightning))}
    assert tag.group(1) == installed["torch"], (base, installed)
    pip = next(a for k, a in steps if k == "RUN" and "pip install ." in a)
    pins = dict(re.findall(r"\b(torch|torchvision|lightning)==([0-9.]+)", pip))
    assert pins == installed, (pins, installed)
    if torch.version.cuda:  # a CUDA build here: the image's CUDA is the one tested
        assert tag.group(2) == torch.version.cuda, (base, torch.version.cuda)
    apt = " ".join(a for k, a in steps if k == "RUN" and "apt-get install" in a)
    assert {"rdma-core", "ibverbs-providers"} <= set(apt.split()), apt
