"""Mergeable summaries (tools.metric_summary) against scikit-learn and the exact metrics."""

import math

import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools import metric_summary as S
from ood_seg_ros.tools import metrics as M
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

BOUND = 0.002       # the stated merge bound on AP and FPR95


def _sk_reference(frames):
    """Exact pooled AP, FPR95 (sklearn's ROC), AUROC of the valid pixels of ``frames``."""
    s = np.concatenate([f[0][f[1] != 255] for f in frames]).astype(np.float64)
    y = np.concatenate([f[1][f[1] != 255] for f in frames]).astype(int)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    first = int(np.argmax(tpr >= 0.95))
    return {'ap': average_precision_score(y, s), 'fpr95': fpr[first],
            'auroc': roc_auc_score(y, s)}


def _clustered_frames(rng, n=6, shape=(60, 80)):
    """Heatmaps in [0, 1] clustered within 1e-2 of 1 and of 0 (float32, as published)."""
    frames = []
    for _ in range(n):
        lab = (rng.random(shape) < 0.2).astype(np.uint8)
        near_one = rng.random(shape) < 0.7
        # -log10 of the distance to the end: OoD pixels closer to it by ~1 decade
        decades = rng.normal(4.0, 1.0, shape) + 1.2 * lab
        dist = 10.0 ** -np.clip(decades, 2.0, 9.0)
        score = np.where(near_one, 1.0 - dist, dist * (1 + lab))
        lab[rng.random(shape) < 0.05] = 255
        frames.append((score.astype(np.float32), lab))
    return frames


def _summary(frames, domain=(0.0, 1.0)):
    hist = S.ScoreHistogram(domain)
    for s, y in frames:
        hist.add(s, y)
    return hist


def test_clustered_scores_within_bound_where_equal_width_bins_fail():
    frames = _clustered_frames(np.random.default_rng(0))
    ref = _sk_reference(frames)
    res = _summary(frames).result()
    assert abs(res['ap'] - ref['ap']) <= BOUND
    assert abs(res['fpr95'] - ref['fpr95']) <= BOUND
    assert abs(res['auroc'] - ref['auroc']) <= BOUND
    # the test can fail: 65536 equal-width bins over [0, 1] merge each cluster into a bin
    acc = M.PixelMetricAccumulator('binned', n_bins=65536, score_range=(0.0, 1.0))
    for s, y in frames:
        acc.add(s, y)
    old = acc.result()
    assert max(abs(old['ap'] - ref['ap']), abs(old['fpr95'] - ref['fpr95'])) > BOUND
    # and so do exact counts per float16 value (4.9e-4 apart near 1)
    half = [(s.astype(np.float16).astype(np.float32), y) for s, y in frames]
    f16 = M.pixel_metrics(np.concatenate([s.ravel() for s, _ in half]),
                          np.concatenate([y.ravel() for _, y in half]))
    assert max(abs(f16['ap'] - ref['ap']), abs(f16['fpr95'] - ref['fpr95'])) > BOUND


@pytest.mark.parametrize('seed', [1, 2])
def test_unbounded_scores_within_bound(seed):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(4):
        lab = (rng.random((40, 50)) < 0.1).astype(np.uint8)
        s = rng.normal(-3.0, 2.0, lab.shape) + 2.0 * lab    # both signs, like energy
        lab[rng.random(lab.shape) < 0.05] = 255
        frames.append((s.astype(np.float32), lab))
    ref = _sk_reference(frames)
    res = _summary(frames, domain=None).result()
    for k in ('ap', 'fpr95', 'auroc'):
        assert abs(res[k] - ref[k]) <= BOUND


def test_merge_is_exact_in_any_grouping_and_round_trips():
    rng = np.random.default_rng(3)
    frames = _clustered_frames(rng, n=7)
    whole = _summary(frames)
    parts = [_summary(frames[i::3]) for i in (2, 0, 1)]
    merged = S.ScoreHistogram((0.0, 1.0))
    for p in parts:
        merged.merge(p)
    assert np.array_equal(merged.levels()[0], whole.levels()[0])
    assert np.array_equal(merged.counts, whole.counts)
    assert merged.result() == whole.result()
    back = S.ScoreHistogram.from_state(dict(merged.state('x_')), 'x_')
    assert back.result() == whole.result()
    with pytest.raises(OodSegError, match='domains'):
        merged.merge(S.ScoreHistogram(None))


def test_keys_are_monotone_and_ties_stay_ties():
    t = np.array([-np.inf, -1e30, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 7.25, 1e30, np.inf])
    keys = S.float_keys(S.transform(t)[0])
    assert keys[4] == keys[5]       # -0.0 and 0.0: one tie
    assert np.all(np.diff(np.delete(keys, 4)) > 0)
    # bin edges bracket the values
    lo, hi = S.key_values(keys), S.key_values(keys, upper=True)
    finite = np.isfinite(t)
    assert np.all(lo[finite] <= t[finite].astype(np.float32)) and np.all(
        hi[finite] >= t[finite].astype(np.float32))


def test_best_f1_threshold_predicts_the_best_bins():
    rng = np.random.default_rng(4)
    frames = _clustered_frames(rng, n=3)
    res = _summary(frames).result()
    s = np.concatenate([f[0][f[1] != 255] for f in frames])
    y = np.concatenate([f[1][f[1] != 255] for f in frames]).astype(bool)
    pred = s > res['best_f1_threshold']
    f1 = 2 * (pred & y).sum() / (pred.sum() + y.sum())
    assert f1 == pytest.approx(res['best_f1'], abs=BOUND)


def test_clamped_and_undefined():
    hist = S.ScoreHistogram((0.0, 1.0))
    hist.add(np.array([[-0.5, 0.2, 1.5]]), np.array([[0, 0, 0]], np.uint8))
    res = hist.result()
    assert res['n_clamped'] == 2 and math.isnan(res['ap']) and res['undefined']


def _blob_frames(rng, n=5, shape=(60, 80)):
    frames = []
    for _ in range(n):
        lab = np.zeros(shape, np.uint8)
        score = rng.random(shape).astype(np.float32) * 0.4
        for _ in range(3):
            y, x = rng.integers(0, shape[0] - 20), rng.integers(0, shape[1] - 20)
            lab[y:y + 15, x:x + 18] = 1
            dy, dx = rng.integers(-4, 5, 2)
            score[max(0, y + dy):y + dy + 16, max(0, x + dx):x + dx + 16] = 0.9
        lab[:3] = 255
        frames.append((score, lab))
    return frames


def test_component_counts_equal_component_metrics_and_merge():
    rng = np.random.default_rng(5)
    frames = _blob_frames(rng)
    ref = M.component_metrics([f[0] for f in frames], [f[1] for f in frames], 0.5,
                              min_pred_size=20, min_gt_size=10)
    M.TRACK_SIZES['test'] = (20, 10)
    try:
        counts = [S.ComponentCounts(0.5, 'test') for _ in range(2)]
        for i, (s, y) in enumerate(frames):
            counts[i % 2].add(s, y)
    finally:
        del M.TRACK_SIZES['test']
    res = counts[0].merge(counts[1]).result()
    assert ref['n_gt'] > 0 and ref['n_pred'] > 0
    for k in ('siou', 'ppv', 'siou_pred', 'f1_mean'):
        assert res[k] == pytest.approx(ref[k], abs=1e-12)
    for k in ('tp', 'fn', 'fp', 'n_gt', 'n_pred', 'n_frames'):
        assert res[k] == ref[k]


def test_detections_and_latency():
    det = S.DetectionCounts()
    for n in (0, 2, 2, 5):
        det.add(n)
    other = S.DetectionCounts()
    other.add(1)
    res = det.merge(other).result()
    assert res == {'frames': 5, 'detections': 10, 'per_frame': 2.0, 'max': 5}
    rng = np.random.default_rng(6)
    ms = rng.lognormal(3.0, 0.5, 2001)
    a, b = S.LatencyHistogram(), S.LatencyHistogram()
    a.add_ms(ms[:700])
    b.add_ms(ms[700:])
    lat = a.merge(b).result()
    assert lat['p50'] == pytest.approx(np.percentile(ms, 50, method='lower'), rel=0.011)
    assert lat['p95'] == pytest.approx(np.percentile(ms, 95, method='lower'), rel=0.011)
    assert lat['mean'] == pytest.approx(ms.mean()) and lat['max'] == ms.max()


def test_eval_summary_state_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    frames = _blob_frames(rng, n=3)
    summ = S.EvalSummary(threshold=0.5)
    for s, y in frames:
        summ.add_frame(s, y, n_detections=2, latency_ms=12.5)
    np.savez(tmp_path / 's.npz', **summ.state())
    with np.load(tmp_path / 's.npz', allow_pickle=False) as z:
        back = S.EvalSummary.from_state(dict(z))
    assert back.result() == summ.result()
    # a summary of GT-less frames (no components) merges into one with components and back
    no_gt = S.EvalSummary()
    no_gt.add_frame(n_detections=4, latency_ms=10.0)
    both = S.EvalSummary().merge(no_gt).merge(summ).result()
    assert both['component'] == summ.result()['component']
    assert both['detections']['frames'] == 4 and both['pixel']['n_frames'] == 3
