"""Segmentation tests run single-threaded: on a shared, oversubscribed CPU two OpenMP threads per test spin
against each other (a 1-step test took 17 s with 2 threads and 1.4 s with 1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
