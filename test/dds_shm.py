"""
Fast DDS shared-memory segments in ``/dev/shm``: which exist, which their owner left.

Every DDS participant of the node (``config/fastdds.xml``) maps a 32 MiB segment,
``/dev/shm/fastrtps_<16 hex>``, and holds a lock on ``<segment>_el`` while it lives. A
process that ends without destroying its participant (a node left alive at exit, or a
SIGKILL) leaves both files behind, and the memory stays taken until a reboot or
``fastdds shm clean``. A segment whose lock file nobody holds is such a zombie, the test
``fastdds shm clean`` applies too.
"""

import fcntl
import os
from pathlib import Path
import re

SHM_DIR = Path('/dev/shm')
_SEGMENT = re.compile(r'fastrtps_[0-9a-f]{16}')


def segments():
    """Names of the Fast DDS segments in :data:`SHM_DIR` (empty without the folder)."""
    try:
        return {n for n in os.listdir(SHM_DIR) if _SEGMENT.fullmatch(n)}
    except FileNotFoundError:
        return set()


def zombies(names):
    """Those of ``names`` whose lock file exists and no live process holds."""
    dead = []
    for name in sorted(names):
        try:
            with open(SHM_DIR / f'{name}_el', 'rb') as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, FileNotFoundError):
            continue            # in use, or removed by its owner meanwhile
        dead.append(name)
    return dead


def owned(pid=None):
    """Segments whose lock file process ``pid`` (default: this one) holds: its participants."""
    pid = str(os.getpid() if pid is None else pid)
    with open('/proc/locks') as locks:      # '1: FLOCK ADVISORY WRITE <pid> <dev>:<inode> ...'
        inodes = {int(f[5].rsplit(':', 1)[1]) for f in map(str.split, locks)
                  if len(f) > 5 and f[4] == pid}
    mine = set()
    for name in segments():
        try:
            if (SHM_DIR / f'{name}_el').stat().st_ino in inodes:
                mine.add(name)
        except FileNotFoundError:
            continue
    return mine


def left_since(before):
    """Zombie segments among those created since the snapshot ``before`` (:func:`segments`)."""
    return zombies(segments() - set(before))


def remove(names):
    """Delete the segments ``names`` and their lock files; return how many were removed."""
    count = 0
    for name in names:
        for path in (SHM_DIR / name, SHM_DIR / f'{name}_el'):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            if path.name == name:       # the segment itself, not its lock file
                count += 1
    return count
