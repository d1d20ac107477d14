"""Tests of the EfficientNet-Lite backbone, DeepLabv3+ with probes, and the model bundle."""

import json

from model_helpers import sml_stats
import numpy as np
from ood_seg_ros import scores as S
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.model import load_bundle, ModelConfig, OodSegNet, save_bundle
from ood_seg_ros.model.backbones import Backbone, backbone_names, build_backbone
from ood_seg_ros.model.backbones.efficientnet_lite import (
    EfficientNetLite, imagenet_weights_path, load_imagenet_weights)
from ood_seg_ros.model.bundle import BUNDLE_JSON, WEIGHTS
from ood_seg_ros.model.config import SML_MEMBERS
import pytest
from repo_paths import COCO
import torch
from torch import nn
import torch.nn.functional as F

SIZE = (96, 128)


pytestmark = pytest.mark.usefixtures('torch_threads')  # one thread: small, shared CPU


def _cfg(**kw):
    """Return a small config for tests (with SML statistics, so every score exists)."""
    kw.setdefault('sml_stats', sml_stats(len(kw.get('class_names', range(11)))))
    kw.setdefault('outputs', ['probs'] + list(S.ALL_SCORES))
    return ModelConfig(input_size=SIZE, **kw)


def _randomise_bn(model, seed=0):
    """Give every BatchNorm non-trivial running statistics (so a skipped buffer shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


# ---- backbone --------------------------------------------------------------------------

@pytest.mark.parametrize('variant', ['lite0', 'lite1', 'lite2'])
def test_backbone_loads_every_imagenet_tensor(variant):
    path = imagenet_weights_path(variant)
    state = torch.load(path, map_location='cpu', weights_only=True)
    net = EfficientNetLite(variant, with_classifier=True)
    counts = load_imagenet_weights(net)
    assert counts['tensors'] == len(state)
    assert counts['parameters'] == sum(v.numel() for v in state.values())
    own = net.state_dict()
    assert set(own) == set(state)  # every tensor of the file used, nothing left over
    for k, v in state.items():
        assert torch.equal(own[k], v), k
    # Without the ImageNet head: the head is loaded temporarily, then dropped again.
    seg = EfficientNetLite(variant)
    load_imagenet_weights(seg, path=path)
    assert not seg.has_classifier
    seg_state = seg.state_dict()
    assert set(seg_state) < set(state)
    for k, v in seg_state.items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(OodSegError, match='without its ImageNet classifier'):
        seg.classify(torch.zeros(1, 3, 64, 64))


@pytest.fixture(scope='module')
def lite0_state():
    """Load the lite0 ImageNet state dict."""
    return torch.load(imagenet_weights_path('lite0'), map_location='cpu', weights_only=True)


def _write(tmp_path, state, name):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_backbone_rejects_missing_tensor(tmp_path, lite0_state):
    state = dict(lite0_state)
    key = '_blocks.3._project_conv.weight'
    del state[key]
    path = _write(tmp_path, state, 'missing.pth')
    with pytest.raises(OodSegError, match=r'1 missing') as err:
        load_imagenet_weights(EfficientNetLite('lite0', with_classifier=True), path=path)
    assert key in str(err.value) and 'missing.pth' in str(err.value)


def test_backbone_rejects_wrong_shape(tmp_path, lite0_state):
    state = dict(lite0_state)
    key = '_blocks.5._bn1.running_var'
    state[key] = torch.ones(state[key].numel() + 1)
    path = _write(tmp_path, state, 'shape.pth')
    with pytest.raises(OodSegError, match='shape') as err:
        load_imagenet_weights(EfficientNetLite('lite0'), path=path)
    assert key in str(err.value)


def test_backbone_rejects_extra_tensor(tmp_path, lite0_state):
    state = dict(lite0_state)
    state['_blocks.99._extra.weight'] = torch.zeros(3)
    path = _write(tmp_path, state, 'extra.pth')
    with pytest.raises(OodSegError, match='1 unused') as err:
        load_imagenet_weights(EfficientNetLite('lite0'), path=path)
    assert '_blocks.99._extra.weight' in str(err.value)


def test_backbone_rejects_wrong_variant_and_bad_file(tmp_path, lite0_state):
    path = _write(tmp_path, lite0_state, 'lite0.pth')
    with pytest.raises(OodSegError, match='does not fit EfficientNet-lite2'):
        load_imagenet_weights(EfficientNetLite('lite2'), path=path)
    bad = tmp_path / 'garbage.pth'
    bad.write_bytes(b'not a torch file')
    with pytest.raises(OodSegError, match='cannot read backbone weights'):
        load_imagenet_weights(EfficientNetLite('lite0'), path=str(bad))
    with pytest.raises(OodSegError, match='unknown backbone'):
        EfficientNetLite('lite7')
    with pytest.raises(OodSegError, match='output_stride'):
        EfficientNetLite('lite0', output_stride=4)


def test_backbone_feature_shapes():
    net = EfficientNetLite('lite0', output_stride=16).eval()
    with torch.no_grad():
        low, high = net(torch.zeros(1, 3, 96, 128))
    assert low.shape == (1, 24, 24, 32)
    assert high.shape == (1, 320, 6, 8)
    net8 = EfficientNetLite('lite2', output_stride=8).eval()
    with torch.no_grad():
        low, high = net8(torch.zeros(1, 3, 64, 96))
    assert low.shape == (1, 24, 16, 24)
    assert high.shape == (1, 352, 8, 12)


@pytest.mark.parametrize('name', backbone_names())
def test_registered_backbone_keeps_the_channel_contract(name):
    """Every registered backbone states the channels its forward really returns."""
    net = build_backbone(name, 16).eval()
    assert isinstance(net, Backbone)
    with torch.no_grad():
        low, high = net(torch.zeros(1, 3, 64, 96))
    assert low.shape == (1, net.low_level_channels, 16, 24)
    assert high.shape == (1, net.out_channels, 4, 6)
    cfg = ModelConfig(input_size=(64, 96), backbone=name, aspp_channels=16,
                      decoder_channels=16, probe_channels=16, low_level_project=8,
                      outputs=['probs', 'msp'])
    with torch.no_grad():
        out = OodSegNet(cfg).eval()(torch.rand(1, 3, 64, 96))
    assert out['probs'].shape == (1, 11, 16, 24)


def test_unknown_backbone_is_one_clear_error():
    with pytest.raises(OodSegError, match="unknown backbone 'resnet50'; choose one of lite0"):
        build_backbone('resnet50')
    with pytest.raises(OodSegError, match='backbone must be one of lite0'):
        ModelConfig(input_size=SIZE, backbone='resnet50').validate()


# Expected ImageNet classes for COCO sample images (zebra, elephants, bear).
IMAGENET_CASES = {
    '000000000034.jpg': {340},
    '000000000154.jpg': {340},
    '000000000263.jpg': {101, 385, 386},
    '000000000312.jpg': {101, 385, 386},
    '000000000502.jpg': {294, 295, 296, 297},
}


@pytest.mark.data
@pytest.mark.parametrize('output_stride', [16, 32])
def test_lite0_imagenet_top5_on_coco_animals(output_stride):
    images = COCO / 'images'
    if not images.is_dir():
        pytest.skip(f'shared data not found at {images} (needs ../shared/data)')
    import cv2
    net = EfficientNetLite('lite0', output_stride, with_classifier=True)
    load_imagenet_weights(net)
    net.eval()
    xs = []
    for name in IMAGENET_CASES:
        bgr = cv2.imread(str(images / name))
        assert bgr is not None, name
        rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (224, 224),
                         interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
        xs.append((x - 0.5) / 0.5)
    with torch.no_grad():
        logits = net.classify(torch.stack(xs))
    assert logits.shape == (len(xs), 1000)
    top5 = logits.topk(5, 1).indices.tolist()
    for (name, want), got in zip(IMAGENET_CASES.items(), top5):
        assert want & set(got), f'{name}: top-5 {got}, expected one of {sorted(want)}'


# ---- DeepLabv3+ ------------------------------------------------------------------------

@pytest.mark.parametrize('output_stride', [16, 8])
def test_deeplab_outputs_names_shapes_and_values(output_stride):
    torch.manual_seed(0)
    model = _randomise_bn(OodSegNet(_cfg(output_stride=output_stride))).eval()
    c = model.config.n_classes
    assert model.output_names() == ['semantic', 'probs'] + list(S.ALL_SCORES)
    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        out = model(x)
        logits_low, psi, probe_low = model.features(x, with_probes=True)
        phi = model.features_deep(x, with_probes=False)[2]
        deep = S.log_deep_pgn(logits_low, psi, phi, model.deep_layer(), S.DEEP_PGN_SCORES)
    assert list(out) == model.output_names()
    assert out['semantic'].shape == (1, *SIZE) and out['semantic'].dtype == torch.int32
    assert out['probs'].shape == (1, c, 24, 32) and out['probs'].dtype == torch.float32
    for name in S.ALL_SCORES:
        assert out[name].shape == (1, 24, 32), name
        assert out[name].dtype == torch.float32, name
        assert torch.isfinite(out[name]).all(), name
    assert logits_low.shape == (1, c, 24, 32)
    assert psi.shape == (1, model.config.decoder_channels, 24, 32)
    aspp_hw = (6, 8) if output_stride == 16 else (12, 16)
    assert len(probe_low) == 4 and all(z.shape == (1, c, *aspp_hw) for z in probe_low)
    # Values: the graph's outputs are the score functions applied to its own tensors.
    assert torch.allclose(out['probs'].sum(1), torch.ones(1, 24, 32), atol=1e-5)
    assert torch.allclose(out['probs'], F.softmax(logits_low, 1), atol=1e-6)
    up = F.interpolate(logits_low, size=SIZE, mode='bilinear', align_corners=False)
    assert torch.equal(out['semantic'].long(), up.argmax(1))
    st = model.config.sml_stats['members']
    stats = [(torch.tensor(st[m]['mean']), torch.tensor(st[m]['std'])) for m in SML_MEMBERS]
    ref = S.global_scores(logits_low, S.GLOBAL_SCORES, stats[-1])
    members = [F.interpolate(z, size=(24, 32), mode='bilinear', align_corners=False)
               for z in probe_low] + [logits_low]
    ref.update(S.moose_scores(members, S.MOOSE_SCORES, stats))
    ref.update(S.log_pgn(logits_low, psi, S.ALL_PGN_SCORES))
    ref.update(deep)
    fstats = {k: (v['mean'], v['std']) for k, v in model.config.sml_stats['scores'].items()}
    for name in S.FUSED_SCORES:
        ref[name] = S.fused_score(ref, S.SCORES[name].members, fstats)
    label = logits_low.argmax(1)
    for name in S.SPATIAL_SCORES:
        base, kind = S.split_spatial(name)
        ref[name] = S.spatial_postprocess(ref[base], label, kind, S.gaussian_kernel())
    for name in S.ALL_SCORES:
        assert torch.allclose(out[name], ref[name], atol=1e-4), name


def test_deeplab_output_selection():
    model = OodSegNet(_cfg()).eval()
    x = torch.rand(1, 3, 64, 96)
    model.set_outputs([])
    assert model.output_names() == ['semantic']
    with torch.no_grad():
        out = model(x)
    assert list(out) == ['semantic'] and out['semantic'].shape == (1, 64, 96)
    with pytest.raises(OodSegError, match='unknown network outputs'):
        model.set_outputs(['msp', 'pgn_oh_p3'])
    with pytest.raises(OodSegError):
        OodSegNet(_cfg(), outputs=['nope'])
    # Order follows the canonical order, whatever the request order.
    model.set_outputs(['pgn_uni_p2', 'logits', 'msp'])
    assert model.output_names() == ['semantic', 'logits', 'msp', 'pgn_uni_p2']
    with torch.no_grad():
        out = model(x)
    assert list(out) == model.output_names()
    assert out['logits'].shape == (1, model.config.n_classes, 64, 96)
    assert torch.equal(out['semantic'].long(), out['logits'].argmax(1))


def test_probes_not_run_without_moose_outputs(monkeypatch):
    model = OodSegNet(_cfg()).eval()

    def boom(*args, **kwargs):
        raise RuntimeError('probe ran')

    for probe in model.probes:
        monkeypatch.setattr(probe, 'forward', boom)
    x = torch.rand(1, 3, 64, 96)
    model.set_outputs(['probs'] + list(S.GLOBAL_SCORES) + list(S.ALL_PGN_SCORES))
    with torch.no_grad():
        out = model(x)
    assert set(out) == {'semantic', 'probs'} | set(S.GLOBAL_SCORES) | set(S.ALL_PGN_SCORES)
    model.set_outputs(['moose_mi'])  # the patch is effective: MOoSe does run the probes
    with pytest.raises(RuntimeError, match='probe ran'):
        with torch.no_grad():
            model(x)


def test_probes_only_training_leaves_base_untouched():
    torch.manual_seed(1)
    model = _randomise_bn(OodSegNet(_cfg()))
    base_before = {k: v.clone() for k, v in model.state_dict().items()
                   if not k.startswith('probes.')}
    probe_before = {k: v.clone() for k, v in model.probes.state_dict().items()}
    assert any(k.endswith('num_batches_tracked') for k in base_before)
    assert any(k.endswith('running_mean') for k in probe_before)
    model.freeze_base_for_probes()
    opt = torch.optim.SGD(model.probes.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    c = model.config.n_classes
    for _ in range(3):
        x = torch.rand(2, 3, 64, 96, generator=g)
        y = torch.randint(0, c, (2, 64, 96), generator=g)
        y[:, :4] = 255
        logits, probe_logits = model.forward_train(x, with_probes=True)
        assert logits.shape == (2, c, 64, 96) and len(probe_logits) == 4
        loss = sum(F.cross_entropy(z, y, ignore_index=255) for z in probe_logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.base_parameters():
        assert p.grad is None
    after = model.state_dict()
    for k, v in base_before.items():
        assert torch.equal(after[k], v), f'base tensor {k} changed'
    probe_after = model.probes.state_dict()
    for i in range(4):
        first = f'{i}.net.0.weight'
        assert not torch.equal(probe_after[first], probe_before[first]), first
        bn = f'{i}.net.1.running_mean'
        assert not torch.equal(probe_after[bn], probe_before[bn]), bn
        assert int(probe_after[f'{i}.net.1.num_batches_tracked']) == 3
        last = [k for k in probe_after if k.startswith(f'{i}.') and k.endswith('bias')][-1]
        assert not torch.equal(probe_after[last], probe_before[last]), last


def test_probe_inputs_are_detached():
    """In joint training, a probe loss sends no gradient into the base network."""
    torch.manual_seed(8)
    model = OodSegNet(_cfg()).train()
    _, probe_logits = model.forward_train(torch.rand(2, 3, 64, 96), with_probes=True)
    sum(z.square().mean() for z in probe_logits).backward()
    assert all(p.grad is None for p in model.base_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.probes.parameters())


def _conv3x3(probe):
    return [m for m in probe.modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def test_probe_depth_three_has_independent_layers():
    torch.manual_seed(3)
    model = OodSegNet(_cfg(probe_depth=3))
    for probe in model.probes:
        convs = _conv3x3(probe)
        assert len(convs) == 3
        ws = [m.weight for m in convs]
        assert len({id(w) for w in ws}) == 3
        assert len({w.data_ptr() for w in ws}) == 3
        for a in range(3):
            for b in range(a + 1, 3):
                assert not torch.equal(ws[a], ws[b])
    n_params = sum(p.numel() for p in model.probes.parameters())
    one = OodSegNet(_cfg(probe_depth=1))
    per_layer = 256 * 256 * 9 + 2 * 256  # 3x3 conv + BN affine
    assert n_params - sum(p.numel() for p in one.probes.parameters()) == 4 * 2 * per_layer


def test_rebuild_probes(tmp_path):
    model = OodSegNet(_cfg())
    old_probe = model.probes[0]
    model.rebuild_probes(2, 64, True)
    assert model.config.probe_depth == 2 and model.config.probe_channels == 64
    assert model.config.probe_separable
    assert model.probes[0] is not old_probe and len(model.probes) == 4
    first = model.probes[0].net[0]
    assert first.in_channels == 2 * model.config.aspp_channels and first.out_channels == 64
    depthwise = [m for m in model.probes[0].modules()
                 if isinstance(m, nn.Conv2d) and m.groups == 64]
    assert len(depthwise) == 2
    model.eval().set_outputs(['moose_entropy'])
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    assert out['moose_entropy'].shape == (1, 16, 24)
    # The rebuilt probes are part of the saved config.
    save_bundle(tmp_path / 'b', model, half=False)
    loaded = load_bundle(tmp_path / 'b')
    assert loaded.config.probe_channels == 64 and loaded.config.probe_depth == 2
    with pytest.raises(OodSegError):
        model.rebuild_probes(0, 64, False)


# ---- bundle ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def saved_model():
    """Build a random model with non-trivial BN statistics, in eval mode."""
    torch.manual_seed(4)
    return _randomise_bn(OodSegNet(_cfg()), seed=5).eval()


def test_bundle_round_trip_fp32_exact(tmp_path, saved_model):
    runtime = {'heatmap': 'pgn_uni_p0.5', 'threshold': 0.5}
    info = {'trained': 'test'}
    path = save_bundle(tmp_path / 'b32', saved_model, runtime=runtime, info=info, half=False)
    b = load_bundle(path)
    assert b.config == saved_model.config
    assert b.runtime == runtime and b.info == info
    assert not b.model.training
    ref_state = saved_model.state_dict()
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a, o = saved_model(x), b.model(x)
    assert list(a) == list(o)
    for k in a:
        assert torch.equal(a[k], o[k]), k


def test_bundle_round_trip_fp16_close(tmp_path, saved_model):
    path = save_bundle(tmp_path / 'b16', saved_model)
    state = torch.load(path / WEIGHTS, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    b = load_bundle(path, outputs=['probs', 'msp', 'pgn_oh_p1'])
    loaded = b.model.state_dict()
    for k, v in saved_model.state_dict().items():
        want = v.half().float() if v.is_floating_point() else v
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], want), k
    assert b.model.output_names() == ['semantic', 'probs', 'msp', 'pgn_oh_p1']
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, o = saved_model(x), b.model(x)
    assert torch.allclose(a['probs'], o['probs'], atol=1e-3)
    assert torch.allclose(a['msp'], o['msp'], atol=1e-3)
    assert torch.allclose(a['pgn_oh_p1'], o['pgn_oh_p1'], atol=1e-2)
    assert (a['semantic'] == o['semantic']).float().mean() > 0.95


def _edit_json(path, fn):
    doc = json.loads((path / BUNDLE_JSON).read_text())
    fn(doc)
    (path / BUNDLE_JSON).write_text(json.dumps(doc))


@pytest.mark.parametrize('edit', ['classes', 'probe_depth', 'decoder_channels', 'backbone'])
def test_bundle_config_mismatch(tmp_path, saved_model, edit):
    path = save_bundle(tmp_path / 'b', saved_model)

    def change(doc):
        cfg = doc['config']
        if edit == 'classes':
            cfg['class_names'] = cfg['class_names'][:-1]
            cfg['sml_stats'] = None   # per-class statistics no longer fit: drop them
            cfg['outputs'] = [o for o in cfg['outputs'] if 'sml' not in o
                              and 'fused' not in o]
        elif edit == 'probe_depth':
            cfg['probe_depth'] = 2
        elif edit == 'decoder_channels':
            cfg['decoder_channels'] = 128
        else:
            cfg['backbone'] = 'lite2'

    _edit_json(path, change)
    with pytest.raises(OodSegError, match='does not match') as err:
        load_bundle(path)
    assert WEIGHTS in str(err.value)


def test_bundle_bad_files(tmp_path, saved_model):
    with pytest.raises(OodSegError, match='does not exist'):
        load_bundle(tmp_path / 'nowhere')
    path = save_bundle(tmp_path / 'b', saved_model)
    good_json = (path / BUNDLE_JSON).read_text()
    good_weights = (path / WEIGHTS).read_bytes()
    # Missing weights.
    (path / WEIGHTS).unlink()
    with pytest.raises(OodSegError, match='has no weights.pt'):
        load_bundle(path)
    # Corrupt weights (truncated, and garbage).
    (path / WEIGHTS).write_bytes(good_weights[: len(good_weights) // 2])
    with pytest.raises(OodSegError, match='cannot read'):
        load_bundle(path)
    (path / WEIGHTS).write_bytes(b'\x00garbage' * 10)
    with pytest.raises(OodSegError, match='cannot read'):
        load_bundle(path)
    (path / WEIGHTS).write_bytes(good_weights)
    load_bundle(path)  # restored: loads again
    # Corrupt JSON.
    (path / BUNDLE_JSON).write_text(good_json[:-20])
    with pytest.raises(OodSegError, match='not valid JSON'):
        load_bundle(path)
    # Missing JSON.
    (path / BUNDLE_JSON).unlink()
    with pytest.raises(OodSegError, match='has no bundle.json'):
        load_bundle(path)
    # Unknown config key; wrong format version.
    (path / BUNDLE_JSON).write_text(good_json)
    _edit_json(path, lambda d: d['config'].update(colour='blue'))
    with pytest.raises(OodSegError, match='config.colour: unknown key'):
        load_bundle(path)
    (path / BUNDLE_JSON).write_text(good_json)
    _edit_json(path, lambda d: d.update(format_version=99))
    with pytest.raises(OodSegError, match='format_version'):
        load_bundle(path)
    # Bad config values are rejected on load too.
    (path / BUNDLE_JSON).write_text(good_json)
    _edit_json(path, lambda d: d['config'].update(output_stride=32))
    with pytest.raises(OodSegError, match='output_stride'):
        load_bundle(path)


@pytest.mark.parametrize('field, value, match', [
    ('backbone', 'lite4', 'backbone'),
    ('backbone', 'resnet50', 'backbone'),
    ('output_stride', 32, 'output_stride'),
    ('output_stride', 4, 'output_stride'),
    ('input_size', (32, 128), 'input_size'),
    ('input_size', (96, 63), 'input_size'),
    ('outputs', ['msp', 'pgn_oh_p3'], 'unknown outputs'),
    ('probe_depth', 0, 'probe_depth'),
    ('class_names', ('only',), 'two classes'),
])
def test_config_validate_rejects(field, value, match):
    cfg = _cfg()
    cfg.validate()
    setattr(cfg, field, value)
    with pytest.raises(OodSegError, match=match):
        cfg.validate()
    with pytest.raises(OodSegError, match=match):
        OodSegNet(cfg)


def test_config_dict_round_trip():
    cfg = _cfg(output_stride=8, probe_depth=3, outputs=['msp', 'moose_mi'])
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    back = ModelConfig.from_dict(d)
    assert back == cfg
    assert back.n_classes == 11 and back.aspp_rates == (12, 24, 36)
    assert _cfg().aspp_rates == (6, 12, 18)
    assert np.all([isinstance(v, tuple) for v in (back.class_names, back.mean, back.std)])


def test_folding_batch_norms_keeps_every_output():
    """Folded BatchNorm (the torch backend's inference copy) gives the same outputs."""
    from ood_seg_ros.model.fold import fold_batch_norms
    ref = _randomise_bn(OodSegNet(_cfg()).eval())
    folded = _randomise_bn(OodSegNet(_cfg()).eval())
    folded.load_state_dict(ref.state_dict())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in ref.modules())
    n_probe_bn = sum(isinstance(m, nn.BatchNorm2d) for m in ref.probes.modules())
    assert fold_batch_norms(folded) == n_bn - n_probe_bn > 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == n_probe_bn
    # ψ stays a ReLU output, so the PGN feature norms may leave |ψ| out
    assert ref._psi_nonneg() and folded._psi_nonneg()
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = ref(x), folded(x)
    for name in want:
        if name == 'semantic':
            assert (got[name] != want[name]).float().mean() < 1e-3
        else:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match='eval mode'):
        fold_batch_norms(OodSegNet(_cfg()).train())
