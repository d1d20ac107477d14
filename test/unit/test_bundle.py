"""The Bundle's one validated, atomic writer (read once: test_backends.py)."""

import json
import os
import signal
import subprocess
import sys

from model_helpers import save_tiny_bundle
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.model import bundle as B
import pytest
from repo_paths import ROOT

SIZE = (64, 96)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Save a tiny bundle (moose_entropy heatmap, natural bounds)."""
    return save_tiny_bundle(tmp_path_factory.mktemp('bundle') / 'b', SIZE)


def test_the_writer_checks_before_writing(tiny, tmp_path):
    before = (tiny / B.BUNDLE_JSON).read_bytes()
    with pytest.raises(OodSegError, match='input_size'):
        B.update_bundle_json(tiny, lambda doc: doc['config'].update(input_size=[1, 2, 3]))
    with pytest.raises(OodSegError, match='runtime'):
        B.update_bundle_json(tiny, lambda doc: doc.update(runtime='abc'))
    assert (tiny / B.BUNDLE_JSON).read_bytes() == before
    assert not list(tiny.glob('.bundle.json.*'))


def test_an_update_keeps_the_file_mode_and_the_json_layout(tiny):
    path = tiny / B.BUNDLE_JSON
    os.chmod(path, 0o640)
    doc = B.update_bundle_json(tiny, lambda d: d['runtime'].update(segment_threshold=0.4))
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.read_text() == json.dumps(doc, indent=2) + '\n'
    assert B.Bundle.read(tiny).runtime['segment_threshold'] == 0.4


def test_a_write_failing_half_way_leaves_the_old_file(tiny, monkeypatch):
    path = tiny / B.BUNDLE_JSON
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[:len(text) // 2])
            self.f.flush()
            raise OSError(28, 'No space left on device')

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, 'fdopen', lambda *a, **kw: HalfWriter(real_fdopen(*a, **kw)))
    with pytest.raises(OSError, match='No space'):
        B.update_bundle_json(tiny, lambda d: d['info'].update(note='x' * 100000))
    assert path.read_bytes() == before
    assert not list(tiny.glob('.bundle.json.*'))    # the temporary file is removed


CHILD = r"""
import os, sys, time
from ood_seg_ros.model import bundle as B
real_fsync = os.fsync

def stall(fd):                  # the new text is in the temporary file, not renamed yet
    real_fsync(fd)
    print('written', flush=True)
    time.sleep(60)

os.fsync = stall
B.update_bundle_json(sys.argv[1], lambda d: d['info'].update(note='x' * 1000000))
"""


def test_a_writer_killed_half_way_leaves_the_old_bundle_json(tiny):
    path = tiny / B.BUNDLE_JSON
    before = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.Popen([sys.executable, '-c', CHILD, str(tiny)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == 'written'
        tmp = list(tiny.glob('.bundle.json.*.tmp'))
        assert len(tmp) == 1 and tmp[0].stat().st_size > len(before)   # the new text
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert path.read_bytes() == before
    assert B.Bundle.read(tiny).doc == json.loads(before)
    for stray in tiny.glob('.bundle.json.*.tmp'):    # left by the killed writer: ignored
        stray.unlink()
