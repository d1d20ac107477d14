"""Training loops on a tiny CamVid subset (CPU): loss falls, resume, frozen base, losses."""

from pathlib import Path
import subprocess
import sys

from ood_seg_ros.errors import OodSegError
from ood_seg_ros.model import load_bundle
from ood_seg_ros.tools.train.augment import augment_batch
from ood_seg_ros.tools.train.loop import entropy_max_loss, TrainConfig, Trainer
import pytest
from repo_paths import CAMVID
import torch

needs_data = pytest.mark.data
SMALL = {'output_stride': 16, 'input_size': (96, 128), 'aspp_channels': 32,
         'decoder_channels': 32, 'low_level_project': 16, 'probe_channels': 16}


pytestmark = [pytest.mark.usefixtures('torch_threads'), pytest.mark.torch_threads(2)]


def _cfg(tmp_path, stage='base', **kw):
    base = {'stage': stage, 'camvid': str(CAMVID), 'train_splits': ['train'],
            'val_split': 'val', 'out': str(tmp_path / stage), 'epochs': 1, 'batch_size': 2,
            'lr': 0.01, 'crop': [96, 128], 'subset': 4, 'device': 'cpu', 'amp': False,
            'seed': 0, 'model': dict(SMALL)}
    base.update(kw)
    return TrainConfig(**base)


@needs_data
def test_a_few_steps_lower_the_loss(tmp_path):
    cfg = _cfg(tmp_path, epochs=8, max_steps=16, lr=0.02, scale=[1.0, 1.0], subset=2)
    tr = Trainer(cfg, log=lambda *_: None)
    tr.run()
    losses = [r['loss'] for r in tr.history]
    assert losses[-1] < losses[0] * 0.9, losses


@needs_data
def test_resume_continues_from_the_saved_step(tmp_path):
    cfg = _cfg(tmp_path, epochs=2)
    first = Trainer(cfg, log=lambda *_: None)
    first.cfg.epochs = 1
    first.run()
    assert first.step == 2 and first.epoch == 1
    saved = torch.load(Path(cfg.out) / 'checkpoint.pt', weights_only=True)  # no pickle code
    assert saved['step'] == 2
    resumed = Trainer(_cfg(tmp_path, epochs=2), resume=True, log=lambda *_: None)
    assert (resumed.epoch, resumed.step) == (1, 2)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, saved['model'][k]), k
    resumed.run()
    assert (resumed.epoch, resumed.step) == (2, 4)


@needs_data
def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(OodSegError, match='cannot resume'):
        Trainer(_cfg(tmp_path), resume=True, log=lambda *_: None)


@needs_data
def test_probe_training_leaves_the_base_bit_for_bit_unchanged(tmp_path):
    Trainer(_cfg(tmp_path), log=lambda *_: None).run()
    base = load_bundle(tmp_path / 'base' / 'bundle')
    cfg = _cfg(tmp_path, stage='probes', init_bundle=str(tmp_path / 'base' / 'bundle'),
               model={}, epochs=2)
    Trainer(cfg, log=lambda *_: None).run()
    after = load_bundle(tmp_path / 'probes' / 'bundle')
    before_sd, after_sd = base.model.state_dict(), after.model.state_dict()
    changed = [k for k in before_sd if not torch.equal(before_sd[k], after_sd[k])]
    assert changed and all(k.startswith('probes.') for k in changed), changed[:5]
    assert any('running_mean' in k for k in changed)  # probe BN statistics moved


@needs_data
def test_entropy_stage_needs_a_proxy_set(tmp_path):
    Trainer(_cfg(tmp_path), log=lambda *_: None).run()
    cfg = _cfg(tmp_path, stage='entropy', init_bundle=str(tmp_path / 'base' / 'bundle'),
               model={})
    with pytest.raises(OodSegError, match='ood-proxy'):
        Trainer(cfg, log=lambda *_: None)


def test_entropy_max_loss_matches_its_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 6)
    y = torch.randint(0, 5, (2, 4, 6))
    y[0, 0, :3] = 255
    ood = torch.zeros(2, 4, 6, dtype=torch.bool)
    ood[1, 2:, :] = True
    logp = torch.log_softmax(logits, 1)
    in_mask = (y != 255) & ~ood
    ce = -logp.gather(1, y.clamp(max=4).unsqueeze(1)).squeeze(1)
    expected = 0.1 * ce[in_mask].mean() + 0.9 * (-logp.mean(1))[ood].mean()
    assert torch.allclose(entropy_max_loss(logits, y, ood, 0.9), expected, atol=1e-6)
    # Reference variant: one mean over all pixels, void and OoD pixels count as zero CE.
    ce_all = torch.where(in_mask, ce, torch.zeros_like(ce))
    ref = (0.1 * ce_all + 0.9 * (-logp.mean(1)) * ood).mean()
    assert torch.allclose(entropy_max_loss(logits, y, ood, 0.9, reference=True), ref,
                          atol=1e-6)
    # Maximising entropy: the OoD term is minimal for uniform logits.
    flat = torch.zeros_like(logits)
    assert entropy_max_loss(flat, y, torch.ones_like(ood), 1.0) < \
        entropy_max_loss(logits, y, torch.ones_like(ood), 1.0)


def test_augmentation_keeps_image_and_labels_aligned():
    # A label equal to the image's red channel must stay equal after any geometry.
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 11, (3, 40, 50, 3), dtype=torch.uint8)
    lab = img[..., 0].clone()
    x, (y,) = augment_batch(img, [lab], (32, 48), (0.5, 2.0), jitter=0.0, generator=g)
    assert x.shape == (3, 3, 32, 48) and y.shape == (3, 32, 48)
    inside = y != 255
    # Nearest-sampled labels equal the bilinear image only where both hit pixel centres;
    # compare with a tolerance of one grey level on most pixels.
    red = (x[:, 0] * 255).round().long()
    agree = ((red - y).abs() <= 1) & inside
    assert agree.sum() > 0.5 * inside.sum()
    assert set(torch.unique(y).tolist()) <= set(range(11)) | {255}


@needs_data
def test_the_same_command_runs_under_torchrun_ddp(tmp_path):
    """Two CPU processes (gloo) train with DistributedDataParallel; rank 0 saves."""
    torchrun = Path(sys.executable).parent / 'torchrun'
    if not torchrun.exists():
        pytest.skip('torchrun is not installed next to this Python')
    out = tmp_path / 'ddp'
    proc = subprocess.run(
        [str(torchrun), '--nproc_per_node', '2', '--master_port', '29531', '-m',
         'ood_seg_ros.cli', 'train-base', '--camvid', str(CAMVID), '--out', str(out),
         '--subset', '8', '--max-steps', '2', '--epochs', '1', '--batch-size', '2',
         '--crop', '96,128', '--device', 'cpu', '--json'],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [line for line in proc.stdout.splitlines() if line.startswith('{"bundle"')]
    assert len(results) == 1  # only rank 0 reports
    assert (out / 'bundle' / 'weights.pt').exists()
    assert (out / 'checkpoint.pt').exists()


@needs_data
def test_cached_probe_training_freezes_the_base_and_records_splits(tmp_path):
    from ood_seg_ros.tools.data.camvid import load_split
    from ood_seg_ros.tools.train.probe_cache import (cache_features, LOSS_STRIDE,
                                                     train_probes_cached)
    Trainer(_cfg(tmp_path), log=lambda *_: None).run()
    base = load_bundle(tmp_path / 'base' / 'bundle')
    assert base.info['trained_splits'] == ['train']
    # The cache holds exactly the frozen base's probe inputs (flipped or not).
    imgs, labs, _ = load_split(CAMVID, ['train'])
    imgs, labs = imgs[:2], labs[:2]
    cache = cache_features(base.model.eval(), imgs, labs, [1.0], seed=3, log=lambda *_: None)
    with torch.no_grad():
        for k, (br, pooled, y) in enumerate(cache):
            x = torch.from_numpy(imgs[k]).permute(2, 0, 1)[None].float() / 255
            # Labels at decoder resolution (stride 4), nearest-downsampled, maybe flipped.
            lab = torch.from_numpy(labs[k])[None, None].float()

            def down(t):
                size = tuple(-(-s // LOSS_STRIDE) for s in t.shape[-2:])
                return torch.nn.functional.interpolate(t, size=size, mode='nearest')[0, 0].byte()

            flipped = not torch.equal(y, down(lab))
            assert torch.equal(y, down(lab.flip(-1)) if flipped else down(lab))
            if flipped:
                x = x.flip(-1)
            xn = (x - base.model.mean) / base.model.std
            _, branches, p = base.model.aspp(base.model.backbone(xn)[1])
            assert torch.allclose(br.float(), torch.stack(branches, 1)[0], atol=1e-2)
            assert torch.allclose(pooled.float(), p[0], atol=1e-2)
    cfg = _cfg(tmp_path, stage='probes', init_bundle=str(tmp_path / 'base' / 'bundle'),
               model={'depth': 1, 'width': 16, 'separable': True}, epochs=2, subset=2)
    res = train_probes_cached(cfg, scales=[1.0], log=lambda *_: None)
    after = load_bundle(res['bundle'])
    before_sd, after_sd = base.model.state_dict(), after.model.state_dict()
    base_keys = [k for k in before_sd if not k.startswith('probes.')]
    assert all(torch.equal(before_sd[k], after_sd[k]) for k in base_keys)
    assert after.config.probe_channels == 16
    assert after.info['trained_splits'] == ['train']
    assert after.info['train_probes']['feature_cache']['scales'] == [1.0]


def test_distill_without_cached_features_is_refused(tmp_path, capsys):
    from ood_seg_ros.cli import main
    assert main(['train-probes', '--camvid', str(tmp_path), '--init-bundle', str(tmp_path),
                 '--out', str(tmp_path / 'o'), '--distill']) == 2
    assert 'add --cache-features' in capsys.readouterr().err
    with pytest.raises(OodSegError, match='cached features'):
        Trainer(_cfg(tmp_path, stage='probes', distill=True), log=lambda *_: None)


@needs_data
def test_distilled_probes_learn_the_teachers_logits(tmp_path):
    """--distill: the cache holds the teacher's logits; training moves toward them."""
    import copy
    from ood_seg_ros.tools.data.camvid import load_split
    from ood_seg_ros.tools.train.probe_cache import (cache_features, distill_loss,
                                                     distill_val_error, train_probes_cached)
    from ood_seg_ros.model.deeplab import upsample
    Trainer(_cfg(tmp_path), log=lambda *_: None).run()
    base = load_bundle(tmp_path / 'base' / 'bundle')
    model = base.model.eval()
    teacher = copy.deepcopy(model.probes).eval()
    imgs, labs, _ = load_split(CAMVID, ['train'])
    cache = cache_features(model, imgs[:2], labs[:2], [1.0], seed=3, log=lambda *_: None,
                           teacher=teacher)
    with torch.no_grad():
        for br, pooled, y, t in cache:
            # The cached targets are the teacher's logits on the cached inputs, at the
            # label's (decoder) resolution, probe k reading branch k.
            assert t.shape == (4, model.config.n_classes) + tuple(y.shape)
            for k, probe in enumerate(teacher):
                ref = upsample(probe(br[None, k].float(), pooled[None].float()), y.shape)
                assert torch.allclose(t[k].float(), ref[0], atol=2e-2, rtol=1e-2)
    # The loss: zero against itself, else the per-probe mean squared difference.
    br, pooled, _, t = (torch.stack([c[i] for c in cache]).float() for i in range(4))
    own = torch.stack([upsample(p(br[:, k], pooled), t.shape[-2:])
                       for k, p in enumerate(teacher)], 1).detach()
    assert distill_loss(teacher, br, pooled, own).item() == 0.0
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        for q in other.parameters():
            q.add_(0.05 * torch.randn_like(q))
        mine = [upsample(p(br[:, k], pooled), t.shape[-2:]) for k, p in enumerate(other)]
        brute = sum(((m - t[:, k]) ** 2).sum().item() / m.numel() for k, m in enumerate(mine))
        assert distill_loss(other, br, pooled, t).item() == pytest.approx(brute, rel=1e-4)
    # Training: a fresh student of another shape gets closer to the teacher on val.
    kw = {'stage': 'probes', 'init_bundle': str(tmp_path / 'base' / 'bundle'),
          'batch_size': 2, 'model': {'depth': 1, 'width': 8, 'separable': True},
          'subset': 4, 'val_limit': 2, 'lr': 0.02, 'distill': True}
    before = train_probes_cached(_cfg(tmp_path, epochs=1, max_steps=1, out=str(tmp_path / 'a'),
                                      **kw), scales=[1.0], log=lambda *_: None)
    after = train_probes_cached(_cfg(tmp_path, epochs=12, out=str(tmp_path / 'b'), **kw),
                                scales=[1.0], log=lambda *_: None)
    errs = [load_bundle(r['bundle']).info['train_probes']['distill']['best_val_mse']
            for r in (before, after)]
    assert errs[1] < 0.8 * errs[0], errs
    trained = load_bundle(after['bundle'])
    assert trained.config.probe_channels == 8
    vimgs, vlabs, _ = load_split(CAMVID, ['val'])
    vcache = cache_features(model, vimgs[:2], vlabs[:2], [1.0], log=lambda *_: None,
                            teacher=teacher, flip=False)
    assert distill_val_error(trained.model.probes, vcache) == pytest.approx(errs[1], rel=1e-4)
    sd, base_sd = trained.model.state_dict(), base.model.state_dict()
    assert all(torch.equal(sd[k], base_sd[k]) for k in base_sd if not k.startswith('probes.'))


@needs_data
def test_a_backbone_without_imagenet_weights_trains_from_scratch(tmp_path, capsys):
    """lite3 is registered without a weight package: one clear error, or --no-imagenet."""
    from ood_seg_ros.cli import main
    args = ['train-base', '--camvid', str(CAMVID), '--subset', '2', '--max-steps', '1',
            '--epochs', '1', '--batch-size', '2', '--crop', '96,128', '--device', 'cpu',
            '--backbone', 'lite3']
    assert main(args + ['--out', str(tmp_path / 'a')]) == 2
    assert 'no ImageNet weights for EfficientNet-lite3' in capsys.readouterr().err
    assert main(args + ['--out', str(tmp_path / 'b'), '--no-imagenet']) == 0
    bundle = load_bundle(tmp_path / 'b' / 'bundle')
    assert bundle.model.config.backbone == 'lite3'
    assert bundle.model.backbone.out_channels == 384


@needs_data
def test_frozen_stages_get_no_gradient_and_keep_their_statistics(tmp_path):
    tr = Trainer(_cfg(tmp_path, freeze_stages=2, max_steps=2, epochs=2),
                 log=lambda *_: None)
    bb = tr.model.backbone
    frozen = [m for stage in bb.stage_modules()[:2] for m in stage]
    ids = {id(p) for m in frozen for p in m.parameters()}
    assert ids and not ids & {id(p) for p in tr.params}    # not in the optimiser
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    result = tr.run()
    assert result['steps'] == 2 and result['freeze_stages'] == 2
    assert result['seconds_per_step'] > 0 and result['cpu_seconds_per_step'] > 0
    assert result['batch_size'] == 2 and result['timed_steps'] == 1
    assert all(not p.requires_grad and p.grad is None for m in frozen for p in m.parameters())
    frozen_keys = {f'backbone.{n}.' for n, m in bb.named_modules() if m in frozen and n}
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stuck = {k for k in before if any(k.startswith(f) for f in frozen_keys)}
    assert any(k.endswith('running_mean') for k in stuck)   # frozen BNs are among them
    assert not changed & stuck, sorted(changed & stuck)[:5]
    # the rest trains: later backbone stages' weights and BN statistics move
    later = bb.stage_modules()[2][0]
    name = next(n for n, m in bb.named_modules() if m is later)
    assert any(k.startswith(f'backbone.{name}.') and k.endswith('running_mean')
               for k in changed)
    assert any(k.startswith('decoder.') for k in changed)


def test_freeze_stages_out_of_range_is_a_clear_error():
    from ood_seg_ros.model.backbones import build_backbone
    bb = build_backbone('lite0')
    with pytest.raises(OodSegError, match='freeze_stages must be 0..7'):
        bb.freeze_stages(8)
