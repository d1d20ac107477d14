"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch thread: small inputs, and no spin-wait stalls on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
