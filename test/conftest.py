"""Shared pytest fixtures.

Real sequences live in ``../shared/data`` beside the repository (never
downloaded at test time). Tests that need them fail in CI (``CI`` set) if the
folder is missing, and skip elsewhere.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data"))


def _require(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        msg = f"real-data fixture {path} is missing (expected ../shared/data/{name} beside the repo)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def redkitchen() -> Path:
    return _require("7scenes_redkitchen")


@pytest.fixture(scope="session")
def tum_xyz() -> Path:
    return _require("tum_fr1_xyz")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread, as the system runs it (two threads on the shared 2-core CI
    machine measured several times slower). Use per module:
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
