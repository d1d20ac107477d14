"""
Shared pytest fixtures and the markers of the suite.

Markers (registered in ``setup.cfg``): ``data`` tests need ``../shared/data`` and are
skipped with the reason when it is absent; ``dds`` tests start nodes over real DDS in a
private network namespace; ``gpu`` tests need CUDA and are skipped without it. Select
with ``-m``, e.g. ``pytest -m "not dds"`` for the quick ROS-free part.
"""

import signal

import pytest
from repo_paths import SHARED_DATA
import torch


def pytest_configure(config):
    """
    Give SIGINT its default disposition for the session and the processes it starts.

    A shell that starts pytest in the background without job control hands it SIGINT
    ignored, and every child inherits that: the signal tests would then test the shell.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """Skip ``data`` tests without ``../shared/data`` and ``gpu`` tests without CUDA."""
    no_data = None if SHARED_DATA.is_dir() else pytest.mark.skip(
        reason=f'../shared/data is not present ({SHARED_DATA})')
    no_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason='no CUDA GPU')
    for item in items:
        if no_data is not None and item.get_closest_marker('data'):
            item.add_marker(no_data)
        if no_gpu is not None and item.get_closest_marker('gpu'):
            item.add_marker(no_gpu)


@pytest.fixture
def torch_threads(request):
    """Set the torch thread count for one test: the ``torch_threads`` mark's n, else 1."""
    mark = request.node.get_closest_marker('torch_threads')
    threads = torch.get_num_threads()
    torch.set_num_threads(mark.args[0] if mark else 1)
    yield
    torch.set_num_threads(threads)
