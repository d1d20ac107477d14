"""
Tests of ``ood-seg bench`` and its parts (``ood_seg_ros.tools.bench``).

Speed itself is never asserted here (the benchmark command prints it); these tests check
that the figures are what they claim to be: the ratios are the ratios of the printed
times, the peer of ``--compare-onnx`` is really run, the meta-classification records
equal a per-segment reference, the segment grid has the requested segment count.
"""

import json

from model_helpers import save_tiny_bundle
import numpy as np
from ood_seg_ros import cli
from ood_seg_ros.meta import MetaClassifier
from ood_seg_ros.pipeline import Pipeline
from ood_seg_ros.segments import find_segments
from ood_seg_ros.tools.bench import frames as FR
from ood_seg_ros.tools.bench import model as BM
from ood_seg_ros.tools.bench.pipeline import segment_grid
import pytest
from repo_paths import CAMVID
import torch

H, W = 64, 96
pytestmark = pytest.mark.usefixtures('torch_threads')


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save a tiny untrained model; heatmap score moose_entropy (natural bounds)."""
    return save_tiny_bundle(tmp_path_factory.mktemp('bench') / 'b', (H, W))


@pytest.fixture(scope='module')
def peer(tmp_path_factory):
    """Export a tiny segmentation conv net (random weights) to ONNX, input 1x3xHxW."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 11, 1),
                              torch.nn.Upsample(scale_factor=2, mode='bilinear'))
    path = tmp_path_factory.mktemp('peer') / 'peer.onnx'
    torch.onnx.export(net.eval(), (torch.rand(1, 3, H, W),), str(path),
                      input_names=['x'], opset_version=17, dynamo=False)
    return path


def _bench(capsys, *args):
    rc = cli.main(['bench', '--runs', '3', '--warmup', '1', '--height', str(H),
                   '--width', str(W), '--json', *args])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else out.err)


def fixed_rounds(monkeypatch, seconds):
    """Run every contender as the bench would, but report ``seconds(name, round)``."""
    real = BM.interleaved_samples

    def samples(fns, runs, warmup, sync=None):
        real(fns, 1, 0, sync)                       # the contenders really run
        return {n: [seconds(n, i) for i in range(runs)] for n in fns}

    monkeypatch.setattr(BM, 'interleaved_samples', samples)


def per_round(name, i):
    """Per-round seconds whose ratio medians differ from the ratios of the medians."""
    base = {'peer': 1.0, 'plain': 1.0, 'node_fp32': 1.0}.get(name, 2.0)
    return base * (1.0, 3.0, 1.5)[i % 3] * (1.0 if name in ('peer', 'plain') else
                                            (1.1, 0.5, 1.2)[i % 3])


def test_ratios_are_medians_of_per_round_ratios():
    samples = {n: [per_round(n, i) for i in range(3)] for n in ('network', 'peer')}
    brute = sorted(a / b for a, b in zip(samples['network'], samples['peer']))[1]
    assert BM.round_ratio(samples, 'network', 'peer') == pytest.approx(brute, abs=1e-4)
    medians = np.median(samples['network']) / np.median(samples['peer'])
    assert abs(brute - medians) > 0.1          # the example tells the two apart


def test_compare_onnx_times_the_peer_interleaved_with_ours(bundle, peer, capsys,
                                                           monkeypatch):
    fixed_rounds(monkeypatch, per_round)
    rc, res = _bench(capsys, '--bundle', str(bundle), '--skip-model',
                     '--compare-onnx', str(peer))
    assert rc == 0
    assert res['peer_onnx'] == 'peer.onnx' and res['peer_input'] == [H, W]
    for k in ('network', 'frame'):
        assert res[f'ours_{k}_ms'] > 0 and res['peer_ms'] > 0
        assert res[f'ratio_{k}_vs_peer'] == pytest.approx(
            np.median([per_round(k, i) / per_round('peer', i) for i in range(3)]), abs=1e-4)
    assert res['ratio_network_vs_plain'] == res['ratio_network_vs_peer']   # same plain/peer
    assert res['ours_precision'] == 'fp32' and len(res['compare_load_average']) == 2


def test_compare_onnx_refuses_a_bad_file(bundle, tmp_path, capsys):
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'not onnx')
    rc, err = _bench(capsys, '--bundle', str(bundle), '--skip-model', '--compare-onnx',
                     str(bad))
    assert rc == 2 and 'cannot load' in err and len(err.strip().splitlines()) == 1


def test_json_overheads_are_the_ratios_of_the_times(bundle, capsys, monkeypatch):
    fixed_rounds(monkeypatch, per_round)
    rc, res = _bench(capsys, '--bundle', str(bundle), '--backend', 'onnxruntime',
                     '--meta-segments', '5')
    assert rc == 0
    want = np.median([per_round('node', i) / per_round('plain', i) for i in range(3)])
    assert res['overhead_torch'] == pytest.approx(want, abs=1e-4)
    assert res['overhead_ort'] == pytest.approx(want, abs=1e-4)
    assert res['ort_precision'] == 'fp32' and res['ort_threads'] == 0
    assert res['node_outputs'] == Pipeline.required_outputs({'heatmap_score':
                                                             'moose_entropy'})
    assert res['meta_5_segments_ms'] > 0 and res['fps'] > 0
    assert len(res['load_average']) == 3


def test_obstacle_costs_are_ratios_to_the_plain_pipeline(bundle, capsys):
    rc, res = _bench(capsys, '--bundle', str(bundle), '--skip-model', '--obstacle',
                     '--band-width', '192', '--height', '256', '--width', '384')
    assert rc == 0
    times, ratio = res['obstacle_ms'], res['obstacle_ratio']
    assert set(times) == {'plain', 'drivable', 'drivable_band', 'flip', 'drivable_contrast',
                          'whole_frame_at_band_resolution'}
    for name, ms in times.items():
        assert ms > 0 and ratio[name] == pytest.approx(ms / times['plain'], rel=1e-6)
    # band rows 102-218 of 256 (0.40-0.85) at half width: 58 -> 64 rows, 192 wide
    assert res['obstacle_band_input'] == '64x192'
    assert res['obstacle_whole_frame_input'] == '128x192'


@pytest.mark.parametrize('n', [1, 40, 1000])
def test_segment_grid_has_n_components(n):
    labels, got = segment_grid((90, 120), n)
    assert got == n
    found, count = find_segments((labels > 0).astype(np.float32), 0.5)
    assert count == n and np.array_equal(found, labels)
    with pytest.raises(ValueError):
        segment_grid((4, 4), 10)


class _Outputs:
    """Backend stand-in: the pipeline only reads its input size and output names here."""

    input_size = (H, W)
    output_names = ['semantic'] + Pipeline.required_outputs({'heatmap_score':
                                                             'moose_entropy'})


def test_classify_segments_equals_a_per_segment_reference():
    rng = np.random.default_rng(3)
    pipe = Pipeline(_Outputs(), [f'c{i}' for i in range(11)],
                    {'heatmap_score': 'moose_entropy'})
    names = pipe.extractor.feature_names
    pipe.meta = MetaClassifier(names, rng.normal(size=len(names)),
                               rng.uniform(0.5, 2, len(names)), rng.normal(size=len(names)),
                               0.1, np.zeros(len(names)), 0.0, threshold=0.5)
    pipe.meta_columns = np.arange(len(names))
    labels, n = segment_grid((H // 4, W // 4), 37)
    labels[labels == 5] = 0           # a label id without pixels
    low = rng.random(labels.shape).astype(np.float32)
    feats = rng.normal(size=(n, len(names)))
    fh, fw = 250, 333                  # non-integer scale factors
    segments, instances = pipe.classify_segments(labels, n, low, feats, (fh, fw))
    p_fp = pipe.meta.predict_fp_proba(feats)
    sy, sx = fh / labels.shape[0], fw / labels.shape[1]
    next_id = 0
    assert len(segments) == n
    for k, seg in enumerate(segments, start=1):
        ys, xs = np.nonzero(labels == k)
        kept = p_fp[k - 1] <= 0.5
        next_id += kept
        assert seg.kept == kept and seg.id == (next_id if kept else 0)
        assert seg.meta_score == pytest.approx(1 - p_fp[k - 1], abs=1e-12)
        if not len(ys):
            assert seg.area == 0 and seg.bbox == (0, 0, 0, 0) and seg.score == 0
            continue
        assert seg.bbox == (int(np.floor(xs.min() * sx)), int(np.floor(ys.min() * sy)),
                            min(fw, int(np.ceil((xs.max() + 1) * sx))),
                            min(fh, int(np.ceil((ys.max() + 1) * sy))))
        assert seg.area == int(round(len(ys) * sx * sy))
        assert seg.score == pytest.approx(float(low[ys, xs].astype(np.float64).mean()),
                                          rel=1e-12)
        assert (instances[ys, xs] == seg.id).all()
    assert (instances[labels == 0] == 0).all()


def test_sample_frame_from_the_bag_or_synthetic(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    frame = FR.sample_frame(45, 70, rng)
    assert frame.shape == (45, 70, 3) and frame.dtype == np.uint8
    monkeypatch.setattr(FR, 'SAMPLE_BAG', tmp_path / 'none')
    synth = FR.sample_frame(45, 70, rng)
    assert synth.shape == (45, 70, 3) and synth.std() > 0
    assert np.array_equal(FR.synthetic_frame(30, 40, np.random.default_rng(1)),
                          FR.synthetic_frame(30, 40, np.random.default_rng(1)))


USER_POLICY = {'OMP_WAIT_POLICY': 'ACTIVE'}


@pytest.mark.parametrize('env, expected', [({}, 'PASSIVE'), (USER_POLICY, 'ACTIVE')])
def test_package_makes_openmp_wait_passively_before_torch(env, expected):
    """Importing the package sets OMP_WAIT_POLICY (unless set) before torch reads it."""
    import os
    import subprocess
    import sys
    code = ('import ood_seg_ros, os, sys; import torch; '
            'print(os.environ["OMP_WAIT_POLICY"], ood_seg_ros.TORCH_IMPORTED_FIRST)')
    base = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    out = subprocess.run([sys.executable, '-c', code], env={**base, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [expected, 'False']
    late = subprocess.run([sys.executable, '-c', 'import torch, ood_seg_ros; '
                           'print(ood_seg_ros.TORCH_IMPORTED_FIRST)'], env=base,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert late == 'True'


def test_torch_timing_runs_the_folded_model_as_the_node_does(bundle):
    from ood_seg_ros.model import load_bundle
    from ood_seg_ros.model.fold import fold_batch_norms
    from ood_seg_ros.runtime.torch_backend import TorchBackend
    res = BM.bench_torch(str(bundle), 'cpu', H, W, False, 1, 0)
    expected = fold_batch_norms(load_bundle(bundle).model.eval())
    assert res['torch_batchnorms_folded'] == expected > 0
    node = TorchBackend(bundle, ['probs'], device='cpu').model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and not _in_probe(node, m)
                   for m in node.modules())


def _in_probe(model, module):
    from ood_seg_ros.model.deeplab import Probe
    return any(module is m for p in model.modules() if isinstance(p, Probe)
               for m in p.modules())


@pytest.mark.skipif(not (CAMVID / 'train' / 'images').is_dir(),
                    reason='CamVid train frames are not available')
def test_int8_bench_times_the_quantised_graph_against_fp32(bundle, capsys):
    rc, res = _bench(capsys, '--bundle', str(bundle), '--precision', 'int8', '--camvid',
                     str(CAMVID), '--threads', '1')
    assert rc == 0, res
    assert res['precision'] == 'int8' and res['ort_precision'] == 'int8'
    assert res['ort_int8_vs_fp32'] > 0 and res['ort_node_fp32_ms'] > 0
    assert res['ort_threads'] == 1
    rc, err = _bench(capsys, '--bundle', str(bundle), '--precision', 'int8', '--backend',
                     'torch')
    assert rc == 2 and 'onnxruntime' in err


@pytest.mark.skipif(not (CAMVID / 'train' / 'images').is_dir(),
                    reason='CamVid train frames are not available')
def test_obstacle_bench_adds_the_int8_rows(bundle, capsys):
    rc, res = _bench(capsys, '--bundle', str(bundle), '--skip-model', '--obstacle',
                     '--backend', 'onnxruntime', '--precision', 'int8', '--camvid',
                     str(CAMVID), '--threads', '1', '--runs', '2', '--warmup', '1',
                     '--band-width', '192', '--height', '256', '--width', '384')
    assert rc == 0, res
    times, ratio = res['obstacle_ms'], res['obstacle_ratio']
    assert {'int8_drivable', 'int8_drivable_flip', 'drivable', 'flip'} <= set(times)
    for name in ('int8_drivable', 'int8_drivable_flip'):
        assert ratio[name] == pytest.approx(times[name] / times['plain'], rel=1e-6)
        assert res['obstacle_precision'][name] == 'int8'
    assert res['obstacle_precision']['drivable'] == 'fp32'


def test_profile_ort_attributes_every_node_once(bundle, tmp_path, capsys):
    out = tmp_path / 'prof'
    rc, res = _bench(capsys, '--bundle', str(bundle), '--skip-model', '--threads', '1',
                     '--profile-ort', str(out))
    assert rc == 0, res
    summary = res['ort_profile']
    doc = json.loads((out / 'ort_profile.json').read_text())
    assert summary['file'] == str(out / 'ort_profile.json') and summary['runs'] == 3
    for name in ('plain', 'node'):
        g = doc['graphs'][name]
        assert (out / g['trace']).is_file() and g['runs'] == 3 and g['run_ms'] > 0
        # every node lands in one op type and one region: both tables sum to the total,
        # up to the rounding of each entry and of the total to 4 decimals (0.5e-4 each)
        nodes = sum(r['ms'] for r in g['nodes'])
        for table in ('by_op', 'by_region'):
            assert sum(g[table].values()) == pytest.approx(
                g['kernel_ms'], abs=max(1e-3, (len(g[table]) + 1) * 0.5e-4))
        assert nodes == pytest.approx(g['kernel_ms'],
                                      abs=max(1e-3, (len(g['nodes']) + 1) * 0.5e-4))
        assert 'unknown' not in g['by_region']
        assert {r['op'] for r in g['nodes']} == set(g['by_op'])
    assert set(doc['graphs']['plain']['by_region']) == {'segmentation'}
    regions = set(doc['graphs']['node']['by_region'])
    assert {'segmentation', 'probes'} <= regions
    assert any(r.startswith('head:') and 'moose' in r for r in regions)
    node, plain = doc['graphs']['node'], doc['graphs']['plain']
    assert doc['extra_ms'] == pytest.approx(node['kernel_ms'] - plain['kernel_ms'], abs=1e-3)
    # each difference and extra_ms rounded to 4 decimals, extra_ms from two rounded totals
    assert sum(doc['extra_by_op'].values()) == pytest.approx(
        doc['extra_ms'], abs=max(1e-3, (len(doc['extra_by_op']) + 3) * 0.5e-4))
    assert summary['node_by_region'] == node['by_region']
    assert summary['profiled_overhead'] == pytest.approx(
        node['kernel_ms'] / plain['kernel_ms'], abs=1e-4)
    assert all(r[2] != 'segmentation' for r in summary['top_ood_nodes'])


def test_profile_regions_follow_the_data_flow():
    from onnx import helper, TensorProto
    from ood_seg_ros.tools.bench.ort_profile import node_regions

    def node(name, inputs, output):
        return helper.make_node('Relu', inputs[:1], [output], name=name)

    nodes = [node('/net/backbone/a', ['image'], 'f'),
             node('/net/classifier', ['f'], 'semantic'),
             node('/net/probes.0/conv', ['f'], 'p'),
             node('/net/Exp', ['p'], 'moose_mi'),
             node('/net/Log', ['f'], 'pgn_uni_p1'),
             node('/net/Sub', ['p'], 'fused_energy_moose_energy'),
             node('/net/Add', ['f'], 'probs'),
             node('/net/Dead', ['f'], 'dead')]
    outs = ['semantic', 'moose_mi', 'pgn_uni_p1', 'fused_energy_moose_energy', 'probs']
    graph = helper.make_graph(
        nodes, 'g', [helper.make_tensor_value_info('image', TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1]) for o in outs])
    assert node_regions(graph) == {
        '/net/backbone/a': 'segmentation', '/net/classifier': 'segmentation',
        '/net/probes.0/conv': 'probes', '/net/Exp': 'head:moose',
        '/net/Log': 'head:pgn', '/net/Sub': 'head:fused', '/net/Add': 'head:probs',
        '/net/Dead': 'head:unused'}


def test_profile_ort_needs_the_cpu(bundle, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    rc, err = _bench(capsys, '--bundle', str(bundle), '--skip-model', '--device', 'cuda',
                     '--profile-ort')
    assert rc == 2 and '--profile-ort' in err and len(err.strip().splitlines()) == 1
