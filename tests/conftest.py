"""Shared pytest fixtures: real data from ../shared/data (skipped when absent) and the test device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFVISION_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the folder is not there (e.g. a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data not found at {SHARED_DATA} (set DIFFVISION_SHARED_DATA to point at it)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device tests run on: TEST_DEVICE env var (e.g. 'cuda'), else cpu."""
    name = os.environ.get("TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("TEST_DEVICE asks for CUDA but none is available")
    return torch.device(name)
