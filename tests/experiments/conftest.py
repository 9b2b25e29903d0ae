"""Fixtures of the experiment-configuration tests: the config root and a cheap way to build things."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test body on one torch thread (much faster than contended threads on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
