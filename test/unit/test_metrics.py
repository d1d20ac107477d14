"""Tests of ood_seg_ros.tools.metrics against scikit-learn, brute force and hand-worked cases."""

import math
import time

import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools import metrics as M
import pytest
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score


def _frames(rng, n, shape=(30, 40), levels=20, void_frac=0.1):
    """Random frames with heavy ties (scores on a coarse grid) and some void pixels."""
    out = []
    for _ in range(n):
        lab = (rng.random(shape) < 0.15).astype(np.uint8)
        score = np.round(rng.random(shape) * levels + lab * 4 * rng.random(shape)) / levels
        lab[rng.random(shape) < void_frac] = 255
        out.append((score.astype(np.float32), lab))
    return out


def _sk(frames):
    """Pool the valid pixels of frames for scikit-learn."""
    s = np.concatenate([f[0][f[1] != 255] for f in frames]).astype(np.float64)
    y = np.concatenate([f[1][f[1] != 255] for f in frames]).astype(int)
    return s, y


def _fpr95_brute(s, y):
    """FPR at the first (descending) distinct threshold whose TPR reaches 0.95."""
    for t in np.unique(s)[::-1]:
        pred = s >= t
        if pred[y == 1].sum() >= 0.95 * (y == 1).sum():
            return pred[y == 0].mean()
    raise AssertionError('unreachable')


def _assert_matches_sklearn(res, s, y):
    """AP and AUROC as scikit-learn, FPR95 as the brute-force threshold walk."""
    assert res['ap'] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert res['auroc'] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert res['fpr95'] == pytest.approx(_fpr95_brute(s, y), abs=1e-12)


def _pool_and_check(acc, frames):
    """Add the frames to ``acc``; check the pooled result against scikit-learn."""
    for f in frames:
        acc.add(*f)
    s, y = _sk(frames)
    res = acc.result()
    _assert_matches_sklearn(res, s, y)
    return res, s


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_pixel_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    frames = _frames(rng, 1, shape=(50, 60))
    s, y = _sk(frames)
    assert len(np.unique(s)) < s.size / 10   # heavy ties
    res = M.pixel_metrics(*frames[0])
    _assert_matches_sklearn(res, s, y)
    assert res['n_pos'] == int(y.sum()) and res['n_neg'] == int((y == 0).sum())
    assert 'undefined' not in res


def test_pixel_metrics_continuous_float64_scores():
    rng = np.random.default_rng(5)
    y = (rng.random(3000) < 0.3).astype(np.uint8)
    s = rng.normal(size=3000) + y
    res = M.pixel_metrics(s, y)
    assert res['ap'] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert res['auroc'] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_accumulator_exact_pools_frames():
    rng = np.random.default_rng(3)
    frames = _frames(rng, 6)
    acc = M.PixelMetricAccumulator(mode='exact')
    res, s = _pool_and_check(acc, frames)
    assert res['n_frames'] == 6
    # pooled is not the mean of per-frame APs in general: check pooling really happened
    assert res['n_pos'] + res['n_neg'] == s.size


def test_binned_equals_exact_when_scores_sit_in_bins():
    rng = np.random.default_rng(4)
    n_bins = 256
    frames = []
    for _ in range(4):
        lab = (rng.random((20, 30)) < 0.2).astype(np.uint8)
        k = np.clip(rng.integers(0, 200, lab.shape) + 50 * lab, 0, n_bins - 1)
        lab[rng.random(lab.shape) < 0.05] = 255
        frames.append(((k + 0.5) / n_bins, lab))
    acc = M.PixelMetricAccumulator('binned', n_bins=n_bins, score_range=(0, 1))
    res, s = _pool_and_check(acc, frames)
    assert res['n_clamped'] == 0


@pytest.mark.parametrize('score_range', [None, (0.0, 1.0)])
def test_binned_close_to_exact_on_realistic_maps(score_range):
    rng = np.random.default_rng(6)
    exact = M.PixelMetricAccumulator('exact')
    binned = M.PixelMetricAccumulator('binned', score_range=score_range)
    for i in range(5):
        lab = np.zeros((120, 160), np.uint8)
        lab[40 + i:80, 50:90 + 5 * i] = 1        # an object
        lab[:10] = 255                            # void band
        smooth = rng.beta(2, 8, lab.shape) + 0.5 * lab * rng.beta(4, 2, lab.shape)
        score = np.clip(smooth, 0, 1).astype(np.float32)
        exact.add(score, lab)
        binned.add(score, lab)
    e, b = exact.result(), binned.result()
    for key in ('ap', 'auroc', 'fpr95'):
        assert abs(e[key] - b[key]) < 1e-3, key
    assert (e['n_pos'], e['n_neg']) == (b['n_pos'], b['n_neg'])


def test_binned_auto_range_heavy_tail_anomaly_free_first_frame():
    rng = np.random.default_rng(0)
    exact = M.PixelMetricAccumulator('exact')
    binned = M.PixelMetricAccumulator('binned')
    for i in range(4):
        lab = np.zeros((256, 512), np.uint8)
        if i:
            lab[100:130, 150:150 + 40 * i] = 1
        score = np.exp(rng.normal(-2, 1, lab.shape)) + lab * np.exp(rng.normal(0, 1, lab.shape))
        exact.add(score.astype(np.float32), lab)
        binned.add(score.astype(np.float32), lab)
    e, b = exact.result(), binned.result()
    assert b['n_clamped'] > 0                     # the first frame's range misses the tail
    for key in ('ap', 'auroc', 'fpr95', 'best_f1'):
        assert abs(e[key] - b[key]) < 1e-3, key


def test_binned_auto_range_clamps_out_of_range():
    acc = M.PixelMetricAccumulator('binned', n_bins=100)
    lab = np.zeros((10, 10), np.uint8)
    lab[0, :5] = 1
    acc.add(np.linspace(0, 1, 100).reshape(10, 10), lab)
    lo, hi = acc.result()['score_range']
    assert lo < 0.0 and hi > 1.0                  # widened beyond the percentiles
    acc.add(np.full((10, 10), 50.0), lab)          # all above the range: clamped to top bin
    res = acc.result()
    assert res['n_clamped'] == 100
    assert acc.hist[:, -1].sum() == 100
    assert res['n_pos'] == 10 and res['n_neg'] == 190


def test_fpr95_and_ap_hand_case():
    # positives: 18 @ 0.9, 1 @ 0.5, 1 @ 0.1; negatives: 10 @ 0.95, 10 @ 0.7, 30 @ 0.5, 50 @ 0.05
    s = np.array([0.9] * 18 + [0.5, 0.1] + [0.95] * 10 + [0.7] * 10 + [0.5] * 30 + [0.05] * 50)
    y = np.array([1] * 20 + [0] * 100, np.uint8)
    res = M.pixel_metrics(s, y)
    # thresholds 0.95: TPR 0; 0.9: 18/20; 0.7: 18/20; 0.5: 19/20 = 0.95 first, FP 10+10+30
    assert res['fpr95'] == pytest.approx(0.5)
    # AP: recall steps 0.9 @ P 18/28, 0.05 @ P 19/69 (tp 19, fp 50), 0.05 @ P 20/70
    assert res['ap'] == pytest.approx(0.9 * 18 / 28 + 0.05 * 19 / 69 + 0.05 * 20 / 70)
    # best F1: at 0.9, F1 = 2*18 / (18 + 10 + 20) = 0.75; 'score > t' needs t = 0.7
    assert res['best_f1'] == pytest.approx(0.75)
    assert res['best_f1_threshold'] == pytest.approx(0.7)
    assert M.best_f1_threshold(s, y) == pytest.approx(0.7)


def test_best_f1_threshold_exact_and_binned_against_brute_force():
    rng = np.random.default_rng(8)
    lab = (rng.random((40, 50)) < 0.2).astype(np.uint8)
    score = (rng.random(lab.shape) + 0.7 * lab).astype(np.float32)

    def f1_at(t):
        pred = score > t
        tp = np.sum(pred & (lab == 1))
        return 2 * tp / (pred.sum() + (lab == 1).sum())

    best_brute = max(f1_at(t) for t in np.unique(score))
    exact = M.PixelMetricAccumulator('exact')
    exact.add(score, lab)
    t_exact = M.best_f1_threshold(exact)
    assert f1_at(t_exact) == pytest.approx(best_brute, abs=1e-12)
    binned = M.PixelMetricAccumulator('binned', n_bins=65536, score_range=(0, 2))
    binned.add(score, lab)
    t_binned = M.best_f1_threshold(binned)
    assert f1_at(t_binned) == pytest.approx(best_brute, abs=2e-3)
    assert binned.result()['best_f1'] == pytest.approx(f1_at(t_binned), abs=1e-12)


def test_undefined_pixel_metrics_are_nan_with_reason():
    score = np.random.default_rng(0).random((8, 8))
    res = M.pixel_metrics(score, np.zeros((8, 8), np.uint8))
    assert math.isnan(res['ap']) and math.isnan(res['fpr95']) and math.isnan(res['auroc'])
    assert res['undefined'] == 'no OoD pixels'
    assert math.isnan(M.best_f1_threshold(score, np.zeros((8, 8), np.uint8)))
    res = M.pixel_metrics(score, np.ones((8, 8), np.uint8))
    assert math.isnan(res['fpr95']) and math.isnan(res['auroc'])
    assert res['ap'] == pytest.approx(1.0)
    assert 'no in-distribution pixels' in res['undefined']
    for mode in ('exact', 'binned'):
        acc = M.PixelMetricAccumulator(mode)
        acc.add(score, np.full((8, 8), 255, np.uint8))
        res = acc.result()
        assert math.isnan(res['ap']) and res['undefined'] == 'no valid (non-void) pixels'
        acc.add(score, np.zeros((8, 8), np.uint8))
        assert acc.result()['undefined'] == 'no OoD pixels'


def test_bad_pixel_inputs_raise():
    with pytest.raises(OodSegError):
        M.pixel_metrics(np.zeros((4, 4)), np.zeros((4, 5), np.uint8))
    with pytest.raises(OodSegError):
        M.pixel_metrics(np.zeros((4, 4)), np.full((4, 4), 2, np.uint8))
    bad = np.zeros((4, 4))
    bad[1, 1] = np.nan
    with pytest.raises(OodSegError):
        M.PixelMetricAccumulator('binned').add(bad, np.zeros((4, 4), np.uint8))
    with pytest.raises(OodSegError):
        M.PixelMetricAccumulator('fast')


def test_binned_memory_constant_over_large_frames():
    rng = np.random.default_rng(1)
    h, w = 1024, 2048
    lab = np.zeros((h, w), np.uint8)
    lab[400:600, 900:1200] = 1
    lab[:100] = 255
    base = rng.random((h, w), dtype=np.float32) * 0.5 + lab * 0.4
    acc = M.PixelMetricAccumulator('binned')
    t0 = time.perf_counter()
    acc.add(base, lab)
    arrays = {k: v.nbytes for k, v in vars(acc).items() if isinstance(v, np.ndarray)}
    size0 = sum(arrays.values())
    assert size0 == acc.nbytes == 2 * 65536 * 8
    for i in range(19):
        acc.add(base + np.float32(i * 1e-3), lab)
    arrays = {k: v.nbytes for k, v in vars(acc).items() if isinstance(v, np.ndarray)}
    assert sum(arrays.values()) == size0 == acc.nbytes
    assert not any(isinstance(v, list) for v in vars(acc).values())
    res = acc.result()
    assert res['n_pos'] == 20 * 200 * 300
    assert res['n_pos'] + res['n_neg'] == 20 * (h - 100) * w
    assert time.perf_counter() - t0 < 15
    exact = M.PixelMetricAccumulator('exact')
    exact.add(base[200:208], lab[200:208])
    n1 = exact.nbytes
    exact.add(base[200:208], lab[200:208])
    assert exact.nbytes == 2 * n1 == 2 * 8 * w * 5          # grows: 5 bytes per pixel


# ---------------------------------------------------------------------------------------------
# Component level
# ---------------------------------------------------------------------------------------------

def _component_frame():
    """
    Hand-made 40x80 frame (obstacle track: predicted < 50 px dropped, GT < 10 px void).

    GT A rows 2-9 cols 2-9 (64 px), predicted exactly            -> sIoU 1, PPV 1
    GT B rows 2-9 cols 20-27 (64 px), only a 28 px blob inside    -> blob dropped, sIoU 0
    FP blob rows 20-29 cols 2-11 (100 px) on background           -> PPV 0
    GT C rows 20-27 cols 30-37, GT D rows 20-27 cols 42-49 (64 px each); one predicted blob
      P rows 22-25 cols 30-49 (80 px) touches both: |C ∩ P| = 32, A(C) = P ∩ D = 32,
      sIoU(C) = 32 / (64 + 80 - 32 - 32) = 0.4 = sIoU(D); PPV(P) = 64 / 80 = 0.8
    GT E rows 35-36 cols 20-23 (8 px < 10) becomes void; predicted blob rows 34-38 cols
      19-30 (60 px, kept) covers it: 52 px outside the void, none in GT -> PPV 0
    predicted rows 12-17 cols 60-75 (96 px) split by void cols 67-68 into 2 x 42 px -> dropped
    rows 12-17 cols 40-50 score == threshold -> not predicted
    """
    lab = np.zeros((40, 80), np.uint8)
    pred = np.zeros((40, 80), bool)
    # (rows, cols) of the GT components A, B, C, D, E and of the predicted blobs
    for r0, r1, c0, c1 in ((2, 10, 2, 10), (2, 10, 20, 28), (20, 28, 30, 38),
                           (20, 28, 42, 50), (35, 37, 20, 24)):
        lab[r0:r1, c0:c1] = 1
    for r0, r1, c0, c1 in ((2, 10, 2, 10), (3, 7, 21, 28), (20, 30, 2, 12), (22, 26, 30, 50),
                           (34, 39, 19, 31), (12, 18, 60, 76)):
        pred[r0:r1, c0:c1] = True
    lab[12:18, 67:69] = 255
    score = np.where(pred, 0.9, 0.2).astype(np.float32)
    score[12:18, 40:51] = 0.5              # 66 px equal to the threshold: not predicted (>)
    return score, lab


def test_component_metrics_hand_case():
    score, lab = _component_frame()
    res = M.component_metrics([score], [lab], 0.5, track='obstacle')
    assert res['n_gt'] == 4                # A, B, C, D (E voided)
    assert res['n_pred'] == 4              # A, FP, P, E-blob
    assert res['siou'] == pytest.approx((1 + 0 + 0.4 + 0.4) / 4)
    assert res['ppv'] == pytest.approx((1 + 0 + 0.8 + 0) / 4)
    # SMIYC-code sIoU_pred(P) = 64 / (128 + 80 - 64) = 4/9
    assert res['siou_pred'] == pytest.approx((1 + 0 + 4 / 9 + 0) / 4)
    assert res['taus'] == pytest.approx([0.25 + 0.05 * i for i in range(11)])
    # tau <= 0.40: TP 3 (A, C, D), FN 1, FP 2 -> F1 6/9; tau >= 0.45: TP 1, FN 3, FP 2 -> 2/7
    assert res['tp'] == [3] * 4 + [1] * 7
    assert res['fn'] == [1] * 4 + [3] * 7
    assert res['fp'] == [2] * 11
    assert res['f1_per_tau'] == pytest.approx([6 / 9] * 4 + [2 / 7] * 7)
    assert res['f1_mean'] == pytest.approx(14 / 33)
    assert 'undefined' not in res


def test_component_metrics_pool_frames_and_single_frame_input():
    score, lab = _component_frame()
    one = M.component_metrics(score, lab, 0.5, track='obstacle')
    empty = (np.zeros_like(score), np.zeros_like(lab))
    only_fp = (np.zeros_like(score), np.zeros_like(lab))
    only_fp[0][5:15, 5:15] = 1.0           # 100 px false positive
    two = M.component_metrics(iter([score, empty[0], only_fp[0], score]),
                              iter([lab, empty[1], only_fp[1], lab]), 0.5, track='obstacle')
    assert two['n_frames'] == 4
    assert two['n_gt'] == 8 and two['n_pred'] == 9
    assert two['siou'] == pytest.approx(one['siou'])
    assert two['ppv'] == pytest.approx((2 * 1.8) / 9)
    # tau <= 0.40: TP 6, FN 2, FP 5 -> 12/19; otherwise TP 2, FN 6, FP 5 -> 4/15
    assert two['f1_mean'] == pytest.approx((4 * 12 / 19 + 7 * 4 / 15) / 11)


def test_component_metrics_anomaly_track_size_filters():
    lab = np.zeros((120, 120), np.uint8)
    score = np.zeros((120, 120), np.float32)
    score[5:25, 5:25] = 1                  # 400 px < 500: dropped
    score[60:85, 60:85] = 1                # 625 px: kept, on GT F
    lab[60:85, 60:85] = 1                  # GT F 625 px
    lab[5:14, 40:50] = 1                   # GT 90 px < 100: void, not a false negative
    res = M.component_metrics([score], [lab], 0.5)          # anomaly track: 500 / 100
    assert (res['n_gt'], res['n_pred']) == (1, 1)
    assert res['siou'] == pytest.approx(1.0) and res['ppv'] == pytest.approx(1.0)
    assert res['f1_mean'] == pytest.approx(1.0)
    res = M.component_metrics([score], [lab], 0.5, track='obstacle')   # 50 / 10
    assert (res['n_gt'], res['n_pred']) == (2, 2)
    assert res['siou'] == pytest.approx(0.5) and res['ppv'] == pytest.approx(0.5)


def test_component_metrics_tau_boundaries():
    lab = np.zeros((30, 30), np.uint8)
    lab[5:13, 5:13] = 1                    # 64 px
    score = np.zeros((30, 30))
    score[5:13, 5:21] = 1                  # 128 px covering it: sIoU = PPV = 0.5 exactly
    res = M.component_metrics([score], [lab], 0.5, track='obstacle')
    assert res['siou'] == 0.5 and res['ppv'] == 0.5
    # tau = 0.50: sIoU >= tau is a TP, PPV < tau fails so no FP; tau >= 0.55: FN + FP
    assert res['tp'] == [1] * 6 + [0] * 5
    assert res['fp'] == [0] * 6 + [1] * 5
    assert res['f1_per_tau'] == pytest.approx([1.0] * 6 + [0.0] * 5)


def test_component_metrics_undefined_and_errors():
    res = M.component_metrics([np.zeros((20, 20))], [np.zeros((20, 20), np.uint8)], 0.5)
    assert res['n_gt'] == 0 and res['n_pred'] == 0
    assert math.isnan(res['siou']) and math.isnan(res['ppv']) and math.isnan(res['f1_mean'])
    assert 'no GT components' in res['undefined'] and 'f1 undefined' in res['undefined']
    lab = np.zeros((20, 20), np.uint8)
    lab[2:10, 2:10] = 1
    res = M.component_metrics([np.zeros((20, 20))], [lab], 0.5, track='obstacle')
    assert res['siou'] == 0 and math.isnan(res['ppv']) and res['f1_mean'] == 0
    assert 'no predicted components' in res['undefined']
    with pytest.raises(OodSegError):
        M.component_metrics([np.zeros((4, 4))] * 2, [np.zeros((4, 4), np.uint8)], 0.5)
    with pytest.raises(OodSegError):
        M.component_metrics([np.zeros((4, 4))], [np.zeros((4, 4), np.uint8)], 0.5, track='x')
    with pytest.raises(OodSegError):
        M.component_metrics([np.zeros((4, 4))], [np.zeros((4, 4), np.uint8)], float('nan'))


# ---------------------------------------------------------------------------------------------
# ECE, AuSE, mIoU, meta tasks
# ---------------------------------------------------------------------------------------------

def test_ece_hand_cases_and_brute_force():
    conf = np.array([0.25] * 4 + [0.75] * 4)
    corr = np.array([1, 0, 0, 0, 1, 1, 1, 0], bool)
    assert M.ece(conf, corr) == pytest.approx(0.0, abs=1e-15)
    conf = np.array([0.9] * 10 + [0.2] * 10)
    corr = np.array([1] * 5 + [0] * 5 + [1] * 2 + [0] * 8)
    assert M.ece(conf, corr) == pytest.approx(0.5 * 0.4 + 0.5 * 0.0)
    rng = np.random.default_rng(2)
    conf = rng.random(5000)
    conf[:10] = 0.0
    conf[10:20] = 1.0
    conf[20:30] = 2 / 15                    # on a bin edge: belongs to the lower bin
    corr = rng.random(5000) < conf
    brute = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if m.any():
            brute += m.sum() / conf.size * abs(corr[m].mean() - conf[m].mean())
    assert M.ece(conf, corr) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(OodSegError):
        M.ece([1.2], [1])
    assert math.isnan(M.ece([], []))


def test_ause_hand_cases():
    err = np.array([1.0, 0, 0, 0])
    assert M.ause(err, err) == pytest.approx(0.0, abs=1e-15)
    rng = np.random.default_rng(0)
    e = rng.random(1000)
    assert M.ause(2 * e + 1, e) == pytest.approx(0.0, abs=1e-12)   # monotone = oracle order
    assert M.ause(-e, e) > 0.1
    # worst ordering, 4 steps: removed 0..3; by-u mean 1/4, 1/3, 1/2, 1; oracle 1/4, 0, 0, 0
    assert M.ause([0, 1, 2, 3], err, n_steps=4) == pytest.approx((0 + 1 / 3 + 1 / 2 + 1) / 4)
    # constant uncertainty: expected by-u curve stays 1/4 -> errors 0, 1/4, 1/4, 1/4
    assert M.ause([5, 5, 5, 5], err, n_steps=4) == pytest.approx(3 / 16)
    f, by_u, oracle = M.sparsification_curves([0, 1, 2, 3], err, n_steps=4)
    assert f == pytest.approx([0, 0.25, 0.5, 0.75])
    assert oracle == pytest.approx([0.25, 0, 0, 0])


def test_confusion_matrix_and_miou_against_brute_force():
    rng = np.random.default_rng(7)
    n = 5
    gt = rng.integers(0, n - 1, (30, 40)).astype(np.uint8)    # class 4 never in gt
    pred = rng.integers(0, n - 1, (30, 40)).astype(np.uint8)  # nor predicted
    gt[rng.random(gt.shape) < 0.1] = 255
    cm = M.confusion_matrix(pred, gt, n)
    brute = np.zeros((n, n), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            brute[g, p] += 1
    np.testing.assert_array_equal(cm, brute)
    res = M.miou(cm)
    for c in range(n):
        inter = np.sum((gt == c) & (pred == c))
        union = np.sum(((gt == c) | (pred == c)) & (gt != 255))
        if union == 0:
            assert math.isnan(res['iou'][c])
        else:
            assert res['iou'][c] == pytest.approx(inter / union)
    assert math.isnan(res['iou'][4])
    assert res['miou'] == pytest.approx(np.mean(res['iou'][:4]))
    with pytest.raises(OodSegError):
        M.confusion_matrix(np.full((2, 2), 7), np.zeros((2, 2)), n)


def test_meta_auroc_and_r2_match_sklearn():
    rng = np.random.default_rng(9)
    y = rng.random(500) < 0.4
    p = np.round(rng.random(500) + 0.3 * y, 1)          # ties
    assert M.meta_auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert math.isnan(M.meta_auroc(np.zeros(5), np.arange(5)))
    t = rng.normal(size=200)
    f = t + rng.normal(scale=0.5, size=200)
    assert M.r2(t, f) == pytest.approx(r2_score(t, f), abs=1e-12)
    assert math.isnan(M.r2(np.ones(4), np.arange(4)))
