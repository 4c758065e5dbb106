"""Shared fixtures: the real test data lives beside the repo in ../shared, never inside it."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real test data not found at {REAL_DATA} (expected ../shared beside the repo)")
    return REAL_DATA


@pytest.fixture
def one_thread():
    """Tiny matrices: threads only add overhead (and stall badly on a busy 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
