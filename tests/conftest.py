"""Shared fixtures: where the real data and the repository are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    # ../shared/data from the project's root (CI clones main next to a copy of shared/).
    return (REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data()
    if not path.is_dir():
        raise FileNotFoundError(f"real test data not found at {path}: the tests expect ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="session")
def cifar_root(shared_data: Path) -> Path:
    return shared_data / "cifar10-jpeg"


@pytest.fixture(scope="session")
def imagewoof_root(shared_data: Path) -> Path:
    return shared_data / "imagewoof-mini"
