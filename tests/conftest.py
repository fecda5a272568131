"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (steadier on small shared machines), then restore."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
