"""Fixtures of the model tests (helpers live in model_helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the build machine's 2 cores are shared by several jobs, and
    OpenMP threads that wait on each other under contention run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
