"""
Files the product reads run no code: pickle payloads are refused with one clear line.

Every payload below, if unpickled with ``weights_only=False``, creates a marker file; the
tests check both the error and that the marker was never created.
"""


from ood_seg_ros.errors import OodSegError
from ood_seg_ros.model import load_bundle, ModelConfig, OodSegNet, save_bundle
from ood_seg_ros.tools.train.loop import load_checkpoint
import pytest
from repo_paths import CAMVID
import torch

SMALL = {'input_size': (64, 64), 'aspp_channels': 16, 'decoder_channels': 16,
         'low_level_project': 8, 'probe_channels': 16}


class Payload:
    """Unpickling this object opens (creates) ``marker``: arbitrary code from a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def _save_payload(path, marker, extra=None):
    torch.save({**(extra or {}), 'model': {'w': torch.zeros(2)}, 'evil': Payload(marker)},
               path)


def test_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """The test payload is live: a plain unpickle creates the marker (control)."""
    marker = tmp_path / 'pwned'
    _save_payload(tmp_path / 'x.pt', marker)
    torch.load(tmp_path / 'x.pt', weights_only=False)
    assert marker.exists()


def test_checkpoint_payload_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'checkpoint.pt'
    _save_payload(path, marker, {'opt': {}, 'scaler': {}, 'epoch': 1, 'step': 1,
                                 'best': 0.0, 'cfg': {'stage': 'base'}})
    with pytest.raises(OodSegError, match='refused to unpickle') as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and '\n' not in str(err.value)
    assert not marker.exists()


def test_checkpoint_of_plain_state_loads(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / 'checkpoint.pt'
    torch.save({'model': net.state_dict(), 'opt': opt.state_dict(),
                'scaler': torch.amp.GradScaler('cuda', enabled=False).state_dict(),
                'epoch': 1, 'step': 1, 'best': 0.5, 'cfg': {'stage': 'base', 'crop': (1, 2)},
                'history': [{'loss': 1.0}], 'rng': {'torch': torch.get_rng_state()}}, path)
    state = load_checkpoint(path)
    assert state['step'] == 1 and torch.equal(state['rng']['torch'], torch.get_rng_state())
    with pytest.raises(OodSegError, match='missing entries'):
        torch.save({'model': {}}, path)
        load_checkpoint(path)


@pytest.mark.data
def test_train_resume_refuses_a_crafted_checkpoint(tmp_path):
    from ood_seg_ros.tools.train.loop import TrainConfig, Trainer
    out = tmp_path / 'run'
    out.mkdir()
    marker = tmp_path / 'pwned'
    _save_payload(out / 'checkpoint.pt', marker)
    cfg = TrainConfig(stage='base', camvid=str(CAMVID), train_splits=['train'],
                      val_split='val', out=str(out), epochs=1, batch_size=2, crop=[64, 64],
                      subset=2, device='cpu', amp=False, model={'output_stride': 16})
    with pytest.raises(OodSegError, match='refused to unpickle'):
        Trainer(cfg, resume=True, log=lambda *_: None)
    assert not marker.exists()


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    return save_bundle(tmp_path / 'b', OodSegNet(ModelConfig(**SMALL)), half=False)


def test_weights_payload_is_refused(bundle, tmp_path):
    marker = tmp_path / 'pwned'
    state = torch.load(bundle / 'weights.pt', weights_only=True)
    torch.save({**state, 'evil': Payload(marker)}, bundle / 'weights.pt')
    with pytest.raises(OodSegError, match='cannot read .*weights.pt'):
        load_bundle(bundle)
    assert not marker.exists()


@pytest.mark.parametrize('name', ['bundle.json', 'meta.json'])
def test_pickle_in_a_json_file_is_a_clear_error(bundle, tmp_path, name):
    import pickle
    from ood_seg_ros.meta import MetaClassifier
    marker = tmp_path / 'pwned'
    (bundle / name).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(OodSegError, match='not valid JSON'):
        if name == 'meta.json':
            MetaClassifier.load(bundle / name)
        else:
            load_bundle(bundle)
    assert not marker.exists()


def test_pickle_as_onnx_cache_file_is_rebuilt_not_run(bundle, tmp_path):
    import pickle
    from ood_seg_ros.runtime import onnx_cache as E
    from ood_seg_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
    marker = tmp_path / 'pwned'
    path = E.ensure_onnx(bundle, ['msp'], SMALL['input_size'])
    path.write_bytes(pickle.dumps(Payload(marker)))
    be = OnnxRuntimeBackend(bundle, ['msp'], device='cpu', threads=1)
    assert be.onnx_path == path and E.onnx_mismatch(
        path, E.source_sha256(bundle, ['msp'], SMALL['input_size'])) is None
    evil = tmp_path / 'evil.onnx'
    evil.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(OodSegError, match='cannot load'):
        OnnxRuntimeBackend(bundle, ['msp'], device='cpu', onnx_path=evil)
    assert not marker.exists()


def test_foreign_onnx_cache_with_a_rewritten_sidecar_is_exported_again(bundle, tmp_path):
    """A graph of another network, its sidecar forged (source hash, file hash): re-export."""
    import json
    import shutil
    import numpy as np
    from ood_seg_ros.runtime import onnx_cache as E
    from ood_seg_ros.files import file_sha256
    from ood_seg_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
    size = SMALL['input_size']
    path = E.ensure_onnx(bundle, ['msp'], size)
    torch.manual_seed(1)
    other = save_bundle(tmp_path / 'other', OodSegNet(ModelConfig(**SMALL)).eval(),
                        half=False)
    foreign = E.export_onnx(other, ['msp'], tmp_path / 'foreign.onnx', size)
    shutil.copy(foreign, path)
    side = E.onnx_sidecar(path)
    doc = json.loads(side.read_text())
    doc['onnx_sha256'] = file_sha256(path)          # the forger recomputes the file hash
    side.write_text(json.dumps(doc))
    expected = E.source_sha256(bundle, ['msp'], size)
    assert 'embedded in the graph' in E.onnx_mismatch(path, expected)
    be = OnnxRuntimeBackend(bundle, ['msp'], device='cpu', threads=1)
    assert E.onnx_mismatch(path, expected) is None
    assert E.graph_metadata(path)['ood_seg.source_sha256'] == expected
    # the graph in use is this bundle's network: same output as the torch model
    net = load_bundle(bundle, outputs=['msp']).model.eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        ref = net(x)['msp'].numpy()
    got = be.session.run(['msp'], {be.input_name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
