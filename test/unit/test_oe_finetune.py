"""Outlier-exposure fine-tuning: energy-margin loss, style augmentation, decoder-only."""

import math

import cv2
import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.train import augment as A
from ood_seg_ros.tools.train.loop import energy_margin_loss, TrainConfig, Trainer
import pytest
from repo_paths import CAMVID, COCO
import torch

pytestmark = [pytest.mark.usefixtures('torch_threads'), pytest.mark.torch_threads(2)]
OFF = {'p_gamma': 0.0, 'p_hue': 0.0, 'p_class': 0.0, 'p_blur': 0.0, 'p_noise': 0.0,
       'p_jpeg': 0.0}


# ---------------------------------------------------------------- energy-margin loss

def _numpy_energy_loss(z, y, ood, m_in, m_out, w):
    """Loop-free numpy reference of Liu et al.'s loss with per-term pixel means."""
    z = z.astype(np.float64)
    mx = z.max(1, keepdims=True)
    lse = (mx + np.log(np.exp(z - mx).sum(1, keepdims=True)))[:, 0]
    energy = -lse
    ins = (y != 255) & ~ood
    yi = np.where(ins, y, 0)
    zy = np.take_along_axis(z, yi[:, None], 1)[:, 0]
    ce = (lse - zy)[ins].mean()
    hin = (np.maximum(0, energy[ins] - m_in) ** 2).mean()
    hout = (np.maximum(0, m_out - energy[ood]) ** 2).mean()
    return ce + w * (hin + hout)


def test_energy_margin_loss_matches_a_numpy_reference():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 6, 7) * 4
    y = torch.randint(0, 5, (2, 6, 7))
    y[0, :2] = 255
    ood = torch.zeros(2, 6, 7, dtype=torch.bool)
    ood[1, 3:, 2:] = True
    for m_in, m_out, w in ((-3.0, -1.0, 0.1), (-8.0, 2.0, 1.0)):
        got = energy_margin_loss(z, y, ood, m_in, m_out, w)
        ref = _numpy_energy_loss(z.numpy(), y.numpy(), ood.numpy(), m_in, m_out, w)
        assert got.item() == pytest.approx(ref, rel=1e-5)


def test_energy_margin_loss_hand_values_and_gradient_direction():
    # One class-0 in-distribution pixel with logits (0, 0): E = -log 2; one OoD pixel
    # with logits (3, 3): E = -3 - log 2. CE = log 2.
    z = torch.tensor([[[[0.0, 3.0]], [[0.0, 3.0]]]], requires_grad=True)   # (1, 2, 1, 2)
    y = torch.tensor([[[0, 255]]])
    ood = torch.tensor([[[False, True]]])
    l2 = math.log(2)
    hand = l2 + 0.5 * ((-l2 - (-2.0)) ** 2 + (-1.0 - (-3 - l2)) ** 2)
    loss = energy_margin_loss(z, y, ood, m_in=-2.0, m_out=-1.0, weight=0.5)
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    loss.backward()
    # descent raises the in-distribution logits (lower energy) and lowers the OoD ones
    assert (z.grad[0, :, 0, 0].sum() < 0) and (z.grad[0, :, 0, 1] > 0).all()
    # pixels past their margins and void pixels contribute nothing
    far = torch.tensor([[[[20.0, -20.0]], [[0.0, -20.0]]]])
    ce_only = torch.nn.functional.cross_entropy(far[..., :1], y[..., :1])
    assert energy_margin_loss(far, y, ood, -2.0, -1.0, 0.5).item() == \
        pytest.approx(ce_only.item(), rel=1e-6)


# ---------------------------------------------------------------- style augmentation

def _batch(seed=0, b=3, h=24, w=32):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, 3, h, w, generator=g) * 0.8 + 0.1
    lab = torch.randint(0, 5, (b, h, w), generator=g)
    lab[:, :3] = 255
    return img, lab


def test_photometric_is_deterministic_and_leaves_the_labels_alone():
    img, lab = _batch()
    lab0 = lab.clone()
    aug = A.PhotoAug(class_groups=((3,), (1, 2)), p_gamma=1, p_hue=1, p_class=1, p_blur=1,
                     p_noise=1, p_jpeg=1)
    a = A.photometric_batch(img, lab, aug, torch.Generator().manual_seed(7))
    b = A.photometric_batch(img, lab, aug, torch.Generator().manual_seed(7))
    c = A.photometric_batch(img, lab, aug, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(lab, lab0) and a.shape == img.shape
    assert a.min() >= 0 and a.max() <= 1
    # JPEG (p_jpeg=1) leaves the result on the 8-bit grid
    assert torch.allclose(a * 255, (a * 255).round(), atol=1e-4)


def test_all_probabilities_zero_is_the_identity():
    img, lab = _batch()
    out = A.photometric_batch(img, lab, A.PhotoAug(class_groups=((3,),), **OFF),
                              torch.Generator().manual_seed(0))
    assert torch.allclose(out, img, atol=1e-6)


def test_class_shift_changes_only_the_pixels_of_that_class():
    img, lab = _batch(1)
    aug = A.PhotoAug(class_groups=((3,),), **{**OFF, 'p_class': 1.0})
    out = A.photometric_batch(img, lab, aug, torch.Generator().manual_seed(2))
    mask = (lab == 3).unsqueeze(1).expand_as(img)
    assert torch.equal(out[~mask], img[~mask])
    changed = (out - img).abs().amax(1) > 1e-3        # (B, H, W)
    assert changed[lab == 3].float().mean() > 0.9


def test_hue_rotation_keeps_luma_and_chroma_and_composes():
    img, _ = _batch(2)
    deg = torch.tensor([30.0, -75.0, 200.0])
    out = A.hue_rotate(img, deg)

    def yiq(x):
        return torch.einsum('ij,bjhw->bihw', A._YIQ, x)

    a, b = yiq(img), yiq(out)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5)                   # luma kept
    assert torch.allclose(a[:, 1:].norm(dim=1), b[:, 1:].norm(dim=1), atol=1e-5)
    twice = A.hue_rotate(A.hue_rotate(img, deg), -deg)
    assert torch.allclose(twice, img, atol=1e-5)
    assert torch.allclose(A.hue_rotate(img, torch.full((3,), 360.0)), img, atol=1e-5)
    # a pure red pixel rotated by 180 degrees turns toward cyan (R down, G and B up)
    red = torch.tensor([0.8, 0.1, 0.1]).view(1, 3, 1, 1)
    cyanish = A.hue_rotate(red, torch.tensor([180.0]))[0, :, 0, 0]
    assert cyanish[0] < 0.8 and cyanish[1] > 0.1 and cyanish[2] > 0.1


def test_gaussian_blur_matches_opencv():
    img, _ = _batch(3, b=1, h=20, w=26)
    sigma = 1.2
    r = math.ceil(3 * sigma)
    ref = cv2.GaussianBlur(img[0].permute(1, 2, 0).numpy(), (2 * r + 1, 2 * r + 1), sigma,
                           borderType=cv2.BORDER_REFLECT_101)
    got = A.gaussian_blur(img, sigma)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_gamma_draw_is_one_power_per_sample_within_range():
    img, lab = _batch(4)
    aug = A.PhotoAug(**{**OFF, 'p_gamma': 1.0}, gamma=(0.6, 1.6))
    out = A.photometric_batch(img, lab, aug, torch.Generator().manual_seed(5))
    g = torch.log(out) / torch.log(img)
    per = g.flatten(1)
    assert torch.allclose(per, per[:, :1].expand_as(per), atol=1e-4)
    assert ((per[:, 0] >= 0.6 - 1e-5) & (per[:, 0] <= 1.6 + 1e-5)).all()


def test_class_groups_from_names():
    names = ['Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'Car']
    assert A.class_groups(names) == ((3, 4), (5,))
    assert A.class_groups(['sky', 'car']) == ()


# ---------------------------------------------------------------- decoder-only fine-tune

def _cfg(tmp_path, stage, **kw):
    from test_train import _cfg as train_cfg     # the tiny CamVid config of test_train
    return train_cfg(tmp_path, stage, **kw)


@pytest.mark.data
def test_decoder_only_energy_finetune_keeps_encoder_and_probe_inputs(tmp_path):
    from ood_seg_ros.tools.data.ood_sets import make_ood_set
    from ood_seg_ros.model import load_bundle
    Trainer(_cfg(tmp_path, 'base', max_steps=2), log=lambda *_: None).run()
    make_ood_set(CAMVID, COCO, 'train', 'a', tmp_path / 'proxy', seed=1, limit=4,
                 placement='mixed', ignore_band_px=3, jpeg_quality=(60, 90))
    init = str(tmp_path / 'base' / 'bundle')
    cfg = _cfg(tmp_path, 'entropy', init_bundle=init, model={}, ood_proxy=str(tmp_path / 'proxy'),
               ood_ratio=1.0, max_steps=3, epochs=3, lr=1e-2, optimizer='adam',
               ood_loss='energy', train_part='decoder', photometric=True, val_limit=2)
    from ood_seg_ros.model.bundle import read_bundle_json, update_bundle_json
    update_bundle_json(init, lambda d: d['runtime'].update(
        heatmap_score='energy', segment_threshold=0.3, min_segment_px=80))
    logs = []
    tr = Trainer(cfg, log=logs.append)
    assert len(tr.val_images) == 2 and tr.n_id == 4
    m = tr.model
    encoder = list(m.backbone.parameters()) + list(m.aspp.parameters())
    assert not {id(p) for p in encoder} & {id(p) for p in tr.params}
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))

    def probe_inputs(model):
        model.eval()
        with torch.no_grad():
            xn = (x - model.mean) / model.std
            _, branches, pooled = model.aspp(model.backbone(xn)[1])
        return [b.clone() for b in branches] + [pooled.clone()]

    before_in = probe_inputs(load_bundle(init).model)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    result = tr.run()
    assert result['steps'] == 3 and result['train_part'] == 'decoder'
    assert not m.backbone.training and not m.aspp.training and m.decoder.training
    after = load_bundle(result['bundle']).model
    sd = after.state_dict()
    changed = {k for k in before if not torch.equal(before[k], sd[k])}
    frozen = {k for k in before if k.startswith(('backbone.', 'aspp.', 'probes.'))}
    assert any(k.endswith('running_mean') for k in frozen)
    assert not changed & frozen, sorted(changed & frozen)[:5]
    assert any(k.startswith('decoder.') for k in changed)
    assert any(k.startswith('classifier.') for k in changed)
    for a, b in zip(before_in, probe_inputs(after)):
        assert torch.equal(a, b)
    assert after_info_has(result['bundle'], 'energy')
    # The init bundle's calibration belongs to the old decoder: left out, and said once.
    assert read_bundle_json(result['bundle'])['runtime'] == {'min_segment_px': 80}
    told = [m for m in logs if 'runtime.heatmap_score' in str(m)]
    assert len(told) == 1 and 'eval --calibrate' in told[0]


def after_info_has(bundle, loss):
    from ood_seg_ros.model.bundle import read_bundle_json
    rec = read_bundle_json(bundle)['info']['train_entropy']['config']
    return rec['ood_loss'] == loss and rec['train_part'] == 'decoder' and rec['photometric']


def test_unknown_train_part_loss_or_margins_are_clear_errors():
    from ood_seg_ros.tools.train.loop import check_oe_options
    check_oe_options(TrainConfig(stage='entropy', train_part='decoder', ood_loss='energy'))
    with pytest.raises(OodSegError, match='train_part'):
        check_oe_options(TrainConfig(stage='entropy', train_part='head'))
    with pytest.raises(OodSegError, match='ood_loss'):
        check_oe_options(TrainConfig(stage='entropy', ood_loss='hinge'))
    with pytest.raises(OodSegError, match='m_in < m_out'):
        check_oe_options(TrainConfig(stage='entropy', ood_loss='energy', m_in=-3, m_out=-5))


@pytest.mark.data
def test_sml_stats_every_kth_frame(tmp_path, capsys):
    import json
    import shutil
    from ood_seg_ros import cli
    from repo_paths import ROOT
    bundle = tmp_path / 'b'
    shutil.copytree(ROOT / 'models' / 'camvid_lite0', bundle)
    before = (bundle / 'bundle.json').read_text()
    args = ['sml-stats', '--bundle', str(bundle), '--camvid', str(CAMVID)]
    assert cli.main(args + ['--every', '0']) == 2
    assert '--every must be >= 1' in capsys.readouterr().err
    assert (bundle / 'bundle.json').read_text() == before      # nothing written
    assert cli.main(args + ['--every', '150', '--json']) == 0   # frames 0, 150, 300
    out = json.loads(capsys.readouterr().out)
    assert out['frames'] == 3
    assert json.loads((bundle / 'bundle.json').read_text())['config']['sml_stats']['frames'] == 3
