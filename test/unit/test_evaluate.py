"""Pipeline and evaluator on a tiny random bundle and a hand-made OoD set."""

import json

import cv2
from model_helpers import save_tiny_bundle
import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.pipeline import FrameResult, Pipeline
from ood_seg_ros.tools.calibrate import calibrate
from ood_seg_ros.tools.data.ood_sets import OodDataset
from ood_seg_ros.tools.evaluate import evaluate_bundle, OodEvaluation, to_json
import pytest

H, W = 96, 128


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp('bundle') / 'b', (H, W))


@pytest.fixture(scope='module')
def ood_set(tmp_path_factory):
    """Four frames: three with a pasted square (OoD = 1, with void), one with none."""
    root = tmp_path_factory.mktemp('ood')
    (root / 'images').mkdir()
    (root / 'labels').mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        lab = np.zeros((H, W), np.uint8)
        lab[:6] = 255
        if i < 3:
            y, x = 30 + 5 * i, 40 + 10 * i
            img[y:y + 24, x:x + 30] = (250, 20 * i, 30)
            lab[y:y + 24, x:x + 30] = 1
        cv2.imwrite(str(root / 'images' / f'f{i}.png'), img[:, :, ::-1])
        cv2.imwrite(str(root / 'labels' / f'f{i}.png'), lab)
    return root


def test_process_returns_frame_sized_results(bundle):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', threshold=0.2)
    frame = np.random.default_rng(1).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    res = pipe.process(frame)
    assert isinstance(res, FrameResult)
    assert res.heatmap.shape == (150, 200) and res.heatmap.dtype == np.float32
    assert 0.0 <= res.heatmap.min() and res.heatmap.max() <= 1.0
    assert res.semantic.shape == (150, 200) and res.semantic.dtype == np.uint8
    assert res.instances.shape == (150, 200) and res.instances.dtype == np.uint16
    kept = [s for s in res.segments if s.kept]
    assert sorted(s.id for s in kept) == list(range(1, len(kept) + 1))
    assert set(np.unique(res.instances)) <= {0} | {s.id for s in kept}
    for s in res.segments:
        x0, y0, x1, y1 = s.bbox
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 150
    for key in ('preprocess_ms', 'inference_ms', 'postprocess_ms', 'total_ms'):
        assert res.timings[key] >= 0


@pytest.mark.parametrize('frame,match', [
    (np.zeros((0, 10, 3), np.uint8), 'empty'),
    (np.zeros((10, 10, 3), np.float32), 'uint8'),
    (np.zeros((10, 10), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((10, 10, 4), np.uint8), r'\(H, W, 3\)'),
    ('not an image', 'numpy'),
])
def test_bad_frames_are_clear_errors(bundle, frame, match):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    with pytest.raises(OodSegError, match=match):
        pipe.process(frame)


def test_too_large_frame_is_rejected(bundle):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    pipe.max_pixels = 100 * 100
    with pytest.raises(OodSegError, match='pixel limit'):
        pipe.process(np.zeros((101, 100, 3), np.uint8))


def test_settings_are_validated(bundle):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    with pytest.raises(OodSegError, match='threshold'):
        pipe.set_threshold(1.5)
    with pytest.raises(OodSegError, match='unknown heatmap score'):
        pipe.set_score('nonsense')
    with pytest.raises(OodSegError, match='not computed'):
        pipe.set_score('max_logit')  # the deployment graph does not compute it
    full = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True)
    with pytest.raises(OodSegError, match='normalisation'):
        full.set_score('max_logit')  # computed, but the bundle has no constants for it
    full.set_score('moose_mi')  # natural bounds [0, log C]
    assert full.norm == (0.0, pytest.approx(np.log(11)))


def test_evaluator_reports_every_score_and_undefined_meta(bundle, ood_set, tmp_path):
    res = evaluate_bundle(bundle, ood_root=ood_set, out_dir=tmp_path / 'ev')
    assert res['frames'] == 4
    assert {'msp', 'moose_mi', 'pgn_uni_p0.5'} <= set(res['scores'])
    for name, m in res['scores'].items():
        assert set(m) >= {'ap', 'fpr95', 'auroc', 'siou', 'ppv', 'f1_mean'}, name
        assert 0.0 <= m['ap'] <= 1.0
    assert 'undefined' in res['meta']
    written = json.loads((tmp_path / 'ev' / 'metrics.json').read_text())
    assert written['frames'] == 4 and 'scores' in written
    assert (tmp_path / 'ev' / 'pr_curve.png').exists()
    assert any(p.startswith('overlay_') for p in res['plots'])


def test_component_metrics_of_named_scores_only(bundle, ood_set):
    full = evaluate_bundle(bundle, ood_root=ood_set)['scores']
    res = evaluate_bundle(bundle, ood_root=ood_set, component_scores=['msp'])
    chosen = res['heatmap_score']
    assert set(res['scores']) == set(full)
    for name, m in res['scores'].items():
        assert m['ap'] == pytest.approx(full[name]['ap']), name
        if name in ('msp', chosen):
            assert {k: m[k] for k in ('siou', 'ppv', 'f1_mean')} == pytest.approx(
                {k: full[name][k] for k in ('siou', 'ppv', 'f1_mean')}, nan_ok=True), name
        else:
            assert 'siou' not in m and 'f1_mean' not in m, name


def test_entropy_bundle_rows_and_plots(bundle, ood_set, tmp_path):
    res = evaluate_bundle(bundle, ood_root=ood_set, entropy_bundle=bundle,
                          out_dir=tmp_path / 'ev2')
    for name in ('entmax_entropy', 'entmax_msp', 'entmax_max_logit', 'entmax_moose_mi',
                 'entmax_pgn_uni_p0.5'):
        assert res['scores'][name]['ap'] == pytest.approx(res['scores'][name[7:]]['ap'])
    assert (tmp_path / 'ev2' / 'pr_curve.png').exists()


def test_undefined_metrics_are_null_not_zero(bundle, tmp_path):
    root = tmp_path / 'clean'
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    for i in range(2):
        cv2.imwrite(str(root / 'images' / f'c{i}.png'), np.full((H, W, 3), 90, np.uint8))
        cv2.imwrite(str(root / 'labels' / f'c{i}.png'), np.zeros((H, W), np.uint8))
    res = evaluate_bundle(bundle, ood_root=root)
    m = res['scores']['msp']
    assert np.isnan(m['ap']) and 'undefined' in m
    assert json.loads(to_json(res))['scores']['msp']['ap'] is None


def test_calibration_and_meta_segments(bundle, ood_set):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True)
    ev = OodEvaluation(pipe, OodDataset(ood_set))
    cal = calibrate(ev)
    assert cal['heatmap_score'] in res_names(ev)
    lo, hi = cal['normalisation'][cal['heatmap_score']]
    assert lo < hi and 0.0 < cal['segment_threshold'] < 1.0
    pipe.runtime['normalisation'] = cal['normalisation']
    pipe.set_score(cal['heatmap_score'])
    pipe.set_threshold(cal['segment_threshold'])
    feats, is_fp, iou, groups, per_frame = ev.segment_records()
    assert feats.shape == (len(is_fp), len(pipe.extractor.feature_names))
    assert len(per_frame) == 4 and set(np.unique(groups)) <= set(range(4))
    assert ((iou > 0) == ~is_fp).all()  # a true segment overlaps GT, an FP does not
    assert (iou <= 1.0).all()


def res_names(ev):
    return set(ev.low_maps[0]) - {'probs'}


def test_missing_label_names_the_file(bundle, tmp_path):
    root = tmp_path / 'broken'
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    cv2.imwrite(str(root / 'images' / 'lonely.png'), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(OodSegError, match='lonely'):
        evaluate_bundle(bundle, ood_root=root)


def test_derived_artefacts_go_to_a_user_cache_for_read_only_bundles(bundle, tmp_path,
                                                                    monkeypatch):
    import os
    from ood_seg_ros.model.bundle import derived_dir
    assert derived_dir(bundle) == bundle.resolve() / 'derived'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode: False if mode == os.W_OK
                        else real_access(p, mode))
    d = derived_dir(bundle)
    assert d.parent.parent == tmp_path / 'cache' / 'ood_seg_ros'
    assert d.name == 'derived' and d.parent.name.startswith(bundle.name + '-')
