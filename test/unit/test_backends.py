"""
Tests for the runtime backends: ONNX Runtime vs PyTorch, bad input, TensorRT cache logic.

ONNX Runtime and PyTorch (CPU, fp32) must give the same FrameResult within the
tolerances of ``test_export.py``: heatmap max |diff| <= 1e-4 (normalised units),
>= 99.5 % equal semantic pixels, the same segments (ids, boxes, areas, kept flags).
"""

import importlib.util
import json
import os
from pathlib import Path
import sys

import cv2
from model_helpers import count_bundle_json_reads, lively, sml_stats
import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.files import file_sha256
from ood_seg_ros.model import ModelConfig, OodSegNet, save_bundle
from ood_seg_ros.pipeline import Pipeline
from ood_seg_ros.runtime import engine_cache as EC
from ood_seg_ros.runtime import make_backend
from ood_seg_ros.runtime import onnx_cache as E
from ood_seg_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
from ood_seg_ros.runtime.torch_backend import TorchBackend
import pytest
from repo_paths import CAMVID
import torch

CAMVID_TEST = CAMVID / 'test' / 'images'
SIZE = (96, 128)
SMALL = {'input_size': SIZE, 'sml_stats': sml_stats(11), 'aspp_channels': 64,
         'decoder_channels': 64,
         'probe_channels': 64}
OUTPUTS = ['probs', 'moose_entropy', 'moose_mi', 'pgn_uni_p0.5', 'pgn_oh_p1']
RUNTIME = {'heatmap_score': 'moose_entropy', 'normalisation': {'moose_entropy': [1.8, 2.3]},
           'segment_threshold': 0.5, 'min_segment_px': 16,
           'meta_pgn_names': ['pgn_uni_p0.5', 'pgn_oh_p1']}
HAS_TRT = importlib.util.find_spec('tensorrt') is not None


def frame(size, index=0):
    """Return a uint8 RGB frame at ``size`` = (H, W): a CamVid test frame, else seeded noise."""
    h, w = size
    files = sorted(CAMVID_TEST.glob('*.jpg')) if CAMVID_TEST.is_dir() else []
    if files:
        img = cv2.imread(str(files[(index * 57) % len(files)]))[:, :, ::-1]
        return np.ascontiguousarray(cv2.resize(img, (w, h)))
    return np.random.default_rng(index).integers(0, 256, (h, w, 3), dtype=np.uint8)


pytestmark = pytest.mark.usefixtures('torch_threads')


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save a small random-init bundle with lively activations and a pipeline runtime."""
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp('backends') / 'b',
                       lively(OodSegNet(ModelConfig(**SMALL))), runtime=RUNTIME, half=False)


@pytest.fixture(scope='module')
def ort_backend(bundle):
    """Build the ONNX Runtime backend, one thread (exports into the bundle's derived/)."""
    return OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', threads=1)


@pytest.fixture(scope='module')
def torch_backend(bundle):
    """Build the reference PyTorch backend on CPU."""
    return TorchBackend(bundle, OUTPUTS, device='cpu')


# -- ONNX Runtime backend ----------------------------------------------------------------
def test_ort_backend_matches_torch_backend(ort_backend, torch_backend, bundle):
    assert ort_backend.input_size == torch_backend.input_size == SIZE
    assert list(ort_backend.output_names) == list(torch_backend.output_names)
    assert ort_backend.onnx_path.parent == Path(bundle) / 'derived'
    for i in range(2):
        img = frame(SIZE, i)
        a, b = ort_backend.infer(img), torch_backend.infer(img)
        assert set(a) == set(b) == {'semantic'} | set(OUTPUTS)
        for k in a:
            assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        assert a['semantic'].shape == SIZE and a['semantic'].dtype == np.uint8
        assert a['probs'].shape == (11, SIZE[0] // 4, SIZE[1] // 4)
        assert (a['semantic'] == b['semantic']).mean() >= 0.995
        for k in OUTPUTS:
            assert np.abs(a[k] - b[k]).max() <= 1e-5 + 5e-5 * np.abs(b[k]).max(), k
    desc = ort_backend.describe()
    assert desc['backend'] == 'onnxruntime' and desc['providers'] == ['CPUExecutionProvider']


def test_ort_backend_reuses_and_refreshes_cache(ort_backend, bundle):
    path = ort_backend.onnx_path
    stamp = path.stat().st_mtime_ns
    again = OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', threads=1)
    assert again.onnx_path == path and path.stat().st_mtime_ns == stamp  # cache hit
    past = (Path(bundle) / 'weights.pt').stat().st_mtime - 100
    os.utime(path, (past, past))  # an old time alone is no reason to export again
    OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', threads=1)
    assert path.stat().st_mtime < past + 1


def _other_bundle(tmp_path, seed=1, **config):
    """Save a bundle of the same architecture with other (seeded) weights."""
    torch.manual_seed(seed)
    return save_bundle(tmp_path / f'other{seed}',
                       lively(OodSegNet(ModelConfig(**{**SMALL, **config})), seed=seed),
                       runtime=RUNTIME, half=False)


def test_ort_backend_refuses_or_rebuilds_a_graph_of_another_network(tmp_path, caplog):
    own, other = _other_bundle(tmp_path, 2), _other_bundle(tmp_path, 3)
    ref = TorchBackend(own, OUTPUTS, device='cpu')
    img = frame(SIZE, 1)
    theirs = OnnxRuntimeBackend(other, OUTPUTS, device='cpu', threads=1)
    # 1. Another bundle's graph given explicitly: refused with one line.
    with pytest.raises(OodSegError, match='exported from another network'):
        OnnxRuntimeBackend(own, OUTPUTS, device='cpu', onnx_path=theirs.onnx_path)
    # 2. The same graph copied into this bundle's cache, sidecar included, older than
    #    the weights: detected by hash, logged and rebuilt; the outputs are this network's.
    mine = OnnxRuntimeBackend(own, OUTPUTS, device='cpu', threads=1)
    assert (mine.infer(img)['semantic'] == ref.infer(img)['semantic']).mean() >= 0.995
    for src in (theirs.onnx_path, E.onnx_sidecar(theirs.onnx_path)):
        dst = mine.onnx_path.parent / src.name
        dst.write_bytes(src.read_bytes())
        os.utime(dst, (1e9, 1e9))
    assert (Path(own) / 'derived' / theirs.onnx_path.name).exists()
    with caplog.at_level('WARNING', logger='ood_seg_ros.runtime.onnx_cache'):
        rebuilt = OnnxRuntimeBackend(own, OUTPUTS, device='cpu', threads=1)
    assert 'other weights, config or export options' in caplog.text
    a, b = rebuilt.infer(img), ref.infer(img)
    assert (a['semantic'] == b['semantic']).mean() >= 0.995
    assert np.abs(a['moose_entropy'] - b['moose_entropy']).max() < 1e-4
    # 3. The foreign graph without a sidecar, renamed to this bundle's cache name.
    mine.onnx_path.write_bytes(theirs.onnx_path.read_bytes())
    E.onnx_sidecar(mine.onnx_path).unlink()
    caplog.clear()
    with caplog.at_level('WARNING', logger='ood_seg_ros.runtime.onnx_cache'):
        OnnxRuntimeBackend(own, OUTPUTS, device='cpu', threads=1)
    assert 'no provenance sidecar' in caplog.text
    # 4. A graph without ood_seg metadata (not made by ood-seg export): refused.
    import onnx
    graph = onnx.load(str(theirs.onnx_path))
    del graph.metadata_props[:]
    bare = tmp_path / 'bare.onnx'
    onnx.save(graph, str(bare))
    with pytest.raises(OodSegError, match='no ood_seg provenance'):
        OnnxRuntimeBackend(own, OUTPUTS, device='cpu', onnx_path=bare)


def test_ort_backend_refuses_a_graph_of_another_input_size(tmp_path):
    own = _other_bundle(tmp_path, 4)
    small = E.export_onnx(own, OUTPUTS, tmp_path / 'small.onnx', input_size=(64, 64))
    with pytest.raises(OodSegError, match='fixed input size 64x64'):
        OnnxRuntimeBackend(own, OUTPUTS, device='cpu', onnx_path=small)
    be = OnnxRuntimeBackend(own, OUTPUTS, device='cpu', onnx_path=small, input_size=(64, 64))
    assert be.input_size == (64, 64)  # asked for explicitly: fine
    # A 64x64 graph (with its sidecar) planted under the cache name of the bundle's size.
    cached = E.default_onnx_path(own, OUTPUTS, SIZE)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(small.read_bytes())
    E.onnx_sidecar(cached).write_bytes(E.onnx_sidecar(small).read_bytes())
    assert OnnxRuntimeBackend(own, OUTPUTS, device='cpu').input_size == SIZE


def test_tensorrt_cache_key_follows_the_weights(tmp_path):
    """A stand-in engine built for the old graph is not loaded after the weights change."""
    own = _other_bundle(tmp_path, 5)
    wanted = E.canonical_outputs(OUTPUTS)

    def current_key():
        onnx_path = E.ensure_onnx(own, wanted, SIZE, fp16=True)
        return EC.engine_key(file_sha256(onnx_path), 'fp16', SIZE, 'NVIDIA H200', (9, 0),
                             '10.3.0')
    old = current_key()
    engine = tmp_path / 'engines' / EC.engine_file_name(old)
    engine.parent.mkdir()
    engine.write_bytes(b'stand-in serialized engine')
    EC.write_sidecar(engine, old)
    assert EC.plan_engine(engine, current_key()) == ('load', 'cache hit')
    wpath = Path(own) / 'weights.pt'
    before = wpath.stat().st_mtime
    state = torch.load(wpath, weights_only=True)
    state = {k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, wpath)
    os.utime(wpath, (before - 3600, before - 3600))  # older than the cached graph
    new = current_key()
    assert new['onnx_sha256'] != old['onnx_sha256']
    action, reason = EC.plan_engine(engine, new)
    assert action == 'build' and 'onnx_sha256' in reason
    assert EC.engine_file_name(new) != engine.name


def test_ort_backend_repairs_corrupt_cache_file(bundle):
    first = OnnxRuntimeBackend(bundle, ['msp'], device='cpu', threads=1)
    first.onnx_path.write_bytes(b'garbage, not a protobuf')
    os.utime(first.onnx_path)  # still 'fresh' by time: the load must fail and re-export
    be = OnnxRuntimeBackend(bundle, ['msp'], device='cpu', threads=1)
    out = be.infer(frame(SIZE))
    assert out['msp'].shape == (SIZE[0] // 4, SIZE[1] // 4)


def test_ort_backend_bad_onnx_files(bundle, ort_backend, tmp_path):
    with pytest.raises(OodSegError, match='does not exist'):
        OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', onnx_path=tmp_path / 'none.onnx')
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'\x08\x01' + os.urandom(200))
    with pytest.raises(OodSegError, match='cannot load'):
        OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', onnx_path=bad)
    cut = tmp_path / 'cut.onnx'
    cut.write_bytes(ort_backend.onnx_path.read_bytes()[:100000])  # truncated download
    with pytest.raises(OodSegError, match='cannot load'):
        OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', onnx_path=cut)
    with pytest.raises(OodSegError, match='lacks the outputs'):
        OnnxRuntimeBackend(bundle, OUTPUTS + ['msp'], device='cpu',
                           onnx_path=ort_backend.onnx_path)
    with pytest.raises(OodSegError, match='fixed input size'):
        OnnxRuntimeBackend(bundle, OUTPUTS, device='cpu', onnx_path=ort_backend.onnx_path,
                           input_size=(128, 160))


def test_ort_backend_device_and_precision_errors(bundle):
    import onnxruntime as ort
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        with pytest.raises(OodSegError, match='CUDAExecutionProvider'):
            OnnxRuntimeBackend(bundle, OUTPUTS, device='cuda')
        with pytest.raises(OodSegError, match='fp16'):
            OnnxRuntimeBackend(bundle, OUTPUTS, device='auto', fp16=True)
    with pytest.raises(OodSegError, match='unknown device'):
        OnnxRuntimeBackend(bundle, OUTPUTS, device='tpu')


@pytest.mark.parametrize('bad', [
    np.zeros((96, 128, 3), np.float32),           # wrong dtype
    np.zeros((96, 128, 4), np.uint8),             # wrong channel count
    np.zeros((96, 128), np.uint8),                # grey
    np.zeros((0, 0, 3), np.uint8),                # empty
    np.zeros((64, 128, 3), np.uint8),             # wrong size for the backend
    [[0, 0, 0]],                                  # not an array
])
def test_ort_backend_rejects_bad_images(ort_backend, bad):
    with pytest.raises(OodSegError):
        ort_backend.infer(bad)


def test_make_backend_builds_onnxruntime(bundle):
    be = make_backend('onnxruntime', bundle, OUTPUTS, device='cpu', input_size=(64, 96),
                      threads=1)
    assert isinstance(be, OnnxRuntimeBackend) and be.input_size == (64, 96)
    assert '64x96' in be.onnx_path.name
    assert be.infer(frame((64, 96)))['semantic'].shape == (64, 96)


# -- pipeline: ONNX Runtime vs PyTorch -------------------------------------------------
def test_pipeline_onnxruntime_equals_torch(bundle):
    pipes = {name: Pipeline.from_bundle(bundle, backend=name, device='cpu', threads=1)
             if name == 'onnxruntime' else
             Pipeline.from_bundle(bundle, backend=name, device='cpu')
             for name in ('onnxruntime', 'torch')}
    n_segments = 0
    for i in range(2):
        img = frame((180, 240), i)  # frame larger than the model input: resized
        a = pipes['onnxruntime'].process(img)
        b = pipes['torch'].process(img)
        assert a.heatmap.shape == b.heatmap.shape == (180, 240)
        assert np.abs(a.heatmap - b.heatmap).max() <= 1e-4
        assert (a.semantic == b.semantic).mean() >= 0.995
        assert [(s.id, s.bbox, s.area, s.kept) for s in a.segments] == \
            [(s.id, s.bbox, s.area, s.kept) for s in b.segments]
        for sa, sb in zip(a.segments, b.segments):
            assert abs(sa.score - sb.score) <= 1e-4
        assert (a.instances == b.instances).all()
        n_segments += len(a.segments)
    assert n_segments > 0  # the comparison covered real segments


@pytest.mark.parametrize('bad', [
    np.zeros((120, 160, 3), np.uint16), np.zeros((120, 160, 1), np.uint8),
    np.zeros((0, 160, 3), np.uint8), np.zeros((120, 160, 3, 1), np.uint8)])
def test_pipeline_rejects_bad_frames(bundle, bad):
    pipe = Pipeline.from_bundle(bundle, backend='onnxruntime', device='cpu', threads=1)
    with pytest.raises(OodSegError):
        pipe.process(bad)


# -- TensorRT: cache logic (pure Python) and the missing-TensorRT error ---------------------
def key(**change):
    """Build a cache key for an H100, TensorRT 10.3, fp16, 360x480, then apply changes."""
    k = EC.engine_key('ab' * 32, 'fp16', (360, 480), 'NVIDIA H100 80GB HBM3', (9, 0),
                      '10.3.0')
    k.update(change)
    return k


def test_engine_key_and_file_name():
    k = key()
    assert k['compute_capability'] == '9.0' and k['input_size'] == [360, 480]
    name = EC.engine_file_name(k)
    assert name == 'nvidia-h100-80gb-hbm3_sm90_trt10.3.0_fp16_360x480_abababababab.engine'
    assert EC.engine_file_name(key(precision='int8')) != name
    assert EC.engine_file_name(key(input_size=[720, 960])) != name
    with pytest.raises(OodSegError, match='precision'):
        EC.engine_key('00', 'bf16', (1, 1), 'gpu', (8, 7), '10.0')


def test_engine_cache_sidecar_mismatch(tmp_path):
    engine = tmp_path / EC.engine_file_name(key())
    assert EC.plan_engine(engine, key()) == ('build', f'no engine {engine.name} yet')
    with pytest.raises(OodSegError, match='does not exist'):
        EC.plan_engine(engine, key(), rebuild=False)
    engine.write_bytes(b'fake serialized engine')
    action, reason = EC.plan_engine(engine, key())
    assert action == 'build' and 'no sidecar' in reason
    EC.write_sidecar(engine, key())
    side = json.loads(EC.sidecar_path(engine).read_text())
    assert side['tensorrt_version'] == '10.3.0'
    assert side['engine_sha256'] == file_sha256(engine)
    assert EC.plan_engine(engine, key()) == ('load', 'cache hit')
    assert EC.plan_engine(engine, key(), force=True)[0] == 'build'
    for field, value in [('gpu_name', 'Orin'), ('compute_capability', '8.7'),
                         ('tensorrt_version', '10.7.0'), ('precision', 'int8'),
                         ('input_size', [720, 960]), ('onnx_sha256', 'cd' * 32)]:
        action, reason = EC.plan_engine(engine, key(**{field: value}))
        assert action == 'build' and reason.startswith(field), (field, reason)
        with pytest.raises(OodSegError) as err:
            EC.plan_engine(engine, key(**{field: value}), rebuild=False)
        assert field in str(err.value) and 'force-engine-update' in str(err.value)
    engine.write_bytes(b'fake serialized engine, truncated')  # replaced behind our back
    action, reason = EC.plan_engine(engine, key())
    assert action == 'build' and 'SHA-256' in reason
    EC.sidecar_path(engine).write_text('{not json')
    assert 'unreadable sidecar' in EC.plan_engine(engine, key())[1]


def test_missing_tensorrt_gives_one_clear_error(bundle, monkeypatch, capsys):
    from ood_seg_ros import cli
    from ood_seg_ros.runtime import tensorrt_backend as TB
    monkeypatch.setitem(sys.modules, 'tensorrt', None)  # import tensorrt -> ImportError
    with pytest.raises(OodSegError, match='pip install tensorrt') as err:
        TB.TensorRTBackend(bundle, OUTPUTS)
    assert 'JetPack' in str(err.value)
    with pytest.raises(OodSegError, match='TensorRT is not installed'):
        make_backend('tensorrt', bundle, OUTPUTS)
    assert cli.main(['export', '--bundle', str(bundle), '--format', 'tensorrt']) == 2
    assert 'pip install tensorrt' in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TRT, reason='TensorRT is not installed')
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU')
def test_tensorrt_engine_matches_torch(bundle):
    from ood_seg_ros.runtime.tensorrt_backend import TensorRTBackend
    trt_be = TensorRTBackend(bundle, OUTPUTS, fp16=False)
    assert trt_be.engine_path.exists() and EC.sidecar_path(trt_be.engine_path).exists()
    ref = TorchBackend(bundle, OUTPUTS, device='cpu')
    img = frame(SIZE)
    a, b = trt_be.infer(img), ref.infer(img)
    assert (a['semantic'] == b['semantic']).mean() >= 0.995
    for k in OUTPUTS:
        assert np.abs(a[k] - b[k]).max() <= 1e-3 * (1 + np.abs(b[k]).max()), k
    again = TensorRTBackend(bundle, OUTPUTS, fp16=False, rebuild=False)  # cache hit
    assert again.engine_path == trt_be.engine_path


@pytest.mark.parametrize('threads', [1, 2])
def test_node_thread_setting_reaches_the_ort_session(bundle, threads):
    from ood_seg_ros.pipeline import PipelineSettings
    s = PipelineSettings(str(bundle), backend='onnxruntime', device='cpu', threads=threads)
    pipe = Pipeline.from_settings(s)
    opts = pipe.backend.session.get_session_options()
    assert opts.intra_op_num_threads == threads
    assert pipe.backend.describe()['threads'] == threads


@pytest.mark.parametrize('backend', ['onnxruntime', 'torch'])
def test_node_start_up_reads_bundle_json_once(bundle, ort_backend, monkeypatch, backend):
    """The node's own start-up path (settings -> pipeline -> backend -> ONNX cache)."""
    from ood_seg_ros.pipeline import PipelineSettings
    from ood_seg_ros.ros.node import OodNodeBody
    settings = PipelineSettings(bundle=str(bundle), backend=backend, device='cpu', threads=1)
    reads = count_bundle_json_reads(monkeypatch)    # ort_backend exported the node's graph
    pipe = OodNodeBody._make_pipeline((settings, 1))    # a cache hit, one warm-up run
    assert pipe.backend.name == backend
    if backend == 'onnxruntime':        # the cached graph, not a new export
        assert pipe.backend.onnx_path == ort_backend.onnx_path
    assert reads == [str(bundle / 'bundle.json')]


def test_the_read_counter_sees_every_read(bundle, monkeypatch):
    from ood_seg_ros.model.bundle import Bundle, read_bundle_json
    reads = count_bundle_json_reads(monkeypatch)
    read_bundle_json(bundle)
    Bundle.read(bundle)
    json.loads((bundle / 'bundle.json').read_text())
    with open(bundle / 'bundle.json') as f:
        f.read()
    assert len(reads) == 4
