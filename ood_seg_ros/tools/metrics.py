"""
Evaluation metrics: SMIYC pixel and component metrics, ECE, AuSE, mIoU, AuROC, R^2.

Conventions: a higher score means more anomalous. Label maps use 0 = in-distribution,
1 = OoD / anomaly, 255 = void (excluded everywhere). Pure numpy; scipy.ndimage only for
connected components.

Pixel level (pooled over all valid pixels of all frames):

* AP = sum_n (R_n - R_{n-1}) P_n over the distinct score values in descending order (ties
  form one threshold), identical to ``sklearn.metrics.average_precision_score``.
* FPR95 = false-positive rate at the first threshold (descending) with TPR >= 0.95.
* AUROC = trapezoidal area under the ROC curve (tied scores count one half), identical to
  ``sklearn.metrics.roc_auc_score``.

``PixelMetricAccumulator`` streams frames in one of two modes:

* ``'exact'`` keeps the valid pixels' scores (cast to float32) and a bool label, 5 bytes per
  valid pixel: for tests and small sets only (500 frames of 1024x2048 would need ~5 GB).
* ``'binned'`` (default) keeps two int64 histograms of ``n_bins`` equal-width bins over a fixed
  score range (``2 * n_bins * 8`` bytes, 1 MiB for 65536 bins, independent of the number of
  frames). The range is either given (e.g. ``(0, 1)`` for normalised maps) or fixed from the
  first frame with valid pixels: its 0.1 / 99.9 percentiles widened by four times their span
  on both sides. Scores outside the range are clamped into the end bins (counted in
  ``n_clamped``; many clamped pixels mean the range should be given). The metrics are exactly
  those of the scores quantised to the bins: with 65536 bins AP, AUROC and FPR95 differ from
  exact by < 1e-3 on realistic maps (heavy-tailed maps with an anomaly-free first frame:
  ~1e-4 to 3e-4). Pass ``score_range`` for bounded scores. (SMIYC itself bins per frame into
  768 quantile bins of float16 scores.)
"""

import itertools
import math

import numpy as np
from scipy import ndimage

from ..errors import OodSegError

VOID = 255
SIOU_TAUS = tuple(float(t) for t in np.round(np.linspace(0.25, 0.75, 11), 2))
TRACK_SIZES = {'anomaly': (500, 100), 'obstacle': (50, 10)}
_STRUCT8 = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------------------------
# Pixel level
# ---------------------------------------------------------------------------------------------

def _valid_pixels(scores, labels):
    """Return (float scores, bool OoD labels) of the non-void pixels; validate the inputs."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise OodSegError(
            f'score map shape {scores.shape} does not match label shape {labels.shape}')
    if not np.issubdtype(scores.dtype, np.number) or np.iscomplexobj(scores):
        raise OodSegError(f'scores must be real numbers, got dtype {scores.dtype}')
    valid = labels != VOID
    lab = labels[valid]
    if lab.size and (lab.min() < 0 or lab.max() > 1):
        bad = lab[(lab != 0) & (lab != 1)][0]
        raise OodSegError(f'labels must be 0 (in-distribution), 1 (OoD) or 255 (void), '
                          f'found {bad}')
    sc = scores[valid]
    if sc.size and np.isnan(sc).any():
        raise OodSegError('scores contain NaN at non-void pixels')
    return sc, lab.astype(bool)


def _level_counts(scores, is_pos):
    """Return (distinct values descending, positives per value, negatives per value)."""
    values, inverse = np.unique(scores, return_inverse=True)
    inverse = inverse.ravel()
    pos = np.bincount(inverse[is_pos], minlength=values.size)
    neg = np.bincount(inverse[~is_pos], minlength=values.size)
    return values[::-1], pos[::-1], neg[::-1]


def _curve_metrics(pos, neg):
    """
    Compute AP, FPR95, AUROC and best F1 from per-level counts (levels descending).

    pos, neg: int arrays, the number of OoD / in-distribution pixels at each threshold level,
    ordered from the highest score to the lowest. Returns a dict with ``ap``, ``fpr95``,
    ``auroc``, ``n_pos``, ``n_neg``, ``best_f1``, ``best_level`` (index into the non-empty
    levels, -1 if undefined), ``levels`` (indices of the non-empty levels) and, when something
    is undefined, ``undefined`` (the reason).
    """
    pos = np.asarray(pos, dtype=np.int64)
    neg = np.asarray(neg, dtype=np.int64)
    levels = np.flatnonzero((pos + neg) > 0)
    pos = pos[levels]
    neg = neg[levels]
    tps = np.cumsum(pos)
    fps = np.cumsum(neg)
    n_pos = int(tps[-1]) if tps.size else 0
    n_neg = int(fps[-1]) if fps.size else 0
    out = {'ap': math.nan, 'fpr95': math.nan, 'auroc': math.nan, 'n_pos': n_pos,
           'n_neg': n_neg, 'best_f1': math.nan, 'best_level': -1, 'levels': levels}
    if n_pos == 0 and n_neg == 0:
        out['undefined'] = 'no valid (non-void) pixels'
        return out
    if n_pos == 0:
        out['undefined'] = 'no OoD pixels'
        return out
    precision = tps / (tps + fps)
    recall = tps / n_pos
    out['ap'] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    f1 = 2.0 * tps / (tps + fps + n_pos)
    out['best_level'] = int(np.argmax(f1))
    out['best_f1'] = float(f1[out['best_level']])
    if n_neg == 0:
        out['undefined'] = 'no in-distribution pixels: fpr95 and auroc undefined'
        return out
    first = int(np.argmax(tps * 100 >= 95 * n_pos))   # integer test of TPR >= 0.95
    out['fpr95'] = float(fps[first] / n_neg)
    tpr = np.concatenate(([0.0], tps / n_pos))
    fpr = np.concatenate(([0.0], fps / n_neg))
    out['auroc'] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
    return out


def _public(res):
    """Drop the internal keys of a ``_curve_metrics`` result."""
    return {k: v for k, v in res.items() if k not in ('best_level', 'levels')}


def pixel_metrics(scores, labels):
    """
    Compute exact pooled pixel metrics of score maps against label maps.

    scores: float array of any shape (higher = more anomalous); labels: same shape, 0 / 1 /
    255 (void, excluded). Returns dict(ap, fpr95, auroc, n_pos, n_neg, best_f1,
    best_f1_threshold); undefined metrics are NaN with the reason under ``'undefined'``.
    ``best_f1_threshold`` t is such that ``scores > t`` is the best-F1 prediction.
    """
    sc, lab = _valid_pixels(scores, labels)
    values, pos, neg = _level_counts(sc, lab)
    res = _curve_metrics(pos, neg)
    out = _public(res)
    out['best_f1_threshold'] = _exact_threshold(values[res['levels']], res['best_level'])
    return out


def _exact_threshold(values, best):
    """Return t with ``score > t`` <=> ``score >= values[best]`` (values: distinct, desc)."""
    if best < 0:
        return math.nan
    if best + 1 < values.size:
        return float(values[best + 1])
    return -math.inf


class PixelMetricAccumulator:
    """
    Accumulate pooled pixel metrics (AP, FPR95, AUROC) over frames.

    mode: ``'binned'`` (default, constant memory, for large sets) or ``'exact'`` (stores the
    valid pixels as float32 + bool, 5 bytes each, for tests and small sets). n_bins: number of
    equal-width histogram bins (binned mode). score_range: ``(lo, hi)`` of the binned histogram;
    None fixes it from the first frame with valid pixels (0.1 / 99.9 percentiles widened by
    four times their span on each side). Out-of-range scores are clamped into the end bins.
    """

    def __init__(self, mode='binned', n_bins=65536, score_range=None):
        """Create an empty accumulator (see the class docstring for the arguments)."""
        if mode not in ('exact', 'binned'):
            raise OodSegError(f"metric mode must be 'exact' or 'binned', got {mode!r}")
        self.mode = mode
        self.n_frames = 0
        self.n_clamped = 0
        if mode == 'exact':
            self._scores = []
            self._labels = []
            return
        n_bins = int(n_bins)
        if n_bins < 2:
            raise OodSegError(f'n_bins must be >= 2, got {n_bins}')
        self.n_bins = n_bins
        self.hist = np.zeros((2, n_bins), dtype=np.int64)   # row 0: in-distribution, 1: OoD
        self.lo = self.hi = None
        if score_range is not None:
            lo, hi = (float(v) for v in score_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise OodSegError(f'score_range must be finite with hi > lo, got {score_range}')
            self.lo, self.hi = lo, hi

    @property
    def nbytes(self):
        """Return the bytes held in the accumulator's arrays."""
        if self.mode == 'binned':
            return int(self.hist.nbytes)
        return int(sum(a.nbytes for a in self._scores) + sum(a.nbytes for a in self._labels))

    @property
    def bin_edges(self):
        """Return the n_bins + 1 bin edges (binned mode; None before the range is fixed)."""
        if self.mode != 'binned' or self.lo is None:
            return None
        return np.linspace(self.lo, self.hi, self.n_bins + 1)

    def _fix_range(self, sc):
        """Fix the histogram range from the first frame's percentiles, widened."""
        p_lo, p_hi = np.percentile(sc.astype(np.float64), [0.1, 99.9])
        span = p_hi - p_lo
        if not span > 0:
            span = max(abs(p_lo), 1.0) * 1e-3
        self.lo = float(p_lo - 4.0 * span)
        self.hi = float(p_hi + 4.0 * span)

    def add(self, scores, labels):
        """Add one frame: scores HxW float (higher = more anomalous), labels HxW 0/1/255."""
        sc, lab = _valid_pixels(scores, labels)
        self.n_frames += 1
        if self.mode == 'exact':
            self._scores.append(sc.astype(np.float32))
            self._labels.append(lab)
            return
        if sc.size == 0:
            return
        if self.lo is None:
            self._fix_range(sc)
        pos = (sc.astype(np.float64) - self.lo) * (self.n_bins / (self.hi - self.lo))
        self.n_clamped += int(np.count_nonzero((pos < 0) | (pos >= self.n_bins)))
        np.clip(pos, 0, self.n_bins - 1, out=pos)
        idx = pos.astype(np.int64)
        idx += lab * self.n_bins
        self.hist += np.bincount(idx, minlength=2 * self.n_bins).reshape(2, self.n_bins)

    def _levels(self):
        """Return (level descriptor, pos counts, neg counts), levels descending."""
        if self.mode == 'exact':
            if self._scores:
                sc = np.concatenate(self._scores)
                lab = np.concatenate(self._labels)
            else:
                sc, lab = np.zeros(0, np.float32), np.zeros(0, bool)
            return _level_counts(sc, lab)
        bins = np.arange(self.n_bins)[::-1]
        return bins, self.hist[1, ::-1], self.hist[0, ::-1]

    def result(self):
        """
        Return dict(ap, fpr95, auroc, n_pos, n_neg, best_f1, best_f1_threshold, ...).

        Undefined metrics are NaN with the reason under ``'undefined'``. Binned mode also
        reports ``n_bins``, ``score_range`` and ``n_clamped``.
        """
        desc, pos, neg = self._levels()
        res = _curve_metrics(pos, neg)
        out = _public(res)
        out['mode'] = self.mode
        out['n_frames'] = self.n_frames
        if self.mode == 'exact':
            out['best_f1_threshold'] = _exact_threshold(desc[res['levels']], res['best_level'])
        else:
            out['n_bins'] = self.n_bins
            out['score_range'] = None if self.lo is None else [self.lo, self.hi]
            out['n_clamped'] = self.n_clamped
            if res['best_level'] < 0:
                out['best_f1_threshold'] = math.nan
            else:
                b = int(desc[res['levels'][res['best_level']]])
                # scores in bins >= b are predicted OoD: score > lower edge of bin b
                out['best_f1_threshold'] = (
                    -math.inf if b == 0
                    else self.lo + b * (self.hi - self.lo) / self.n_bins)
        return out


def best_f1_threshold(source, labels=None):
    """
    Return the threshold t maximising pixel F1 of the prediction ``score > t``.

    source: a ``PixelMetricAccumulator`` (exact or binned; binned thresholds are bin edges),
    or a score array with ``labels`` (same shape, 0 / 1 / 255). NaN if there are no OoD
    pixels; -inf if predicting every pixel as OoD is best.
    """
    if isinstance(source, PixelMetricAccumulator):
        return source.result()['best_f1_threshold']
    if labels is None:
        raise OodSegError('best_f1_threshold needs labels when given a score array')
    return pixel_metrics(source, labels)['best_f1_threshold']


# ---------------------------------------------------------------------------------------------
# Component level
# ---------------------------------------------------------------------------------------------

def _frame_components(score, label, threshold, min_pred, min_gt):
    """Return the per-component sIoU, PPV and SMIYC-code sIoU_pred of one frame."""
    score = np.asarray(score)
    label = np.asarray(label)
    if score.ndim != 2 or score.shape != label.shape:
        raise OodSegError(f'component metrics need 2-D score and label maps of one shape, '
                          f'got {score.shape} and {label.shape}')
    valid = label != VOID
    if np.any(valid & (label != 0) & (label != 1)):
        raise OodSegError('labels must be 0 (in-distribution), 1 (OoD) or 255 (void)')
    if np.isnan(score[valid]).any():
        raise OodSegError('scores contain NaN at non-void pixels')
    # SMIYC: void pixels are removed from the prediction before the connected components
    pred_lab, n_pred = ndimage.label((score > threshold) & valid, structure=_STRUCT8)
    if n_pred:
        small = np.bincount(pred_lab.ravel(), minlength=n_pred + 1) < min_pred
        small[0] = True
        pred_lab[small[pred_lab]] = 0
    gt_lab, n_gt = ndimage.label(label == 1, structure=_STRUCT8)
    roi = valid
    if n_gt:
        small = np.bincount(gt_lab.ravel(), minlength=n_gt + 1) < min_gt
        small[0] = False
        roi = valid & ~small[gt_lab]          # small GT components become void
        gt_lab[~roi] = 0
    g = gt_lab[roi].astype(np.int64)
    p = pred_lab[roi].astype(np.int64)
    gt_size = np.bincount(g, minlength=n_gt + 1)
    pred_size = np.bincount(p, minlength=n_pred + 1)
    both = (g > 0) & (p > 0)
    pairs, overlap = np.unique(g[both] * (n_pred + 1) + p[both], return_counts=True)
    pg, pp = pairs // (n_pred + 1), pairs % (n_pred + 1)
    pred_in_gt = np.bincount(pp, weights=overlap, minlength=n_pred + 1)   # |k^ ∩ any GT|
    gt_in_pred = np.bincount(pg, weights=overlap, minlength=n_gt + 1)     # |k ∩ any pred|

    # sIoU(k) = |k ∩ K^| / (|K^| + |k| - |k ∩ K^| - |A(k)|), summed over touching pairs
    k_inter = gt_in_pred
    k_hat = np.bincount(pg, weights=pred_size[pp], minlength=n_gt + 1)
    k_adj = np.bincount(pg, weights=pred_in_gt[pp] - overlap, minlength=n_gt + 1)
    gt_ids = np.flatnonzero(gt_size > 0)
    gt_ids = gt_ids[gt_ids > 0]
    siou = k_inter[gt_ids] / (k_hat[gt_ids] + gt_size[gt_ids] - k_inter[gt_ids] - k_adj[gt_ids])

    pred_ids = np.flatnonzero(pred_size > 0)
    pred_ids = pred_ids[pred_ids > 0]
    ppv = pred_in_gt[pred_ids] / pred_size[pred_ids]
    # the SMIYC reference code's symmetric sIoU of predicted components (reported only)
    p_gt = np.bincount(pp, weights=gt_size[pg], minlength=n_pred + 1)
    p_adj = np.bincount(pp, weights=gt_in_pred[pg] - overlap, minlength=n_pred + 1)
    i = pred_ids
    siou_pred = pred_in_gt[i] / (p_gt[i] + pred_size[i] - pred_in_gt[i] - p_adj[i])
    return siou, ppv, siou_pred


def component_metrics(score_maps, labels, threshold, track='anomaly', min_pred_size=None,
                      min_gt_size=None):
    """
    Compute SMIYC component-level metrics (sIoU, PPV, F1 over tau) pooled over frames.

    score_maps, labels: iterables of HxW maps (or one HxW pair); a pixel is predicted OoD
    when score > threshold. Void pixels (255) are removed from the prediction before its
    8-connected components are formed (as SMIYC does), so they count in no component;
    predicted components smaller than min_pred_size (track default 500 anomaly / 50
    obstacle) are dropped; GT components (8-connected, label 1) smaller than min_gt_size
    (100 / 10) become void. sIoU(k) = |k ∩ K^(k)| / |(k ∪ K^(k)) minus A(k)| with K^(k) the
    predicted components touching k and A(k) their pixels inside other GT components;
    PPV(k^) = |k^ ∩ K(k^)| / |k^|. For tau in 0.25, 0.30, ..., 0.75: TP = GT components
    with sIoU >= tau, FN = the rest, FP = predicted components with PPV < tau (SMIYC's code
    uses its symmetric sIoU_pred here; its mean is reported as ``siou_pred``), F1 =
    2TP / (2TP + FN + FP) with the counts summed over frames.
    Returns dict(siou, ppv, siou_pred, f1_mean, f1_per_tau, taus, tp, fn, fp, n_gt, n_pred,
    n_frames); undefined values are NaN with the reasons under ``'undefined'``.
    """
    if track not in TRACK_SIZES:
        raise OodSegError(f"track must be 'anomaly' or 'obstacle', got {track!r}")
    min_pred = TRACK_SIZES[track][0] if min_pred_size is None else int(min_pred_size)
    min_gt = TRACK_SIZES[track][1] if min_gt_size is None else int(min_gt_size)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise OodSegError('component threshold is NaN (no OoD pixels to pick it from?)')
    if isinstance(score_maps, np.ndarray) and score_maps.ndim == 2:
        score_maps, labels = [score_maps], [labels]
    sious, ppvs, sious_pred = [], [], []
    n_frames = 0
    end = object()
    for score, label in itertools.zip_longest(score_maps, labels, fillvalue=end):
        if score is end or label is end:
            raise OodSegError('component metrics got different numbers of score maps and '
                              'label maps')
        s, p, sp = _frame_components(score, label, threshold, min_pred, min_gt)
        sious.append(s)
        ppvs.append(p)
        sious_pred.append(sp)
        n_frames += 1
    siou = np.concatenate(sious) if sious else np.zeros(0)
    ppv = np.concatenate(ppvs) if ppvs else np.zeros(0)
    siou_pred = np.concatenate(sious_pred) if sious_pred else np.zeros(0)
    n_gt, n_pred = int(siou.size), int(ppv.size)
    taus = np.asarray(SIOU_TAUS)
    tp = (siou[None, :] >= taus[:, None]).sum(axis=1)
    fn = n_gt - tp
    fp = (ppv[None, :] < taus[:, None]).sum(axis=1)
    denom = 2 * tp + fn + fp
    f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), np.nan)
    reasons = []
    if n_gt == 0:
        reasons.append('no GT components: siou undefined')
    if n_pred == 0:
        reasons.append('no predicted components: ppv undefined')
    if n_gt == 0 and n_pred == 0:
        reasons.append('f1 undefined')
    out = {
        'siou': float(siou.mean()) if n_gt else math.nan,
        'ppv': float(ppv.mean()) if n_pred else math.nan,
        'siou_pred': float(siou_pred.mean()) if n_pred else math.nan,
        'f1_mean': float(f1.mean()) if denom[0] > 0 else math.nan,
        'f1_per_tau': [float(v) for v in f1],
        'taus': list(SIOU_TAUS),
        'tp': [int(v) for v in tp], 'fn': [int(v) for v in fn], 'fp': [int(v) for v in fp],
        'n_gt': n_gt, 'n_pred': n_pred, 'n_frames': n_frames,
        'threshold': threshold, 'track': track,
        'min_pred_size': min_pred, 'min_gt_size': min_gt,
    }
    if reasons:
        out['undefined'] = '; '.join(reasons)
    return out


# ---------------------------------------------------------------------------------------------
# Calibration, ranking, segmentation, meta tasks
# ---------------------------------------------------------------------------------------------

def ece(confidence, correct, n_bins=15):
    """
    Return the expected calibration error (fraction in [0, 1]).

    confidence: floats in [0, 1] (any shape); correct: bool / 0-1 of the same shape.
    Equal-width bins closed on the right, (b/n, (b+1)/n], with 0 in the first bin;
    ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|. NaN if empty.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    corr = np.asarray(correct).ravel()
    if conf.shape != corr.shape:
        raise OodSegError(f'ece: {conf.size} confidences but {corr.size} correctness values')
    if conf.size == 0:
        return math.nan
    if np.isnan(conf).any() or conf.min() < 0 or conf.max() > 1:
        raise OodSegError('ece: confidences must lie in [0, 1] (normalise the scores first)')
    edges = np.arange(n_bins + 1) / n_bins
    idx = np.clip(np.searchsorted(edges, conf, side='left') - 1, 0, n_bins - 1)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=corr.astype(np.float64), minlength=n_bins)
    return float(np.sum(np.abs(sum_acc - sum_conf)) / conf.size)


def _removed_sums(key, error, removed):
    """
    Return the error removed when dropping ``removed`` items in descending ``key`` order.

    Ties in key are resolved by their expectation over random orders (linear interpolation
    of the cumulative error inside a tie group).
    """
    values, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.ravel()
    cnt = np.bincount(inverse, minlength=values.size)[::-1]
    err = np.bincount(inverse, weights=error, minlength=values.size)[::-1]
    cum_cnt = np.concatenate(([0], np.cumsum(cnt)))
    cum_err = np.concatenate(([0.0], np.cumsum(err)))
    return np.interp(removed, cum_cnt, cum_err)


def sparsification_curves(uncertainty, error, n_steps=100):
    """
    Return (fractions, curve by uncertainty, oracle curve), each of length n_steps.

    At fraction f_i = i / n_steps (i = 0..n_steps-1) the floor(f_i * N) items with the
    highest uncertainty (resp. highest error: oracle) are removed and the curve is the mean
    error of the rest. Tied uncertainties are removed in expectation over random order.
    """
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=np.float64).ravel()
    if u.shape != e.shape:
        raise OodSegError(f'ause: {u.size} uncertainties but {e.size} errors')
    if np.isnan(u).any() or np.isnan(e).any():
        raise OodSegError('ause: uncertainty or error contains NaN')
    n = u.size
    steps = np.arange(int(n_steps))
    removed = (steps * n) // int(n_steps)
    total = e.sum()
    keep = n - removed
    by_u = (total - _removed_sums(u, e, removed)) / keep
    oracle = (total - _removed_sums(e, e, removed)) / keep
    return steps / n_steps, by_u, oracle


def ause(uncertainty, error, n_steps=100):
    """
    Return the area under the sparsification error curve (units of the error).

    uncertainty, error: same-size arrays (e.g. per-pixel uncertainty and 0/1 error). The
    sparsification error at f_i = i / n_steps is the mean remaining error when the most
    uncertain fraction f_i is removed minus the same for the oracle (removal by error);
    AuSE = (1 / n_steps) * sum_i of it (rectangle rule over [0, 1)). Not normalised; 0 for
    an oracle uncertainty; NaN for empty input.
    """
    if np.size(uncertainty) == 0:
        return math.nan
    _, by_u, oracle = sparsification_curves(uncertainty, error, n_steps)
    return float(np.mean(by_u - oracle))


def confusion_matrix(pred, gt, n_classes, ignore=VOID):
    """
    Return the n_classes x n_classes int64 confusion matrix (rows gt, columns pred).

    pred, gt: integer class maps of one shape; gt pixels equal to ``ignore`` are skipped.
    """
    pred = np.asarray(pred).ravel()
    gt = np.asarray(gt).ravel()
    if pred.shape != gt.shape:
        raise OodSegError(f'confusion matrix: {pred.size} predictions but {gt.size} labels')
    keep = gt != ignore
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= n_classes):
        raise OodSegError(f'confusion matrix: label outside 0..{n_classes - 1} (and not '
                          f'ignore={ignore})')
    if p.size and (p.min() < 0 or p.max() >= n_classes):
        raise OodSegError(f'confusion matrix: prediction outside 0..{n_classes - 1}')
    return np.bincount(g * n_classes + p, minlength=n_classes ** 2).reshape(
        n_classes, n_classes)


def miou(conf_matrix):
    """
    Return dict(miou, iou) from a confusion matrix (rows gt, columns pred).

    iou: per-class IoU = TP / (TP + FP + FN), NaN for classes absent from both gt and
    prediction; miou: the mean over the non-NaN classes (NaN if none).
    """
    cm = np.asarray(conf_matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise OodSegError(f'confusion matrix must be square, got shape {cm.shape}')
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1) - tp
    iou = np.full(tp.shape, np.nan)
    np.divide(tp, denom, out=iou, where=denom > 0)
    present = ~np.isnan(iou)
    return {'miou': float(iou[present].mean()) if present.any() else math.nan, 'iou': iou}


def meta_auroc(y_true, p):
    """Return the AUROC of scores p for binary targets y_true (ties half); NaN if one class."""
    y = np.asarray(y_true).ravel()
    s = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise OodSegError(f'meta_auroc: {y.size} targets but {s.size} scores')
    if y.size and not np.isin(y, (0, 1)).all():
        raise OodSegError('meta_auroc: targets must be 0/1')
    if np.isnan(s).any():
        raise OodSegError('meta_auroc: scores contain NaN')
    _, pos, neg = _level_counts(s, y.astype(bool))
    return _curve_metrics(pos, neg)['auroc']


def r2(y_true, y_pred):
    """Return the coefficient of determination 1 - SS_res / SS_tot; NaN if y_true is constant."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    f = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != f.shape:
        raise OodSegError(f'r2: {y.size} targets but {f.size} predictions')
    ss_tot = np.sum((y - y.mean()) ** 2) if y.size else 0.0
    if not ss_tot > 0:
        return math.nan
    return float(1.0 - np.sum((y - f) ** 2) / ss_tot)
