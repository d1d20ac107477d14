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
import torch

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


def test_a_retrained_bundle_leaves_the_old_weights_fitted_constants_out(tiny, tmp_path):
    """Calibration, meta threshold and training-split statistics belong to the old weights."""
    import numpy as np
    from ood_seg_ros.tools.sml import gather_sml_stats
    old = B.load_bundle(tiny)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (*old.config.input_size, 3), dtype=np.uint8)
              for _ in range(2)]
    stats = gather_sml_stats(old.model, frames, batch_size=2)
    fitted = {'heatmap_score': 'fused_energy_moose_energy', 'segment_threshold': 0.7,
              'normalisation': {'energy': [-3.0, 1.0]}, 'meta_threshold': 0.6,
              'calibrated_size': '96x128', 'sizes': {'192x256': {'segment_threshold': 0.4}},
              'calibration': {'sets': ['x']}, 'meta_pgn_names': ['pgn_uni_p1'],
              'heatmap_region': 'drivable'}
    kept = {'min_segment_px': 80, 'obstacle': {'margin': 0.02}}
    B.update_bundle_json(tiny, lambda d: (d['runtime'].update({**fitted, **kept}),
                                          d['config'].update(sml_stats=stats)))
    old = B.load_bundle(tiny)
    assert 'fused_energy_moose_energy' in old.config.available_scores()
    path, dropped = B.save_retrained_bundle(tmp_path / 'new', old.model, old.runtime,
                                            {'note': 'retrained'})
    new = B.load_bundle(path)
    assert new.runtime == kept
    assert new.config.sml_stats is None
    assert 'fused_energy_moose_energy' not in new.config.available_scores()
    assert dropped == ['config.sml_stats'] + [f'runtime.{k}' for k in B.CALIBRATED_RUNTIME]
    assert B.load_bundle(tiny).runtime == {**fitted, **kept}       # the old one untouched
    sd = new.model.state_dict()
    for k, v in old.model.state_dict().items():                    # saved as float16
        assert torch.equal(v.half().float() if v.is_floating_point() else v, sd[k].float()
                           if v.is_floating_point() else sd[k])
