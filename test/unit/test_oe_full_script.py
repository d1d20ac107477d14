"""
``tools/oe_full_gpu.sh`` run for real on the CPU: whole-network outlier exposure.

One variant, its probes continued from the init bundle's, packed with train statistics. A
tiny CamVid (the first frames of ``train`` and ``val``, linked) and one step a round keep
it to a minute. Checked: the backbone moved (the whole network trains), the warm-started
probes keep the init bundle's shape and moved from its weights, the proxy mix and the
learning rate come from the environment, and a bad ``OE_PROBES`` is refused.
"""

import os
import subprocess
import sys
import tarfile

import pytest
from repo_paths import ROOT
from test_oe_rounds_script import _tiny_data
import torch

SCRIPT = ROOT / 'tools' / 'oe_full_gpu.sh'
SHIPPED = ROOT / 'models' / 'camvid_lite0'


def _run(tmp_path, **extra):
    data = _tiny_data(tmp_path / 'data')
    env = {**os.environ, 'PYTHON': sys.executable, 'OE_DEVICE': 'cpu', 'OE_STEPS': '1',
           'OE_ROUNDS': '1', 'OE_PROBE_EPOCHS': '1', 'OE_VAL_LIMIT': '1', 'OE_SML_LIMIT': '1',
           'OE_SUBSET': '2', 'OMP_NUM_THREADS': '1', **extra,
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    return subprocess.run(['bash', str(SCRIPT), str(data), str(SHIPPED), str(tmp_path / 'work'),
                           str(tmp_path / 'pack')], env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.data
def test_one_variant_with_warm_probes_is_packed(tmp_path):
    from ood_seg_ros.model import load_bundle
    from ood_seg_ros.model.bundle import read_bundle_json
    out = _run(tmp_path, OE_VARIANTS='w:2e-5:900', OE_ROAD='1.0', OE_OBJECTS='5,5')
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in (tmp_path / 'pack').iterdir()) == ['full_logs.tgz', 'w.tar']
    with tarfile.open(tmp_path / 'pack' / 'w.tar') as tar:
        tar.extractall(tmp_path / 'w', filter='data')
    bundle = tmp_path / 'w' / 'bundle'
    doc = read_bundle_json(bundle)
    ship = read_bundle_json(SHIPPED)
    assert doc['config']['sml_stats']['frames'] == 1
    for k in ('probe_depth', 'probe_channels', 'probe_separable'):
        assert doc['config'][k] == ship['config'][k], k
    init = load_bundle(SHIPPED).model.state_dict()
    sd = load_bundle(bundle).model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], sd[k])}
    assert any(k.startswith('backbone.') for k in changed)
    assert any(k.startswith('probes.') for k in changed)
    work = tmp_path / 'work'
    assert '"lr": 2e-05' in (work / 'w' / 'r1' / 'metrics.jsonl').read_text()
    text = (work / 'w.r1.proxy.log').read_text()
    # 5 a frame on 6 frames (a few may find no place): more than the default 1-4 allow
    assert int(text.split('objects pasted: ')[1].split()[0]) > 6 * 4


@pytest.mark.data  # _run links a tiny CamVid from ../shared/data first
def test_an_unknown_probe_mode_is_refused(tmp_path):
    out = _run(tmp_path, OE_PROBES='lukewarm')
    assert out.returncode == 2
    assert out.stdout.strip() == 'OE_PROBES must be warm or scratch, got lukewarm'
