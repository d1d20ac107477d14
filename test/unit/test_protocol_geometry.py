"""Protocol guard, multi-set evaluation and calibration, aspect-keeping geometry, SML."""

import json
import shutil

import cv2
from model_helpers import save_tiny_bundle
import numpy as np
from ood_seg_ros import cli
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.model import load_bundle, ModelConfig, OodSegNet
from ood_seg_ros.model.config import SML_MEMBERS
from ood_seg_ros.model.deeplab import upsample
from ood_seg_ros.pipeline import Pipeline, runtime_for_size
from ood_seg_ros.tools.calibrate import calibrate, calibration_update, choose_score
from ood_seg_ros.tools.data.ood_sets import OodDataset
from ood_seg_ros.tools.evaluate import evaluate_bundle, id_false_detections, OodEvaluation
from ood_seg_ros.tools.protocol import check_held_out, trained_splits
from ood_seg_ros.tools.sml import gather_sml_stats
import pytest
import torch

H, W = 96, 128


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    info = {'train_base': {'config': {'train_splits': ['train', 'val']}}}
    return save_tiny_bundle(tmp_path_factory.mktemp('bundle') / 'b', (H, W), info)


def _make_set(root, n=4, seed=0, split=None, size=(H, W)):
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        lab = np.zeros((h, w), np.uint8)
        y, x = h // 3 + 3 * i, w // 3 + 5 * i
        img[y:y + h // 4, x:x + w // 4] = (250, 20 * i, 30)
        lab[y:y + h // 4, x:x + w // 4] = 1
        cv2.imwrite(str(root / 'images' / f'f{i}.png'), img[:, :, ::-1])
        cv2.imwrite(str(root / 'labels' / f'f{i}.png'), lab)
    if split:
        (root / 'info.json').write_text(json.dumps({'split': split}))
    return root


# ---- protocol -------------------------------------------------------------------------

def test_trained_splits_from_every_stage():
    info = {'train_base': {'config': {'train_splits': ['train', 'val']}},
            'train_probes': {'config': {'train_splits': ['train']}}, 'other': 3}
    assert trained_splits(info) == {'train', 'val'}
    assert trained_splits({'trained_splits': ['train']}) == {'train'}
    assert trained_splits({}) == set()


def test_guard_refuses_frames_the_bundle_trained_on(tmp_path, bundle, capsys):
    val_set = _make_set(tmp_path / 'ood_val', split='val')
    test_set = _make_set(tmp_path / 'ood_test', split='test')
    real_set = _make_set(tmp_path / 'real')              # no info.json: not CamVid
    info = load_bundle(bundle).info
    with pytest.raises(OodSegError, match="camvid 'val', which this bundle was trained on"):
        check_held_out(info, [real_set, val_set], 'calibrate')
    check_held_out(info, [real_set, test_set], 'calibrate')   # no error
    before = (bundle / 'bundle.json').read_text()
    for argv in (['eval', '--bundle', str(bundle), '--ood-set', str(val_set), '--calibrate'],
                 ['train-meta', '--bundle', str(bundle), '--ood-set', str(real_set),
                  '--ood-set', str(val_set)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'refusing to' in err[0] and 'ood_val' in err[0]
    assert (bundle / 'bundle.json').read_text() == before     # nothing written
    assert not (bundle / 'meta.json').exists()


# ---- score choice and calibration -----------------------------------------------------

def test_choose_score_rule():
    tables = {'a': {'msp': {'ap': 0.20}, 'x': {'ap': 0.60}, 'y': {'ap': 0.30},
                    'z': {'ap': 0.25}},
              'b': {'msp': {'ap': 0.05}, 'x': {'ap': 0.04}, 'y': {'ap': 0.06},
                    'z': {'ap': 0.09}}}
    res = choose_score(tables)
    # x has the best mean AP but is below MSP on set b: not eligible.
    assert res['eligible'] == ['msp', 'y', 'z']
    # Relative AP (AP / best AP on the set; best: x 0.60 on a, z 0.09 on b):
    # y 0.50 / 0.67, z 0.42 / 1.0, msp 0.33 / 0.56 -> y has the best worst case.
    assert res['heatmap_score'] == 'y'
    assert res['summary']['z']['worst_ap'] == pytest.approx(0.09)
    assert res['summary']['y']['worst_ratio'] == pytest.approx(0.30 / 0.60)
    assert res['best_ap_per_set'] == {'a': 0.60, 'b': 0.09}
    # A hard set (all APs tiny) does not decide alone: s2 is second there by a hair but
    # holds on the easy set, where s1 collapses.
    hard = {'easy': {'msp': {'ap': 0.20}, 's1': {'ap': 0.22}, 's2': {'ap': 0.45}},
            'hard': {'msp': {'ap': 0.010}, 's1': {'ap': 0.022}, 's2': {'ap': 0.020}}}
    assert choose_score(hard)['heatmap_score'] == 's2'
    # Nothing beats MSP everywhere: MSP itself.
    bad = {'a': {'msp': {'ap': 0.5}, 'x': {'ap': 0.4}},
           'b': {'msp': {'ap': 0.1}, 'x': {'ap': 0.2}}}
    assert choose_score(bad)['heatmap_score'] == 'msp'


def test_selection_only_sets_rank_scores_but_fit_nothing(tmp_path, bundle, capsys):
    """--select-set joins the score choice only; a trained-on set is allowed and recorded."""
    b = tmp_path / 'b'
    shutil.copytree(bundle, b)
    real = _make_set(tmp_path / 'real', seed=1)
    val = _make_set(tmp_path / 'ood_val', seed=3, split='val')     # the bundle trained on val
    pipe = Pipeline.from_bundle(b, backend='torch', device='cpu', all_scores=True)
    ev_real, ev_val = OodEvaluation(pipe, OodDataset(real)), OodEvaluation(pipe, OodDataset(val))
    alone = calibrate({'real': ev_real})
    joint = calibrate({'real': ev_real}, select={'ood_val': ev_val},
                      select_notes={'ood_val': 'trained on'})
    t_real = ev_real.pixel_and_component(components=False)
    t_val = ev_val.pixel_and_component(components=False)
    want = choose_score({'real': t_real, 'ood_val': t_val})['heatmap_score']
    assert joint['heatmap_score'] == want
    assert joint['calibration']['selection_only_sets'] == {'ood_val': 'trained on'}
    assert set(joint['calibration']['ap']) == {'real', 'ood_val'}
    # Normalisation is fitted on the fitting sets only: the same as without the extra set.
    assert joint['normalisation'] == alone['normalisation']
    with pytest.raises(OodSegError, match='both for fitting and for selection'):
        calibrate({'real': ev_real}, select={'real': ev_real})
    # Through the CLI: the trained-on set is accepted for selection, with a warning line.
    argv = ['eval', '--bundle', str(b), '--ood-set', str(real), '--select-set', str(val),
            '--calibrate', '--json']
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert 'warning: ood_val joins only the choice of the score' in out.err
    written = json.loads((b / 'bundle.json').read_text())['runtime']['calibration']
    assert 'trained on' in written['selection_only_sets']['ood_val']
    assert cli.main(['eval', '--bundle', str(b), '--ood-set', str(real), '--select-set',
                     str(val)]) == 2


def test_multi_set_eval_and_calibration_per_size(tmp_path, bundle):
    b = tmp_path / 'b'
    shutil.copytree(bundle, b)
    s1 = _make_set(tmp_path / 'set_one', seed=1)
    s2 = _make_set(tmp_path / 'set_two', n=3, seed=2, size=(60, 150))
    one = evaluate_bundle(b, ood_root=s1)
    assert {'scores', 'heatmap_score', 'meta', 'frames'} <= set(one) and 'sets' not in one
    both = evaluate_bundle(b, ood_root=[s1, s2], out_dir=tmp_path / 'ev')
    assert set(both['sets']) == {'set_one', 'set_two'}
    assert both['sets']['set_two']['frames'] == 3
    assert both['sets']['set_one']['scores']['msp']['ap'] == pytest.approx(
        one['scores']['msp']['ap'])
    assert (tmp_path / 'ev' / 'set_two' / 'pr_curve.png').exists()
    # Calibration over both sets at another input size is stored for that size only.
    pipe = Pipeline.from_bundle(b, backend='torch', device='cpu', all_scores=True,
                                input_size=(64, 160))
    evs = {n: OodEvaluation(pipe, OodDataset(r)) for n, r in (('one', s1), ('two', s2))}
    cal = calibrate(evs)
    assert cal['calibrated_size'] == '64x160'
    assert set(cal['calibration']['ap']) == {'one', 'two'}
    doc = json.loads((b / 'bundle.json').read_text())
    upd = calibration_update(doc['runtime'], cal, doc['config']['input_size'])
    assert 'normalisation' not in upd and upd['sizes']['64x160']['normalisation']
    doc['runtime'].update(upd)
    doc['runtime']['normalisation'] = {cal['heatmap_score']: [0.0, 1.0]}
    rt, calibrated = runtime_for_size(doc['runtime'], (64, 160))
    assert calibrated and rt['segment_threshold'] == cal['segment_threshold']
    assert rt['normalisation'] == cal['normalisation']
    rt, calibrated = runtime_for_size(doc['runtime'], (H, W))
    assert rt['normalisation'] == {cal['heatmap_score']: [0.0, 1.0]}


# ---- SML statistics -------------------------------------------------------------------

def test_fused_score_statistics_match_network_outputs(bundle):
    """sml-stats' pixel mean / std of fused members equal numpy over the graph's maps."""
    from ood_seg_ros.tools.sml import STAT_SCORES
    model = load_bundle(bundle).model
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(3)]
    stats = gather_sml_stats(model, frames, batch_size=2)
    model.set_outputs(list(STAT_SCORES))
    with torch.no_grad():
        maps = [model(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255)
                for f in frames]
    for name in STAT_SCORES:
        v = np.concatenate([m[name].numpy().ravel() for m in maps]).astype(np.float64)
        assert stats['scores'][name]['mean'] == pytest.approx(v.mean(), rel=1e-5, abs=1e-6)
        want = max(v.std(), 1e-6)                          # std floored at 1e-6
        assert stats['scores'][name]['std'] == pytest.approx(want, rel=1e-4)
        assert stats['scores'][name]['pixels'] == v.size
    # With them the config offers the fused scores; without them it does not.
    fused = 'fused_energy_moose_entropy'
    assert fused in ModelConfig(input_size=(H, W), sml_stats=stats).available_scores()
    no_scores = {k: v for k, v in stats.items() if k != 'scores'}
    assert fused not in ModelConfig(input_size=(H, W), sml_stats=no_scores).available_scores()
    bad = json.loads(json.dumps(stats))
    bad['scores']['energy']['std'] = 0.0
    with pytest.raises(OodSegError, match='sml_stats.scores.energy'):
        ModelConfig(input_size=(H, W), sml_stats=bad).validate()


def test_sml_stats_match_recomputation(bundle):
    model = load_bundle(bundle).model
    rng = np.random.default_rng(6)
    frames = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(5)]
    stats = gather_sml_stats(model, frames, batch_size=2)
    assert stats['frames'] == 5 and set(stats['members']) == set(SML_MEMBERS)
    # Independent: every pixel's max logit per member, then per-class mean / std.
    values = {m: [] for m in SML_MEMBERS}
    with torch.no_grad():
        for f in frames:
            x = torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255
            low, _, probes = model.features(x, with_probes=True)
            zs = [upsample(p, low.shape[-2:]) for p in probes] + [low]
            for m, z in zip(SML_MEMBERS, zs):
                values[m].append(z[0].reshape(z.shape[1], -1).T.numpy())
    for m in SML_MEMBERS:
        z = np.concatenate(values[m])
        cls, top = z.argmax(1), z.max(1).astype(np.float64)
        got = stats['members'][m]
        for c in range(z.shape[1]):
            if (cls == c).sum() > 1:
                assert got['mean'][c] == pytest.approx(top[cls == c].mean(), rel=1e-5)
                want = max(top[cls == c].std(), 1e-3)       # std floored at 1e-3
                assert got['std'][c] == pytest.approx(want, rel=1e-4, abs=1e-4)
            assert got['pixels'][c] == int((cls == c).sum())
    # Stored in a config they give the SML outputs; a bad shape is refused.
    cfg = ModelConfig(input_size=(H, W), sml_stats=stats)
    assert 'sml' in cfg.available_scores()
    assert 'sml' not in ModelConfig(input_size=(H, W)).available_scores()
    bad = json.loads(json.dumps(stats))
    bad['members']['global']['std'][0] = 0.0
    with pytest.raises(OodSegError, match='std must be > 0'):
        ModelConfig(input_size=(H, W), sml_stats=bad).validate()
    with pytest.raises(OodSegError, match='statistics'):
        OodSegNet(ModelConfig(input_size=(H, W)), outputs=['sml_bsds'])


def test_id_false_detections_counts_published_segments(tmp_path, bundle):
    camvid = tmp_path / 'camvid' / 'test'
    (camvid / 'images').mkdir(parents=True)
    (camvid / 'labels').mkdir()
    rng = np.random.default_rng(7)
    frames = []
    for i in range(3):
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        frames.append(img)
        cv2.imwrite(str(camvid / 'images' / f'c{i}.png'), img[:, :, ::-1])
        cv2.imwrite(str(camvid / 'labels' / f'c{i}.png'), np.zeros((H, W), np.uint8))
    res = id_false_detections(bundle, tmp_path / 'camvid', 'test')
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    kept = [sum(s.kept for s in pipe.process(f).segments) for f in frames]
    assert res['frames'] == 3
    assert res['kept_per_frame'] == pytest.approx(np.mean(kept))


def test_train_meta_on_several_sets(tmp_path, bundle, capsys):
    b = tmp_path / 'b'
    shutil.copytree(bundle, b)
    doc = json.loads((b / 'bundle.json').read_text())
    doc['runtime'].update({'segment_threshold': 0.3, 'min_segment_px': 16})
    (b / 'bundle.json').write_text(json.dumps(doc))
    sets = [_make_set(tmp_path / f'real_{k}', n=6, seed=10 + k) for k in range(2)]
    argv = ['train-meta', '--bundle', str(b), '--folds', '2', '--C', '1', '--C', '0.1',
            '--json'] + [a for s in sets for a in ('--ood-set', str(s))]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report['per_set']) == {'real_0', 'real_1'}
    assert sum(v['n_segments'] for v in report['per_set'].values()) == report['n_segments']
    assert report['features'] in ('all', 'transfer') and report['C'] in (1.0, 0.1)
    assert len(report['selection']) == 4        # 2 feature sets x 2 values of C
    meta = json.loads((b / 'meta.json').read_text())
    assert meta['info']['trained_on'] == ['real_0', 'real_1']
    # The pipeline uses the stored feature subset.
    pipe = Pipeline.from_bundle(b, backend='torch', device='cpu')
    assert len(pipe.meta_columns) == len(meta['feature_names'])
    res = pipe.process(np.random.default_rng(8).integers(0, 255, (H, W, 3), dtype=np.uint8))
    assert all(0.0 <= s.meta_score <= 1.0 for s in res.segments)
    # --balanced reaches the fit: its rule and threshold are stored (the rule itself is
    # checked against a loop below)
    assert cli.main(argv + ['--balanced']) == 0
    report = json.loads(capsys.readouterr().out)
    meta = json.loads((b / 'meta.json').read_text())
    assert meta['threshold'] == pytest.approx(report['threshold'])
    assert meta['info']['cv']['threshold_rule'].startswith('the largest worst share')
    # a bad --cv-repeats is one line, before the segments are extracted
    assert cli.main(argv + ['--balanced', '--cv-repeats', '0']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--cv-repeats must be >= 1' in err[0], err
    # constants fitted at a contrast the bundle does not run: refused in one line, for the
    # meta classifier and for the calibration, before any frame is read
    before = (b / 'bundle.json').read_text(), (b / 'meta.json').read_text()
    assert cli.main(argv + ['--contrast', '0.5']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'the bundle runs 0 (window 9)' in err[0], err
    assert cli.main(['eval', '--bundle', str(b), '--calibrate', '--ood-set', str(sets[0]),
                     '--contrast-window', '5']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'calibrating at --contrast 0 (window 5)' in err[0], err
    assert ((b / 'bundle.json').read_text(), (b / 'meta.json').read_text()) == before
    # the bundle's own contrast passes (given or not)
    doc = json.loads((b / 'bundle.json').read_text())
    doc['runtime']['obstacle'] = {**doc['runtime'].get('obstacle', {}), 'contrast': 0.5}
    (b / 'bundle.json').write_text(json.dumps(doc))
    assert cli.main(argv + ['--contrast', '0.5']) == 0
    assert json.loads(capsys.readouterr().out)['n_segments'] > 0


def test_fp_rate_threshold_bounds_false_detections_on_every_set():
    from ood_seg_ros.tools.meta_fit import fp_rate_threshold
    rng = np.random.default_rng(9)
    p = rng.random(200)
    is_fp = rng.random(200) < 0.7
    sets = np.where(np.arange(200) < 150, 'a', 'b').astype(object)
    frames = {'a': 30, 'b': 10}
    for target in (0.2, 0.5, 1.5):
        t = fp_rate_threshold(p, is_fp, sets, frames, target)
        for name, n in frames.items():
            kept_fp = ((p <= t) & is_fp & (sets == name)).sum()
            assert kept_fp / n <= target
        # Brute force: no larger candidate threshold satisfies every set.
        larger = sorted(v for v in p if v > t)
        if larger:
            u = larger[0]
            assert any(((p <= u) & is_fp & (sets == name)).sum() / n > target
                       for name, n in frames.items())


def _shares_loop(t, p, is_fp, sets):
    """Per set, the removed and kept shares at threshold t, by a plain loop."""
    out = []
    for name in sorted(set(sets)):
        fp = [pi > t for pi, f, s in zip(p, is_fp, sets) if s == name and f]
        tp = [pi <= t for pi, f, s in zip(p, is_fp, sets) if s == name and not f]
        out += [sum(fp) / len(fp)] if fp else []
        out += [sum(tp) / len(tp)] if tp else []
    return out


def test_balanced_threshold_maximises_the_worst_share_against_a_loop():
    from ood_seg_ros.tools.meta_fit import balanced_threshold
    rng = np.random.default_rng(11)
    n = 120
    is_fp = rng.random(n) < 0.6
    p = np.clip(0.5 * is_fp + 0.6 * rng.random(n), 0, 1)   # informative, overlapping
    sets = np.where(np.arange(n) < 90, 'a', 'b').astype(object)
    frames = {'a': 20, 'b': 5}
    t = balanced_threshold(p, is_fp, sets, frames)
    cands = sorted({0.0, *p.tolist()})
    best = max(min(_shares_loop(c, p, is_fp, sets)) for c in cands)
    got = _shares_loop(t, p, is_fp, sets)
    assert min(got) == pytest.approx(best)
    assert 0.3 < min(got) < 1.0                  # a real trade-off, not a degenerate end
    # a cap on kept false segments per frame restricts the candidates
    cap = 0.5
    tc = balanced_threshold(p, is_fp, sets, frames, max_fp_per_frame=cap)
    ok = [c for c in cands if all(
        sum(pi <= c for pi, f, s in zip(p, is_fp, sets) if s == name and f) / k <= cap
        for name, k in frames.items())]
    assert min(_shares_loop(tc, p, is_fp, sets)) == pytest.approx(
        max(min(_shares_loop(c, p, is_fp, sets)) for c in ok))
    assert tc in ok and tc <= t
    # a set with only false segments contributes its removed share alone
    only_fp = balanced_threshold(np.array([0.2, 0.9, 0.4]), np.array([True, True, False]),
                                 np.array(['a', 'a', 'b'], dtype=object))
    assert only_fp == pytest.approx(0.4)
    with pytest.raises(OodSegError, match='cap needs frames'):
        balanced_threshold(p, is_fp, sets, None, max_fp_per_frame=0.5)


def test_cv_repeats_pool_the_fold_draws_for_the_threshold():
    from ood_seg_ros.tools.meta_fit import fit_chosen, fit_meta
    rng = np.random.default_rng(12)
    n = 160
    is_fp = rng.random(n) < 0.6
    feats = rng.normal(size=(n, 3)) + 0.8 * is_fp[:, None]      # informative, overlapping
    groups = np.arange(n) // 4
    sets = np.where(np.arange(n) < 100, 'a', 'b').astype(object)
    frames = {'a': 25, 'b': 15}
    names = ['f0', 'f1', 'f2']
    one = fit_chosen(feats, is_fp, None, groups, sets, frames, names, features='all',
                     cs=(1.0,), balanced=True)[1]
    assert one['cv_repeats'] == 1
    clf, rep = fit_chosen(feats, is_fp, None, groups, sets, frames, names, features='all',
                          cs=(1.0,), balanced=True, repeats=4)
    assert rep['cv_repeats'] == 4 and clf.threshold == rep['threshold']
    draws = [fit_meta(feats, is_fp, None, names, groups, seed=s, return_oof=True)[1]['p_oof']
             for s in range(4)]
    # the threshold maximises the worst share of the per-set shares averaged over the draws
    cands = sorted({0.0, *np.concatenate(draws).tolist()})

    def mean_shares(t):
        return np.mean([_shares_loop(t, d, is_fp, sets) for d in draws], axis=0)

    best = max(min(mean_shares(c)) for c in cands)
    assert min(mean_shares(rep['threshold'])) == pytest.approx(best)
    want = mean_shares(rep['threshold'])      # a: removed, kept; b: removed, kept
    got = [rep['per_set'][s][k] for s in ('a', 'b') for k in ('fp_removed', 'tp_kept')]
    assert got == pytest.approx(want.tolist())
    assert rep['per_set']['a']['n_segments'] == 100 and rep['per_set']['b']['frames'] == 15
    kept_fp = np.mean([((d <= rep['threshold']) & is_fp & (sets == 'b')).sum() for d in draws])
    assert rep['per_set']['b']['false_detections_per_frame'] == pytest.approx(kept_fp / 15)
    with pytest.raises(OodSegError, match='cv-repeats'):
        fit_chosen(feats, is_fp, None, groups, sets, frames, names, features='all',
                   cs=(1.0,), balanced=True, repeats=0)
