"""Fixtures for the client tests (helpers live in ``client_helpers``)."""

from __future__ import annotations

import pytest
import torch
from client_helpers import initial_arrays
from flwr.app import ArrayRecord


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    """One intra-op thread: the machine is shared and tiny MLP steps drown in thread overhead
    (10x faster here). Restored after the client tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def arrays0() -> ArrayRecord:
    return initial_arrays(0)
