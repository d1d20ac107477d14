"""
Mergeable metric summaries: what one frame, one bag or one task contributes, added exactly.

Pixel AP needs every pixel's score, so per-bag APs cannot be averaged. Each unit of work
(a frame, a bag, a Ray task) instead returns an :class:`EvalSummary` whose parts are
counts; adding two summaries gives exactly the summary of the pooled frames, in any order
and grouping. ``eval``, ``bag-eval`` and ``fleet-eval`` compute their pixel metrics here.

Pixel scores: :class:`ScoreHistogram`, OoD / in-distribution pixel counts per score *key*.
The key is a fixed, data-independent quantisation, so merged histograms equal the
histogram of the pooled pixels, and AP, FPR95 and AUROC are exactly those of the
quantised scores (the levels are computed by :func:`ood_seg_ros.tools.metrics._curve_metrics`,
the same code as the exact metrics). The binning:

* the score is first mapped to ``t``: for a bounded score with ``domain=(lo, hi)`` (the
  published heatmap: ``(0, 1)``) ``t = log(x - lo) - log(hi - x)``, the logit of the
  normalised score, computed from both ends in float64 so that probabilities near 1 are
  resolved as finely as those near 0 (1 - x is exact there); the ends themselves are
  ``-inf`` / ``+inf``, scores outside are clamped to the ends (``n_clamped``); for an
  unbounded score (``domain=None``) ``t = x``;
* ``t`` is rounded to float32 and the key is its order-preserving bit pattern with the
  lowest :data:`DROPPED_BITS` mantissa bits removed: bins of constant *relative* width
  2^-16 (1.5e-5) in ``t``, any sign and magnitude, no range to choose.

So a cluster near 1 (``x = 1 - 1e-5``, ``t = 11.5``) is cut into bins of relative width
1.8e-4 in ``1 - x`` (finer than float32's own spacing 6e-8 there), and a cluster near 0
likewise. Equal-width bins cannot do this: 65536 bins over [0, 1] are 1.5e-5 wide, the
whole cluster; float16 values are 4.9e-4 apart near 1. Bins are stored sparsely (only
the keys that occur): at most 2^16 per octave of ``t`` and never more than the pixels.

Components (:class:`ComponentCounts`): per-component sIoU / PPV sums and the per-tau TP /
FN / FP counts of :func:`ood_seg_ros.tools.metrics.component_metrics` at one fixed threshold;
sums of sums are exact. Detections per frame (:class:`DetectionCounts`) and latency
(:class:`LatencyHistogram`: log bins of 1 % width, quantiles to within 1 %) are counts.
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from . import metrics as M
from ..errors import OodSegError

DROPPED_BITS = 7                    # float32 mantissa 23 bits -> 16 kept
_SIGN = np.int64(1) << np.int64(31)
_MONO_POS_INF = 0x7F800000 + (1 << 31)              # order-preserving bits of +inf, -inf
_MONO_NEG_INF = (1 << 32) - 1 - 0xFF800000
_CONSOLIDATE = 1 << 21              # buffered (key, label) entries before merging them
LATENCY_STEP = math.log(1.01)       # latency bins: 1 % relative width


def _as_domain(domain) -> Optional[Tuple[float, float]]:
    """Return ``domain`` as (lo, hi) floats with lo < hi, or None (unbounded)."""
    if domain is None:
        return None
    lo, hi = (float(v) for v in domain)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise OodSegError(f'score domain must be finite with hi > lo, got {domain}')
    return lo, hi


def transform(scores, domain=None) -> Tuple[np.ndarray, int]:
    """Return (t as float64, number of scores clamped into ``domain``); see the module."""
    x = np.asarray(scores, dtype=np.float64)
    dom = _as_domain(domain)
    if dom is None:
        return x + 0.0, 0               # + 0.0: -0.0 becomes 0.0 (one key for a tie)
    lo, hi = dom
    clamped = int(np.count_nonzero((x < lo) | (x > hi)))
    x = np.clip(x, lo, hi)
    with np.errstate(divide='ignore'):
        t = np.log(x - lo) - np.log(hi - x)
    return t + 0.0, clamped


def float_keys(t) -> np.ndarray:
    """Return the order-preserving int64 keys of ``t`` (float32 rounding, 16 mantissa bits)."""
    bits = np.asarray(t, dtype=np.float32).view(np.uint32).astype(np.int64)
    neg = bits >= _SIGN
    mono = np.where(neg, (np.int64(1) << 32) - 1 - bits, bits + _SIGN)
    return mono >> DROPPED_BITS


def key_values(keys, upper: bool = False) -> np.ndarray:
    """Return the smallest (``upper``: largest) float32 ``t`` of each key's bin, as float64."""
    mono = np.asarray(keys, dtype=np.int64) << DROPPED_BITS
    if upper:
        mono = mono + ((1 << DROPPED_BITS) - 1)
    mono = np.clip(mono, _MONO_NEG_INF, _MONO_POS_INF)     # no NaN bit patterns
    bits = np.where(mono >= _SIGN, mono - _SIGN, (np.int64(1) << 32) - 1 - mono)
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def inverse_transform(t, domain=None) -> np.ndarray:
    """Map ``t`` back to score units (up to float rounding)."""
    t = np.asarray(t, dtype=np.float64)
    dom = _as_domain(domain)
    if dom is None:
        return t
    lo, hi = dom
    with np.errstate(over='ignore'):
        return lo + (hi - lo) / (1.0 + np.exp(-t))


def _add_counts(keys, counts):
    """Sum ``counts`` (rows: classes) per distinct key; return (keys, counts) sorted."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.ravel()
    summed = np.stack([np.bincount(inverse, weights=c, minlength=uniq.size)
                       for c in counts]).round().astype(np.int64)
    return uniq, summed


class ScoreHistogram:
    """
    OoD / in-distribution pixel counts per score key (see the module docstring).

    domain: ``(lo, hi)`` for a bounded score (the heatmap: ``(0, 1)``), None for an
    unbounded one. ``add`` a frame, ``merge`` another histogram of the same domain,
    ``result`` the pooled AP, FPR95, AUROC and best-F1 threshold.
    """

    def __init__(self, domain=(0.0, 1.0)):
        """Create an empty histogram over ``domain``."""
        self.domain = _as_domain(domain)
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros((2, 0), np.int64)        # row 0: in-distribution, 1: OoD
        self.n_frames = 0
        self.n_clamped = 0
        self._pending = []
        self._n_pending = 0

    def add(self, scores, labels) -> None:
        """Add one frame: scores (any shape, higher = more anomalous), labels 0 / 1 / 255."""
        sc, lab = M._valid_pixels(scores, labels)
        self.n_frames += 1
        if sc.size == 0:
            return
        t, clamped = transform(sc, self.domain)
        self.n_clamped += clamped
        packed, n = np.unique(float_keys(t) * 2 + lab, return_counts=True)
        keys = packed >> 1
        pos = (packed & 1).astype(bool)
        self._pending.append((keys, np.stack([np.where(pos, 0, n), np.where(pos, n, 0)])))
        self._n_pending += keys.size
        if self._n_pending > _CONSOLIDATE:
            self._consolidate()

    def _consolidate(self) -> None:
        """Fold the per-frame counts into the sorted key / count arrays."""
        if not self._pending:
            return
        keys = np.concatenate([self.keys] + [k for k, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending], axis=1)
        self._pending, self._n_pending = [], 0
        self.keys, self.counts = _add_counts(keys, counts)

    def merge(self, other: 'ScoreHistogram') -> 'ScoreHistogram':
        """Add ``other``'s counts into this histogram (same domain); return self."""
        if other.domain != self.domain:
            raise OodSegError(f'cannot merge score histograms of domains {self.domain} and '
                              f'{other.domain}')
        other._consolidate()
        self._pending.append((other.keys, other.counts))
        self._n_pending += other.keys.size
        self.n_frames += other.n_frames
        self.n_clamped += other.n_clamped
        self._consolidate()
        return self

    def levels(self):
        """Return (keys, OoD counts, in-distribution counts), highest score first."""
        self._consolidate()
        return self.keys[::-1], self.counts[1, ::-1], self.counts[0, ::-1]

    def threshold_of(self, key) -> float:
        """Return t with ``score > t`` <=> the score's key >= ``key`` (score units)."""
        below = key_values(np.asarray([key - 1]), upper=True)
        return float(inverse_transform(below, self.domain)[0])

    def result(self) -> dict:
        """Return dict(ap, fpr95, auroc, best_f1, best_f1_threshold, n_pos, n_neg, ...)."""
        keys, pos, neg = self.levels()
        res = M._curve_metrics(pos, neg)
        out = M._public(res)
        out.update({'n_frames': self.n_frames, 'n_clamped': self.n_clamped,
                    'n_keys': int(self.keys.size),
                    'binning': f'float32 keys, {23 - DROPPED_BITS} mantissa bits, of '
                               + ('the score' if self.domain is None else
                                  f'logit of the score in {list(self.domain)}')})
        if res['best_level'] < 0:
            out['best_f1_threshold'] = math.nan
        else:
            best = int(res['levels'][res['best_level']])
            out['best_f1_threshold'] = (-math.inf if best + 1 == keys.size
                                        else self.threshold_of(int(keys[best])))
        return out

    def pr_curve(self, max_points: int = 2000) -> Tuple[np.ndarray, np.ndarray]:
        """Return (recall, precision) at the key levels, thinned to ``max_points``."""
        _, pos, neg = self.levels()
        tps, fps = np.cumsum(pos), np.cumsum(neg)
        keep = (pos + neg) > 0
        tps, fps = tps[keep], fps[keep]
        if not tps.size or tps[-1] == 0:
            return np.zeros(0), np.zeros(0)
        idx = np.unique(np.linspace(0, tps.size - 1, min(max_points, tps.size)).astype(int))
        return tps[idx] / tps[-1], tps[idx] / (tps[idx] + fps[idx])

    def state(self, prefix: str) -> Dict[str, np.ndarray]:
        """Return the arrays that :meth:`from_state` rebuilds this histogram from."""
        self._consolidate()
        dom = np.asarray(self.domain if self.domain else [], np.float64)
        return {f'{prefix}keys': self.keys, f'{prefix}counts': self.counts,
                f'{prefix}domain': dom,
                f'{prefix}n': np.asarray([self.n_frames, self.n_clamped], np.int64)}

    @classmethod
    def from_state(cls, state, prefix: str) -> 'ScoreHistogram':
        """Rebuild a histogram from :meth:`state`'s arrays."""
        dom = np.asarray(state[f'{prefix}domain'], np.float64)
        hist = cls(tuple(dom) if dom.size else None)
        hist.keys = np.asarray(state[f'{prefix}keys'], np.int64)
        hist.counts = np.asarray(state[f'{prefix}counts'], np.int64).reshape(2, -1)
        hist.n_frames, hist.n_clamped = (int(v) for v in state[f'{prefix}n'])
        return hist


class ComponentCounts:
    """
    SMIYC component metrics at one threshold as sums over frames (exactly mergeable).

    The per-frame components are those of :func:`ood_seg_ros.tools.metrics.component_metrics`;
    :meth:`result` gives its sIoU, PPV, sIoU_pred, F1 per tau and mean F1.
    """

    def __init__(self, threshold: float, track: str = 'anomaly'):
        """Create empty counts for ``score > threshold`` and the track's size limits."""
        if track not in M.TRACK_SIZES:
            raise OodSegError(f"track must be 'anomaly' or 'obstacle', got {track!r}")
        threshold = float(threshold)
        if math.isnan(threshold):
            raise OodSegError('component threshold is NaN')
        self.threshold, self.track = threshold, track
        self.sums = np.zeros(3)                     # sIoU, PPV, sIoU_pred
        self.n = np.zeros(3, np.int64)              # GT components, predicted, frames
        self.tp = np.zeros(len(M.SIOU_TAUS), np.int64)
        self.fp = np.zeros(len(M.SIOU_TAUS), np.int64)

    def add(self, score, label) -> None:
        """Add one frame (HxW score map and label map)."""
        min_pred, min_gt = M.TRACK_SIZES[self.track]
        siou, ppv, siou_pred = M._frame_components(score, label, self.threshold, min_pred,
                                                   min_gt)
        taus = np.asarray(M.SIOU_TAUS)
        self.sums += (siou.sum(), ppv.sum(), siou_pred.sum())
        self.n += (siou.size, ppv.size, 1)
        self.tp += (siou[None, :] >= taus[:, None]).sum(axis=1)
        self.fp += (ppv[None, :] < taus[:, None]).sum(axis=1)

    def merge(self, other: 'ComponentCounts') -> 'ComponentCounts':
        """Add ``other`` (same threshold and track) into these counts; return self."""
        if (other.threshold, other.track) != (self.threshold, self.track):
            raise OodSegError(f'cannot merge component counts at threshold {other.threshold} '
                              f'({other.track}) into {self.threshold} ({self.track})')
        self.sums += other.sums
        self.n += other.n
        self.tp += other.tp
        self.fp += other.fp
        return self

    def result(self) -> dict:
        """Return the keys of ``component_metrics`` (NaN where undefined)."""
        n_gt, n_pred, n_frames = (int(v) for v in self.n)
        fn = n_gt - self.tp
        denom = 2 * self.tp + fn + self.fp
        f1 = np.where(denom > 0, 2.0 * self.tp / np.maximum(denom, 1), np.nan)
        out = {'siou': self.sums[0] / n_gt if n_gt else math.nan,
               'ppv': self.sums[1] / n_pred if n_pred else math.nan,
               'siou_pred': self.sums[2] / n_pred if n_pred else math.nan,
               'f1_mean': float(f1.mean()) if denom[0] > 0 else math.nan,
               'f1_per_tau': [float(v) for v in f1], 'taus': list(M.SIOU_TAUS),
               'tp': self.tp.tolist(), 'fn': fn.tolist(), 'fp': self.fp.tolist(),
               'n_gt': n_gt, 'n_pred': n_pred, 'n_frames': n_frames,
               'threshold': self.threshold, 'track': self.track}
        if not n_gt or not n_pred:
            out['undefined'] = ('no GT components' if not n_gt else 'no predicted components')
        return out

    def state(self, prefix: str) -> Dict[str, np.ndarray]:
        """Return the arrays that :meth:`from_state` rebuilds these counts from."""
        return {f'{prefix}sums': self.sums, f'{prefix}n': self.n, f'{prefix}tp': self.tp,
                f'{prefix}fp': self.fp, f'{prefix}threshold': np.asarray(self.threshold),
                f'{prefix}track': np.asarray(self.track)}

    @classmethod
    def from_state(cls, state, prefix: str) -> 'ComponentCounts':
        """Rebuild counts from :meth:`state`'s arrays."""
        out = cls(float(state[f'{prefix}threshold']), str(state[f'{prefix}track']))
        out.sums = np.asarray(state[f'{prefix}sums'], np.float64).copy()
        for name in ('n', 'tp', 'fp'):
            setattr(out, name, np.asarray(state[f'{prefix}{name}'], np.int64).copy())
        return out


class CountHistogram:
    """A histogram of non-negative integer keys (sparse): detections or latency bins."""

    def __init__(self):
        """Create an empty histogram."""
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)

    def add_keys(self, keys) -> None:
        """Count each of ``keys`` once."""
        keys = np.asarray(keys, np.int64).ravel()
        k, c = _add_counts(np.concatenate([self.keys, keys]),
                           [np.concatenate([self.counts, np.ones(keys.size, np.int64)])])
        self.keys, self.counts = k, c[0]

    def merge(self, other: 'CountHistogram') -> 'CountHistogram':
        """Add ``other``'s counts; return self."""
        k, c = _add_counts(np.concatenate([self.keys, other.keys]),
                           [np.concatenate([self.counts, other.counts])])
        self.keys, self.counts = k, c[0]
        return self

    @property
    def total(self) -> int:
        """Return the number of counted items."""
        return int(self.counts.sum())

    def quantile_key(self, q: float) -> Optional[int]:
        """Return the smallest key with at least a fraction ``q`` of the items at or below."""
        if not self.total:
            return None
        cum = np.cumsum(self.counts)
        return int(self.keys[int(np.searchsorted(cum, q * cum[-1], side='left'))])


class DetectionCounts(CountHistogram):
    """Frames per number of kept detections: mean, max and the histogram itself."""

    def add(self, n_detections: int) -> None:
        """Add one frame with ``n_detections`` kept segments."""
        self.add_keys([int(n_detections)])

    def result(self) -> dict:
        """Return dict(frames, detections, per_frame, max)."""
        n = self.total
        det = int((self.keys * self.counts).sum())
        return {'frames': n, 'detections': det, 'per_frame': det / n if n else math.nan,
                'max': int(self.keys.max()) if n else None}


class LatencyHistogram(CountHistogram):
    """Per-frame latency in log bins of 1 % width; exact count, sum and max."""

    def __init__(self):
        """Create an empty latency histogram."""
        super().__init__()
        self.sum_ms = 0.0
        self.max_ms = -math.inf

    def add_ms(self, values_ms: Sequence[float]) -> None:
        """Add latencies in milliseconds (> 0)."""
        v = np.maximum(np.asarray(values_ms, np.float64).ravel(), 1e-6)
        if not v.size:
            return
        self.add_keys(np.floor(np.log(v / 1e-6) / LATENCY_STEP))
        self.sum_ms += float(v.sum())
        self.max_ms = max(self.max_ms, float(v.max()))

    def merge(self, other: 'LatencyHistogram') -> 'LatencyHistogram':
        """Add ``other``; return self."""
        super().merge(other)
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)
        return self

    def _value(self, q):
        key = self.quantile_key(q)
        return None if key is None else 1e-6 * math.exp((key + 0.5) * LATENCY_STEP)

    def result(self) -> dict:
        """Return p50, p95 (bin centres, within 1 %), mean and max in ms."""
        n = self.total
        return {'p50': self._value(0.5), 'p95': self._value(0.95),
                'mean': self.sum_ms / n if n else None, 'max': self.max_ms if n else None}


class EvalSummary:
    """
    Everything one unit of evaluation contributes: pixels, components, detections, latency.

    ``components`` is None when no component threshold is fixed (the threshold is then
    chosen on the merged pixels by the caller, which needs a second pass) or, in a task,
    when its bag has no GT; such a summary merges with one that has components.
    """

    def __init__(self, domain=(0.0, 1.0), threshold: Optional[float] = None,
                 track: str = 'anomaly'):
        """Create an empty summary (heatmap domain, component threshold, SMIYC track)."""
        self.pixel = ScoreHistogram(domain)
        self.components = None if threshold is None else ComponentCounts(threshold, track)
        self.detections = DetectionCounts()
        self.latency = LatencyHistogram()

    def add_frame(self, heatmap=None, label=None, n_detections=None, latency_ms=None):
        """Add what is known of one frame (GT-less frames: detections and latency only)."""
        if heatmap is not None and label is not None:
            self.pixel.add(heatmap, label)
            if self.components is not None:
                self.components.add(heatmap, label)
        if n_detections is not None:
            self.detections.add(n_detections)
        if latency_ms is not None:
            self.latency.add_ms([latency_ms])

    def merge(self, other: 'EvalSummary') -> 'EvalSummary':
        """Add ``other`` into this summary; return self."""
        self.pixel.merge(other.pixel)
        if other.components is not None:    # None: no GT frames, so no components either
            if self.components is None:
                self.components = ComponentCounts(other.components.threshold,
                                                  other.components.track)
            self.components.merge(other.components)
        self.detections.merge(other.detections)
        self.latency.merge(other.latency)
        return self

    def result(self) -> dict:
        """Return {'pixel', 'component', 'detections', 'latency_ms'} (None: no GT pixels)."""
        has_gt = self.pixel.n_frames > 0
        return {'pixel': self.pixel.result() if has_gt else None,
                'component': (self.components.result()
                              if has_gt and self.components is not None else None),
                'detections': self.detections.result(),
                'latency_ms': self.latency.result()}

    def state(self) -> Dict[str, np.ndarray]:
        """Return plain arrays (for ``np.savez``; loaded without pickle)."""
        out = self.pixel.state('pixel_')
        if self.components is not None:
            out.update(self.components.state('comp_'))
        out.update({'det_keys': self.detections.keys, 'det_counts': self.detections.counts,
                    'lat_keys': self.latency.keys, 'lat_counts': self.latency.counts,
                    'lat_sum_max': np.asarray([self.latency.sum_ms, self.latency.max_ms])})
        return out

    @classmethod
    def from_state(cls, state) -> 'EvalSummary':
        """Rebuild a summary from :meth:`state`'s arrays (e.g. an ``np.load`` result)."""
        out = cls()
        out.pixel = ScoreHistogram.from_state(state, 'pixel_')
        if 'comp_threshold' in state:
            out.components = ComponentCounts.from_state(state, 'comp_')
        out.detections.keys = np.asarray(state['det_keys'], np.int64)
        out.detections.counts = np.asarray(state['det_counts'], np.int64)
        out.latency.keys = np.asarray(state['lat_keys'], np.int64)
        out.latency.counts = np.asarray(state['lat_counts'], np.int64)
        out.latency.sum_ms, out.latency.max_ms = (float(v) for v in state['lat_sum_max'])
        return out
