"""
Small file helpers shared by the runtime and the tools: content hash, atomic write.

:func:`atomic_write_text` is the one way a file that others read while it changes
(``bundle.json``, the ONNX and engine sidecars) is replaced: a temporary file in the
same folder, flushed to disk, then renamed over the old one. A writer killed at any
point leaves the old file whole (and at most a ``.<name>.*.tmp`` file beside it).
"""

import hashlib
import os
from pathlib import Path
import tempfile


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _new_file_mode(path: Path) -> int:
    """Mode of the file being replaced, or what a new file would get (umask)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path, text: str) -> Path:
    """Replace ``path`` by ``text`` atomically: temp file in its folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
