"""
Tests of the export form of the probes against the per-probe modules, and of its graph.

The export form: grouped probe stack, split ASPP projection, MatMul upsampling.

Tolerance: the grouped form runs the same multiply-adds with BatchNorm folded into the
weights, so it differs from the per-probe forward by float rounding only: max |a - b| <=
1e-5 * max |b| (measured ~1e-6 on random weights and on models/camvid_lite0).
"""

import json
import shutil

from model_helpers import lively, sml_stats
import numpy as np
import onnx
from ood_seg_ros.model import load_bundle, ModelConfig, OodSegNet, save_bundle
from ood_seg_ros.model import probe_stack as P
from ood_seg_ros.runtime import onnx_cache as E
import pytest
from repo_paths import ROOT
import torch
from torch import nn
import torch.nn.functional as F

TRAINED = ROOT / 'models' / 'camvid_lite0'
SIZE = (96, 128)
RTOL = 1e-5
MOOSE = ['probs', 'moose_mi', 'moose_entropy', 'moose_max_logit', 'pgn_uni_p1', 'msp']

pytestmark = pytest.mark.usefixtures('torch_threads')


def random_model(separable=True, depth=2, seed=0):
    """Build a small eval-mode network with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = lively(OodSegNet(ModelConfig(
        input_size=SIZE, aspp_channels=32, decoder_channels=32, low_level_project=16,
        probe_channels=24, probe_depth=depth, probe_separable=separable,
        sml_stats=sml_stats(11))), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def rel_err(a, b):
    """Return max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def per_probe_and_grouped(model, x):
    """Return (the per-probe logits, the grouped stack's logits split per probe)."""
    with torch.no_grad():
        _, branches, pooled = model.aspp(model.backbone((x - model.mean) / model.std)[1])
        ref = [p(b, pooled) for p, b in zip(model.probes, branches)]
        stack = P.GroupedProbes(list(model.probes), model.config.aspp_channels)
        got = stack(torch.cat(branches, 1), pooled)
    return ref, list(got.split(model.config.n_classes, 1))


@pytest.mark.parametrize('separable,depth', [(True, 2), (False, 1), (True, 3)])
def test_grouped_stack_matches_the_per_probe_modules(separable, depth):
    model = random_model(separable, depth)
    ref, got = per_probe_and_grouped(model, torch.rand(2, 3, *SIZE))
    for r, g in zip(ref, got):
        assert r.abs().max() > 0.1 and rel_err(g, r) < RTOL
    # the probes differ from each other, so a swapped channel block would be caught
    assert min(rel_err(ref[i], ref[j]) for i in range(4) for j in range(i)) > 0.01


def test_weight_of_one_probe_changes_only_its_logits():
    model = random_model()
    x = torch.rand(1, 3, *SIZE)
    before = per_probe_and_grouped(model, x)[1]
    with torch.no_grad():
        model.probes[2].net[4][3].weight.mul_(1.5)  # a pointwise conv of probe 2
        model.probes[2].net[1].running_mean.add_(0.2)  # and its first BatchNorm
    ref, after = per_probe_and_grouped(model, x)
    for i in (0, 1, 3):
        assert torch.equal(after[i], before[i])
    assert rel_err(after[2], before[2]) > 0.05
    assert rel_err(after[2], ref[2]) < RTOL


@pytest.mark.parametrize('out_size,in_size', [(90, 23), (120, 30), (24, 6), (7, 7), (5, 1)])
def test_bilinear_matrix_is_interpolate(out_size, in_size):
    v = torch.randn(3, 2, in_size, in_size)
    r = P.bilinear_matrix(out_size, in_size)
    ref = F.interpolate(v, size=(out_size, out_size), mode='bilinear', align_corners=False)
    assert rel_err(r @ v @ r.t(), ref) < RTOL
    assert torch.allclose(r.sum(1), torch.ones(out_size))


@pytest.mark.parametrize('batch', [1, 2])
def test_export_form_forward_matches_the_training_form(batch):
    model = random_model()
    model.set_outputs(MOOSE)
    x = torch.rand(batch, 3, *SIZE)
    with torch.no_grad():
        ref = model(x)
        P.fuse_probes(model)
        got = model(x)
        probes = model.features_deep(x, True)[3]
    assert probes.shape == (batch, 4 * 11, (SIZE[0] + 15) // 16, (SIZE[1] + 15) // 16)
    assert torch.equal(got['semantic'], ref['semantic'])
    for k in MOOSE:
        assert rel_err(got[k], ref[k]) < RTOL, k


def test_fuse_probes_refuses_training_mode():
    with pytest.raises(ValueError, match='eval mode'):
        P.fuse_probes(random_model().train())


@pytest.mark.skipif(not (TRAINED / 'bundle.json').exists(),
                    reason='trained bundle models/camvid_lite0 is absent')
def test_shipped_bundle_grouped_probes_match():
    model = load_bundle(TRAINED).model
    x = torch.rand(1, 3, *model.config.input_size, generator=torch.Generator().manual_seed(0))
    ref, got = per_probe_and_grouped(model, x)
    for r, g in zip(ref, got):
        assert r.abs().max() > 1.0 and rel_err(g, r) < RTOL


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save a small bundle with random weights and BatchNorm statistics."""
    return save_bundle(tmp_path_factory.mktemp('stack') / 'b', random_model(), runtime={},
                       half=False)


def export_training_form(bundle, outputs, path, monkeypatch):
    """Export as the code before the grouped stack did: the per-probe form."""
    with monkeypatch.context() as m:
        m.setattr(P, 'fuse_probes', lambda model, matmul_upsample=True: model)
        return E.export_onnx(bundle, outputs, path)


def run(path, x):
    """Run an ONNX graph in ONNX Runtime (CPU, 1 thread); return its outputs by name."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {'image': x})))


def test_exported_graph_matches_the_per_probe_graph(bundle, tmp_path, monkeypatch):
    old = export_training_form(bundle, MOOSE, tmp_path / 'old.onnx', monkeypatch)
    new = E.export_onnx(bundle, MOOSE, tmp_path / 'new.onnx')
    assert E.check_tensorrt_ops(new)
    nodes = onnx.load(str(new)).graph.node
    assert not [n for n in nodes if '/probes.' in n.name]
    groups = [a.i for n in nodes if '/probe_stack/' in n.name and n.op_type == 'Conv'
              for a in n.attribute if a.name == 'group']
    assert 4 in groups and 4 * 24 in groups  # grouped 1x1 / 3x3, depthwise layers

    def resizes(path):
        return sum(n.op_type == 'Resize' for n in onnx.load(str(path)).graph.node)
    assert resizes(new) == resizes(old) - 1  # the probe upsampling is MatMuls now
    x = np.random.default_rng(0).random((1, 3, *SIZE), dtype=np.float32)
    a, b = run(old, x), run(new, x)
    assert list(a) == list(b)
    assert np.array_equal(a['semantic'], b['semantic'])
    for k in MOOSE:
        assert np.abs(a[k] - b[k]).max() <= RTOL * np.abs(a[k]).max(), k


def test_dynamic_export_keeps_resize(bundle, tmp_path):
    path = E.export_onnx(bundle, ['moose_mi'], tmp_path / 'dyn.onnx', dynamic=True)
    model = load_bundle(bundle, outputs=['moose_mi']).model
    for size in ((96, 128), (100, 150)):
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            ref = model(x)['moose_mi'].numpy()
        got = run(path, x.numpy())['moose_mi']
        assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max()


def test_graph_code_hash_covers_the_export_form(tmp_path, monkeypatch):
    pkg = tmp_path / 'ood_seg_ros'
    src = ROOT / 'ood_seg_ros'
    shutil.copytree(src / 'model', pkg / 'model')
    (pkg / 'runtime').mkdir()
    shutil.copy(src / 'scores.py', pkg / 'scores.py')
    shutil.copy(src / 'runtime' / 'onnx_cache.py', pkg / 'runtime' / 'onnx_cache.py')
    monkeypatch.setattr(E, '__file__', str(pkg / 'runtime' / 'onnx_cache.py'))
    assert E.graph_code_sha256() == E.graph_code_sha256()
    before = E.graph_code_sha256()
    stack = pkg / 'model' / 'probe_stack.py'
    stack.write_text(stack.read_text() + '\n# another export form\n')
    assert E.graph_code_sha256() != before


def test_cached_per_probe_graph_is_exported_again(bundle, monkeypatch):
    """A graph cached by the code before the grouped stack is not reused."""
    path = E.default_onnx_path(bundle, MOOSE, SIZE)
    current = E.graph_code_sha256()
    with monkeypatch.context() as m:
        m.setattr(E, 'graph_code_sha256', lambda: 'code before the grouped stack')
        export_training_form(bundle, MOOSE, path, m)
        assert E.ensure_onnx(bundle, MOOSE, SIZE) == path  # a hit for the old code
    assert [n for n in onnx.load(str(path)).graph.node if '/probes.' in n.name]
    assert E.graph_code_sha256() == current
    assert 'source hash' in E.onnx_mismatch(path, E.source_sha256(bundle, MOOSE, SIZE))
    E.ensure_onnx(bundle, MOOSE, SIZE)
    nodes = onnx.load(str(path)).graph.node
    assert not [n for n in nodes if '/probes.' in n.name]
    assert [n for n in nodes if '/probe_stack/' in n.name]
    side = json.loads(E.onnx_sidecar(path).read_text())
    assert side['source_sha256'] == E.source_sha256(bundle, MOOSE, SIZE)
