"""
Tests for the int8 QDQ graph (:mod:`ood_seg_ros.tools.quantize`), its cache and its backends.

The graph is made from a tiny bundle, calibrated on 3 CamVid ``train`` frames. The
checks read the graph itself: which nodes consume dequantised tensors and which
tensors are quantised; the sidecar checks forge a graph the way a copy would.
"""

import json
import shutil
import types

from dataset_helpers import make_anomaly_set
from model_helpers import save_tiny_bundle
import numpy as np
import onnx
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.runtime import tensorrt_backend as TB
from ood_seg_ros.runtime.onnx_cache import onnx_sidecar, source_sha256
from ood_seg_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
from ood_seg_ros.tools import quantize as Q
import pytest
from repo_paths import CAMVID

SIZE = (64, 96)
OUTPUTS = ['probs', 'moose_entropy', 'pgn_uni_p1']
needs_camvid = pytest.mark.skipif(not (CAMVID / 'train' / 'images').is_dir(),
                                  reason='CamVid train frames are not available')
pytestmark = [needs_camvid, pytest.mark.usefixtures('torch_threads')]


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save a tiny bundle and make its int8 graph (3 calibration frames)."""
    path = save_tiny_bundle(tmp_path_factory.mktemp('q') / 'b', SIZE)
    Q.ensure_int8(path, OUTPUTS, SIZE, camvid=str(CAMVID), calib_frames=3)
    return path


def graph_facts(path):
    """(quantised node names, nodes reading a quantised weight, producers of Q inputs)."""
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n.name for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    dq_weight = {o for n in model.graph.node if n.op_type == 'DequantizeLinear'
                 and n.input[0] in inits for o in n.output}
    weighted = {n.name for n in model.graph.node if any(i in dq_weight for i in n.input)}
    quantised = [n.input[0] for n in model.graph.node if n.op_type == 'QuantizeLinear'
                 and n.input[0] not in inits]
    return model, weighted, quantised, producer, consumers


def test_calibration_frames_are_evenly_spaced_over_the_sorted_train_list():
    all_frames = Q.calibration_frames(str(CAMVID), 10 ** 6)
    assert all_frames == sorted(all_frames)
    got = Q.calibration_frames(str(CAMVID), 5)
    assert got[0] == all_frames[0] and got[-1] == all_frames[-1]
    step = (len(all_frames) - 1) / 4
    assert got == [all_frames[round(k * step)] for k in range(5)]
    with pytest.raises(OodSegError, match='calib-frames'):
        Q.calibration_frames(str(CAMVID), 0)


def test_int8_graph_quantises_the_trunk_and_not_the_score_head(bundle):
    path = Q.int8_path(bundle, OUTPUTS, SIZE)
    model, weighted, quantised, producer, consumers = graph_facts(path)
    convs = [n.name for n in model.graph.node if n.op_type == 'Conv']
    trunk_convs = [c for c in convs if c.startswith(Q.TRUNK_SCOPES)]
    assert trunk_convs and set(trunk_convs) <= weighted     # every trunk conv: int8 weights
    nodes = {n.name: n for n in model.graph.node}

    def feeds_trunk_only(name):     # the exporter's Identity aliases of shared weights
        return nodes[name].op_type == 'Identity' and all(
            c.name.startswith(Q.TRUNK_SCOPES) for o in nodes[name].output
            for c in consumers[o])

    head = [n for n in weighted if not n.startswith(Q.TRUNK_SCOPES)
            and not feeds_trunk_only(n)]
    assert head == []                                       # no score-head weight quantised
    for tensor in quantised:     # every quantised activation is a trunk tensor
        trunk_made = producer.get(tensor, '').startswith(Q.TRUNK_SCOPES)
        readers = [c for q in consumers[tensor] if q.op_type == 'QuantizeLinear'
                   for dq in consumers[q.output[0]] for c in consumers[dq.output[0]]]
        trunk_read = any(n.name.startswith(Q.TRUNK_SCOPES) for n in readers)
        assert trunk_made or trunk_read or tensor == 'image', tensor
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta['ood_seg.precision'] == 'int8'
    assert json.loads(meta['ood_seg.calibration'])['frames'] == 3


def test_kept_float_scopes_are_not_quantised(bundle, tmp_path):
    out = tmp_path / 'keep.onnx'
    Q.ensure_int8(bundle, OUTPUTS, SIZE, camvid=str(CAMVID), calib_frames=3,
                  keep_float=('/net/classifier/',), out_path=out)
    model, weighted, quantised, producer, _ = graph_facts(out)
    assert '/net/classifier/Conv' not in weighted
    assert not [t for t in quantised if producer.get(t, '').startswith('/net/classifier/')]
    _, full, full_q, full_producer, _ = graph_facts(Q.int8_path(bundle, OUTPUTS, SIZE))
    assert '/net/classifier/Conv' in full      # the default graph does quantise it
    assert [t for t in full_q if full_producer.get(t, '').startswith('/net/classifier/')]


def test_int8_sidecar_refuses_stale_and_forged_graphs(bundle, tmp_path):
    path = Q.int8_path(bundle, OUTPUTS, SIZE)
    fp32 = source_sha256(bundle, OUTPUTS, SIZE)
    assert Q.int8_mismatch(path, fp32) is None
    assert 'source hash' in Q.int8_mismatch(path, 'f' * 64)          # other weights
    record = Q.recorded_calibration(path)
    assert Q.int8_mismatch(path, fp32, dict(record, frames=4)) == \
        'calibrated on other frames or settings'
    # a foreign int8 graph (other calibration) copied in with the sidecar rewritten
    forged = tmp_path / 'b'
    shutil.copytree(bundle, forged)
    fpath = Q.int8_path(forged, OUTPUTS, SIZE)
    other = tmp_path / 'other.onnx'
    Q.ensure_int8(bundle, OUTPUTS, SIZE, camvid=str(CAMVID), calib_frames=2, out_path=other)
    shutil.copy(other, fpath)
    side = json.loads(onnx_sidecar(fpath).read_text())
    side['onnx_sha256'] = json.loads(onnx_sidecar(other).read_text())['onnx_sha256']
    onnx_sidecar(fpath).write_text(json.dumps(side))
    assert 'embedded' in Q.int8_mismatch(fpath, fp32)
    with pytest.raises(OodSegError, match='ood-seg export --int8'):
        OnnxRuntimeBackend(forged, OUTPUTS, device='cpu', threads=1, int8=True)
    # with frames the backend makes it again
    be = OnnxRuntimeBackend(forged, OUTPUTS, device='cpu', threads=1, int8=True,
                            make_int8=Q.int8_maker(str(CAMVID), 3))
    assert Q.int8_mismatch(fpath, fp32) is None and be.describe()['precision'] == 'int8'


def test_missing_int8_graph_is_one_line_naming_the_command(tmp_path):
    path = save_tiny_bundle(tmp_path / 'b', SIZE)
    with pytest.raises(OodSegError) as err:
        Q.ensure_int8(path, OUTPUTS, SIZE)
    assert 'no int8 graph' in str(err.value) or 'no usable int8 graph' in str(err.value)
    assert 'ood-seg export --int8' in str(err.value) and '\n' not in str(err.value)


def test_ort_int8_backend_runs_the_quantised_graph(bundle):
    fp = OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', threads=1)
    q = OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', threads=1, int8=True)
    assert q.onnx_path.name.endswith('_int8-cpu.onnx') and fp.onnx_path.name.endswith('_fp32.onnx')
    img = np.random.default_rng(0).integers(0, 256, SIZE + (3,), dtype=np.uint8)
    a, b = fp.infer(img), q.infer(img)
    assert set(a) == set(b)
    for k in OUTPUTS:
        assert b[k].shape == a[k].shape and np.isfinite(b[k]).all()
    assert not np.array_equal(a['probs'], b['probs'])        # int8 arithmetic, not fp32
    np.testing.assert_allclose(b['probs'].sum(0), 1.0, atol=1e-4)   # float softmax


def test_reused_graph_of_another_calibration_count_is_named_once(bundle, caplog):
    from ood_seg_ros.runtime import int8_graph
    int8_graph._NOTED.clear()
    with caplog.at_level('WARNING', logger='ood_seg_ros.runtime.int8_graph'):
        OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', threads=1, int8=True)
        Q.ensure_int8(bundle, OUTPUTS, SIZE, camvid=str(CAMVID))     # any calibration
    lines = [r.getMessage() for r in caplog.records if 'calibrated on' in r.getMessage()]
    assert len(lines) == 1
    assert f'on 3 train frames, the default is {Q.CALIB_FRAMES}' in lines[0]
    assert f'--calib-frames {Q.CALIB_FRAMES}' in lines[0]
    caplog.clear()
    int8_graph._NOTED.clear()
    with caplog.at_level('WARNING', logger='ood_seg_ros.runtime.int8_graph'):
        Q.ensure_int8(bundle, OUTPUTS, SIZE, camvid=str(CAMVID), calib_frames=3)  # asked
    assert not [r for r in caplog.records if 'calibrated on' in r.getMessage()]


class FakeTrt:
    """The parts of the TensorRT 10 API that build_engine touches, recording the calls."""

    class BuilderFlag:
        INT8, FP16 = 'INT8', 'FP16'

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 3

    class MemoryPoolType:
        WORKSPACE = 'workspace'

    def __init__(self):
        self.flags, self.created, self.parsed = set(), None, None
        fake = self

        class Config:
            def set_memory_pool_limit(self, pool, size):
                pass

            def set_flag(self, flag):
                fake.flags.add(flag)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.created = flags
                return object()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return b'engine'

        class Parser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse_from_file(self, path):
                fake.parsed = path
                return True

        self.Builder, self.OnnxParser, self.Logger = Builder, Parser, \
            types.SimpleNamespace
        self.Logger = lambda level: None
        self.Logger.WARNING = 2


@pytest.mark.parametrize('precision,flags,typed', [
    ('int8', {'INT8'}, False), ('fp16', set(), True), ('fp32', set(), False)])
def test_tensorrt_builds_int8_from_the_qdq_graph_with_the_int8_flag(
        tmp_path, precision, flags, typed):
    trt = FakeTrt()
    TB.build_engine(trt, tmp_path / 'g_int8.onnx', tmp_path / 'e.plan', precision, 64)
    assert trt.flags == flags
    assert bool(trt.created) == typed
    assert (tmp_path / 'e.plan').read_bytes() == b'engine'


def test_cli_export_int8_writes_the_graph_and_states_its_calibration(tmp_path, capsys):
    from ood_seg_ros import cli
    path = save_tiny_bundle(tmp_path / 'b', SIZE)
    rc = cli.main(['export', '--bundle', str(path), '--int8', '--outputs', 'probs',
                   '--json'])
    err = capsys.readouterr().err
    assert rc == 2 and '--camvid' in err and len(err.strip().splitlines()) == 1
    rc = cli.main(['export', '--bundle', str(path), '--int8', '--outputs', 'probs',
                   '--camvid', str(CAMVID), '--calib-frames', '2', '--json'])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res['precision'] == 'int8'
    assert res['calibration']['frames'] == 2 and res['calibration']['split'] == 'train'
    assert res['path'] == str(Q.int8_path(path, ['probs'], SIZE))
    assert 'QuantizeLinear' in res['ops'] and res['tensorrt_unsupported'] == []


def test_tensorrt_graph_has_symmetric_int8_activations_and_the_cpu_graph_uint8(bundle):
    trt = Q.ensure_int8(bundle, OUTPUTS, SIZE, camvid=str(CAMVID), calib_frames=3,
                        target='tensorrt')
    assert trt == Q.int8_path(bundle, OUTPUTS, SIZE, 'tensorrt')
    for path, dtype, zero in ((trt, onnx.TensorProto.INT8, True),
                              (Q.int8_path(bundle, OUTPUTS, SIZE), onnx.TensorProto.UINT8,
                               False)):
        model = onnx.load(str(path))
        inits = {i.name: i for i in model.graph.initializer}
        points = [inits[n.input[2]] for n in model.graph.node
                  if n.op_type == 'QuantizeLinear' and n.input[0] not in inits]
        assert points and {p.data_type for p in points} == {dtype}
        values = np.concatenate([onnx.numpy_helper.to_array(p).ravel() for p in points])
        assert (values == 0).all() == zero      # TensorRT: zero point 0 everywhere
    assert Q.recorded_calibration(trt)['activations'] == 'int8 symmetric'


def test_eval_runs_the_chosen_backend_and_precision(tmp_path, capsys):
    from ood_seg_ros import cli
    from ood_seg_ros.tools.evaluate import pipeline_miou
    from ood_seg_ros.pipeline import Pipeline
    path = save_tiny_bundle(tmp_path / 'b', SIZE)
    args = ['eval', '--bundle', str(path), '--camvid', str(CAMVID), '--limit', '2', '--json']
    assert cli.main(args + ['--backend', 'onnxruntime', '--threads', '1']) == 0
    res = json.loads(capsys.readouterr().out)
    ref = pipeline_miou(Pipeline.from_bundle(path, backend='torch', device='cpu'),
                        f'camvid:{CAMVID}', 'test', 2)
    assert res['camvid']['backend']['backend'] == 'onnxruntime'
    assert res['camvid']['miou'] == pytest.approx(ref['miou'], abs=0.01)
    assert cli.main(args + ['--precision', 'int8', '--calib-frames', '2']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['camvid']['backend']['precision'] == 'int8' and res['backend']['int8']
    assert 0.0 <= res['camvid']['miou'] <= 1.0
    # OoD sets: the JSON names the precision and the int8 graph's calibration frames
    ood = ['eval', '--bundle', str(path), '--ood-set', str(make_anomaly_set(tmp_path / 'ood')),
           '--limit', '2', '--component-scores', 'msp', '--json']
    assert cli.main(ood) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['precision'] == 'fp32' and 'int8_calibration' not in res
    assert cli.main(ood + ['--precision', 'int8', '--calib-frames', '2', '--camvid',
                           str(CAMVID)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['precision'] == 'int8'
    assert res['int8_calibration']['frames'] == 2
    assert res['int8_calibration']['split'] == 'train'
    assert cli.main(args + ['--precision', 'int8', '--backend', 'torch']) == 2
