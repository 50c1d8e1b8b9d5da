"""Shared fixtures: where the real data and the repository are."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
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
        raise FileNotFoundError(
            f"real test data not found at {path}: the tests expect ../shared/data beside the checkout"
        )
    return path


@pytest.fixture(scope="session")
def cifar_root(shared_data: Path) -> Path:
    return shared_data / "cifar10-jpeg"


@pytest.fixture(scope="session")
def imagewoof_root(shared_data: Path) -> Path:
    return shared_data / "imagewoof-mini"


@pytest.fixture(scope="session")
def woof_jpegs(imagewoof_root: Path) -> list[bytes]:
    """Twelve real JPEGs from imagewoof-mini's validation archive."""
    out = []
    with tarfile.open(imagewoof_root / "val.tar.gz") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".JPEG"):
                out.append(tf.extractfile(m).read())
            if len(out) == 12:
                break
    return out


@pytest.fixture(scope="session", autouse=True)
def shared_decode_cache(tmp_path_factory) -> Iterator[Path]:
    """One decode cache for the whole session (CIFAR-10 decodes once, not once per test module),
    never the user's ~/.cache. Tests of the cache itself pass their own ``cache_dir``."""
    import os

    path = tmp_path_factory.mktemp("resnet_lit_cache")
    previous = os.environ.get("RESNET_LIT_CACHE")
    os.environ["RESNET_LIT_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("RESNET_LIT_CACHE", None)
    else:
        os.environ["RESNET_LIT_CACHE"] = previous


@pytest.fixture(scope="session")
def reference_run(repo_root: Path, cifar_root: Path, tmp_path_factory) -> Path:
    """One uninterrupted run of ``fit_helpers.exact_fit``, which the interrupted and resumed runs of
    test_resume.py and test_interrupt.py must match bit for bit."""
    from fit_helpers import exact_fit

    run = tmp_path_factory.mktemp("reference") / "run"
    done = exact_fit(repo_root, cifar_root, run)
    assert done.returncode == 0, done.stderr[-3000:]
    return run
