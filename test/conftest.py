"""
Shared pytest fixtures and the markers of the suite.

Markers (registered in ``setup.cfg``): ``data`` tests need ``../shared/data`` and are
skipped with the reason when it is absent; ``dds`` tests start nodes over real DDS in a
private network namespace; ``gpu`` tests need CUDA and are skipped without it. Select
with ``-m``, e.g. ``pytest -m "not dds"`` for the quick ROS-free part.
"""

import signal

import dds_shm
import pytest
from repo_paths import SHARED_DATA
import torch


_SHM_BEFORE = pytest.StashKey[set]()
_SHM_REMOVED = pytest.StashKey[int]()


def pytest_configure(config):
    """
    Give SIGINT its default disposition for the session and the processes it starts.

    A shell that starts pytest in the background without job control hands it SIGINT
    ignored, and every child inherits that: the signal tests would then test the shell.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session):
    """Note the Fast DDS shared-memory segments that exist before the tests start."""
    session.config.stash[_SHM_BEFORE] = dds_shm.segments()


def pytest_sessionfinish(session):
    """
    Remove the segments that processes killed by the tests (SIGKILL) left behind.

    Each is 32 MiB of memory until a reboot; a developer's repeated runs would fill
    ``/dev/shm``. Only zombies created during this session go (their owner is dead); the
    signal tests check that the node itself leaves none.
    """
    before = session.config.stash.get(_SHM_BEFORE, None)
    if before is not None:
        session.config.stash[_SHM_REMOVED] = dds_shm.remove(dds_shm.left_since(before))


def pytest_terminal_summary(terminalreporter, config):
    """Say how many left-behind segments the session removed."""
    removed = config.stash.get(_SHM_REMOVED, 0)
    if removed:
        terminalreporter.write_line(
            f'removed {removed} Fast DDS shared-memory segment(s) that killed test '
            f'processes left in {dds_shm.SHM_DIR}')


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
