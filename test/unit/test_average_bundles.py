"""
``tools/average_bundles.py``: the mean of bundles' weights, and its refusals.

Checked against a loop over the tensors written here: floating tensors are the float32
mean cast back, integer buffers come from the last bundle, fitted constants are dropped.
A bundle with another graph, fewer than two bundles or an existing output folder give a
one-line error and exit code 2, and nothing is written.
"""

import json
import subprocess
import sys

import pytest
from repo_paths import ROOT
import torch

TOOL = ROOT / 'tools' / 'average_bundles.py'
SHIPPED = ROOT / 'models' / 'camvid_lite0'


def _copy(src, dst, change=None):
    """Copy bundle ``src`` to ``dst`` with weights changed by ``change(state)``."""
    dst.mkdir(parents=True)
    state = torch.load(src / 'weights.pt')
    if change:
        change(state)
    torch.save(state, dst / 'weights.pt')
    (dst / 'bundle.json').write_text((src / 'bundle.json').read_text())
    return dst


def _tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={'PYTHONPATH': str(ROOT)})


def _shift(name, by):
    def change(state):
        state[name] = (state[name].float() + by).to(state[name].dtype)
        state['decoder.0.1.num_batches_tracked'] += int(by * 100)
    return change


def test_the_mean_of_three_bundles_tensor_by_tensor(tmp_path):
    name = 'decoder.0.0.weight'
    bundles = [_copy(SHIPPED, tmp_path / f'b{i}', _shift(name, by)) for i, by in
               enumerate((0.0, 0.25, 0.5))]
    out = _tool('--out', tmp_path / 'soup', *bundles)
    assert out.returncode == 0, out.stderr
    states = [torch.load(b / 'weights.pt') for b in bundles]
    soup = torch.load(tmp_path / 'soup' / 'weights.pt')
    assert soup.keys() == states[0].keys()
    for k, t in soup.items():
        assert t.dtype == states[0][k].dtype, k
        if t.is_floating_point():
            acc = torch.zeros(t.shape)
            for s in states:
                acc += s[k].float()
            assert torch.equal(t, (acc / 3).to(t.dtype)), k
        else:
            assert torch.equal(t, states[-1][k]), k
    assert not torch.equal(soup[name], states[0][name])
    doc = json.loads((tmp_path / 'soup' / 'bundle.json').read_text())
    assert doc['config']['sml_stats'] is None
    assert 'normalisation' not in doc['runtime'] and 'heatmap_score' not in doc['runtime']
    assert doc['runtime']['obstacle'] == json.loads(
        (SHIPPED / 'bundle.json').read_text())['runtime']['obstacle']
    assert doc['info']['averaged_from'][-1].endswith('/b2')


@pytest.mark.parametrize('case', ['shape', 'missing', 'one', 'exists'])
def test_a_bad_set_of_bundles_is_refused_in_one_line(tmp_path, case):
    a = _copy(SHIPPED, tmp_path / 'a')
    name = 'decoder.0.0.weight'
    if case == 'shape':
        b = _copy(SHIPPED, tmp_path / 'b', lambda s: s.update({name: s[name][:1]}))
    elif case == 'missing':
        b = _copy(SHIPPED, tmp_path / 'b', lambda s: s.pop(name))
    else:
        b = _copy(SHIPPED, tmp_path / 'b')
    args = [a] if case == 'one' else [a, b]
    out_dir = tmp_path / 'soup'
    if case == 'exists':
        out_dir.mkdir()
    out = _tool('--out', out_dir, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr
    assert not (out_dir / 'weights.pt').exists()
