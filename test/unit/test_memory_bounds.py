"""
Memory is bounded before it is spent: absurd sizes and zip bombs are refused first.

The estimate of :mod:`ood_seg_ros.model.budget` is checked against the network itself
(parameters and the sum of every module output of a forward pass on the ``meta``
device, which allocates nothing). Bad bundles are loaded in a child process whose peak
resident memory (``resource.getrusage``) must stay near what it held before the load.
"""

import json
from pathlib import Path
import subprocess
import sys
import zipfile

from ood_seg_ros.errors import OodSegError
from ood_seg_ros.model import budget, ModelConfig, OodSegNet, save_bundle
import pytest
import torch

SMALL = {'input_size': (64, 64), 'aspp_channels': 16, 'decoder_channels': 16,
         'low_level_project': 8, 'probe_channels': 16}
BOMB_BYTES = 1536 * 2 ** 20      # one zip entry that unpacks to 1.5 GiB of zeros
RSS_GROWTH_MB = 300              # allowed peak growth while a bad bundle is refused


def _meta_measure(cfg, size):
    """Parameters and float32 values of every module output, on the meta device."""
    with torch.device('meta'):
        net = OodSegNet(cfg).eval()
    total = [0]

    def hook(module, args, out):
        outs = out.values() if isinstance(out, dict) else \
            out if isinstance(out, (tuple, list)) else [out]
        total[0] += sum(t.numel() for t in outs if torch.is_tensor(t))
    for m in net.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.empty(1, 3, *size, device='meta'))
    return sum(p.numel() for p in net.parameters()), total[0]


@pytest.mark.parametrize('cfg', [
    ModelConfig(**SMALL),
    ModelConfig(input_size=(128, 160), aspp_channels=64, decoder_channels=32,
                probe_depth=3, probe_channels=48),
], ids=['small', 'deeper_probes'])
def test_estimate_is_an_upper_bound_of_the_same_order(cfg):
    params, floats = _meta_measure(cfg, cfg.input_size)
    assert params <= budget.weight_count(cfg) <= params + budget.BACKBONE_PARAMS
    est = budget.output_floats(cfg, cfg.input_size)
    assert floats <= est <= 3 * floats, (floats, est)


PEAK = r"""
import resource, sys, torch
from ood_seg_ros.model import ModelConfig, OodSegNet
torch.set_num_threads(1)
net = OodSegNet(ModelConfig(input_size=(480, 640))).eval()
x = torch.rand(1, 3, 480, 640)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    net(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def test_estimate_covers_the_real_peak_of_a_forward_pass():
    """Peak resident growth of a real forward pass (the shipped network, 480x640)."""
    proc = subprocess.run([sys.executable, '-c', PEAK], capture_output=True, text=True,
                          timeout=600)
    grew = int(proc.stdout.split()[-1])
    cfg = ModelConfig(input_size=(480, 640))
    est = budget.BYTES * budget.activation_floats(cfg, cfg.input_size)
    assert grew <= est <= budget.BYTES * budget.output_floats(cfg, cfg.input_size)


def test_absurd_sizes_are_refused_by_the_estimate_without_building():
    big = ModelConfig(**{**SMALL, 'aspp_channels': 4096, 'probe_depth': 64,
                         'probe_channels': 4096})      # not validated: nothing built
    with pytest.raises(OodSegError, match='refused before allocating'):
        budget.check_memory(big)
    with pytest.raises(OodSegError, match='8192x8192'):
        budget.check_memory(ModelConfig(**SMALL), (8192, 8192), limit=16 * 2 ** 30)
    # the shipped network at its input size fits a 1 GiB budget, at 1024x2048 a Jetson's
    assert budget.check_memory(ModelConfig(), limit=2 ** 30)
    assert budget.check_memory(ModelConfig(), (1024, 2048), limit=6 * 2 ** 30)


LOAD = r"""
import resource, sys
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.pipeline import Pipeline
import torch
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    Pipeline.from_bundle(sys.argv[1], backend='torch', device='cpu')
    print('LOADED')
except OodSegError as exc:
    print('REFUSED ' + str(exc))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f'RSS {base} {peak}')
"""


def _load(bundle):
    """Load ``bundle`` in a child; (outcome line, peak growth in MB)."""
    proc = subprocess.run([sys.executable, '-c', LOAD, str(bundle)], capture_output=True,
                          text=True, timeout=600)
    lines = proc.stdout.splitlines()
    rss = [ln for ln in lines if ln.startswith('RSS ')]
    assert rss, proc.stdout[-2000:] + proc.stderr[-3000:]
    base, peak = (int(v) for v in rss[0].split()[1:])
    return next(ln for ln in lines if ln.startswith(('LOADED', 'REFUSED'))), \
        (peak - base) / 1024


@pytest.fixture(scope='module')
def small_bundle(tmp_path_factory):
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp('mem') / 'b', OodSegNet(ModelConfig(**SMALL)),
                       half=False)


def _with_config(src, dst, **changes):
    import shutil
    shutil.copytree(src, dst)
    doc = json.loads((dst / 'bundle.json').read_text())
    doc['config'].update(changes)
    (dst / 'bundle.json').write_text(json.dumps(doc))
    return dst


@pytest.mark.parametrize('changes, says', [
    ({'aspp_channels': 10 ** 6}, 'aspp_channels'),
    ({'probe_depth': 10 ** 5}, 'probe_depth'),
    ({'input_size': [100000, 100000]}, 'input_size'),
    ({'class_names': [f'c{i}' for i in range(10 ** 6)]}, 'class_names'),
    ({'aspp_channels': 4096, 'probe_depth': 64, 'probe_channels': 4096},
     'refused before allocating'),
    ({'input_size': [16384, 16384]}, 'refused before allocating'),
], ids=['aspp_1e6', 'depth_1e5', 'input_1e5', 'classes_1e6', 'huge_head', 'input_16384'])
def test_absurd_bundle_sizes_are_refused_with_nothing_allocated(
        small_bundle, tmp_path, changes, says):
    bad = _with_config(small_bundle, tmp_path / 'bad', **changes)
    outcome, grew_mb = _load(bad)
    assert outcome.startswith('REFUSED') and says in outcome, outcome
    assert grew_mb < RSS_GROWTH_MB, (outcome, grew_mb)


def _bomb(weights: Path) -> None:
    """Rewrite a torch zip: its largest storage entry becomes BOMB_BYTES of zeros."""
    with zipfile.ZipFile(weights) as src:
        infos = src.infolist()
        victim = max((i for i in infos if '/data/' in i.filename), key=lambda i: i.file_size)
        data = {i.filename: src.read(i) for i in infos if i is not victim}
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(weights, 'w', compression=zipfile.ZIP_DEFLATED) as dst:
        for info in infos:
            if info is victim:
                with dst.open(info.filename, 'w', force_zip64=True) as f:
                    for _ in range(BOMB_BYTES // len(chunk)):
                        f.write(chunk)
            else:
                dst.writestr(info, data[info.filename])
    # compressed: a few MB holding GiBs
    assert weights.stat().st_size < 20 * 2 ** 20


def test_weights_zip_bomb_is_refused_before_reading(small_bundle, tmp_path):
    import shutil
    bad = tmp_path / 'bomb'
    shutil.copytree(small_bundle, bad)
    with zipfile.ZipFile(bad / 'weights.pt') as z:       # torch's layout, deflated bomb
        assert any(i.filename.endswith('data.pkl') for i in z.infolist())
    _bomb(bad / 'weights.pt')
    outcome, grew_mb = _load(bad)
    assert outcome.startswith('REFUSED') and 'zip entries unpack to' in outcome, outcome
    assert '\n' not in outcome
    assert grew_mb < RSS_GROWTH_MB, (outcome, grew_mb)
