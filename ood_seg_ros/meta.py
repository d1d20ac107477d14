"""
Meta classification and meta regression of OoD segments (methods §5).

Target of the classifier: the segment is a *false positive* (no overlap with ground-truth
OoD). A segment is kept when P(false positive) <= threshold. The meta regression
predicts the segment IoU with a linear model on the same standardised features.

Fitting (:func:`fit_meta`) uses scikit-learn, imported lazily inside it; the runtime
(:class:`MetaClassifier`) is numpy only and is stored as plain JSON: scaler mean / scale,
logistic and linear coefficients, feature order and threshold.
"""

import json
import math
from pathlib import Path

import numpy as np

from .errors import OodSegError

FORMAT = 'ood_seg_ros/meta_classifier'
VERSION = 1
_ARRAY_KEYS = ('mean', 'scale', 'coef', 'reg_coef')
_SCALAR_KEYS = ('intercept', 'reg_intercept', 'threshold')
_MAX_ITER = 10000


def _sigmoid(z):
    """Return the logistic function of z, without overflow for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_names(names, expected, where):
    """Raise OodSegError naming the first difference between two feature-name lists."""
    names = list(names)
    expected = list(expected)
    for i, (a, b) in enumerate(zip(names, expected)):
        if a != b:
            raise OodSegError(f'{where}: feature {i} is {a!r} but {b!r} is expected')
    if len(names) > len(expected):
        raise OodSegError(f'{where}: unexpected extra feature {len(expected)} '
                          f'{names[len(expected)]!r} ({len(names)} features, '
                          f'{len(expected)} expected)')
    if len(names) < len(expected):
        raise OodSegError(f'{where}: feature {len(names)} {expected[len(names)]!r} is '
                          f'missing ({len(names)} features, {len(expected)} expected)')


class MetaClassifier:
    """
    Numpy-only meta classifier and meta regressor over standardised segment features.

    feature_names: the F feature names in column order.
    mean, scale: (F,) standardisation, x_std = (x - mean) / scale (scale > 0).
    coef, intercept: logistic regression for P(false positive) on x_std.
    reg_coef, reg_intercept: linear regression of the segment IoU on x_std.
    threshold: a segment is dropped when P(false positive) > threshold.
    info: free JSON-serialisable metadata (e.g. the cross-validation report).
    """

    def __init__(self, feature_names, mean, scale, coef, intercept, reg_coef,
                 reg_intercept, threshold=0.5, info=None):
        """Store and validate the parameters (see the class docstring)."""
        self.feature_names = tuple(str(n) for n in feature_names)
        F = len(self.feature_names)
        if len(set(self.feature_names)) != F:
            raise OodSegError('meta classifier: feature names are not unique')
        arrays = {}
        for key, value in zip(_ARRAY_KEYS, (mean, scale, coef, reg_coef)):
            a = np.asarray(value, dtype=np.float64).reshape(-1)
            if a.shape != (F,):
                raise OodSegError(f'meta classifier: {key} has {a.size} values, '
                                  f'expected {F} (one per feature)')
            if not np.isfinite(a).all():
                raise OodSegError(f'meta classifier: {key} has non-finite values')
            arrays[key] = a
        if (arrays['scale'] <= 0).any():
            raise OodSegError('meta classifier: scale must be > 0')
        self.mean = arrays['mean']
        self.scale = arrays['scale']
        self.coef = arrays['coef']
        self.reg_coef = arrays['reg_coef']
        scalars = {}
        for key, value in zip(_SCALAR_KEYS, (intercept, reg_intercept, threshold)):
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise OodSegError(
                    f'meta classifier: {key} must be a number, got {value!r}') from None
            if not math.isfinite(v):
                raise OodSegError(f'meta classifier: {key} must be finite, got {v}')
            scalars[key] = v
        self.intercept = scalars['intercept']
        self.reg_intercept = scalars['reg_intercept']
        self.threshold = scalars['threshold']
        if not 0.0 <= self.threshold <= 1.0:
            raise OodSegError(f'meta classifier: threshold must be in [0, 1], '
                              f'got {self.threshold}')
        self.info = json.loads(json.dumps({} if info is None else info))

    @property
    def n_features(self):
        """Return the number of features F."""
        return len(self.feature_names)

    def _standardise(self, X):
        """Return (X - mean) / scale as float64 after checking X is (n, F)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise OodSegError(f'meta classifier: features must be (n, {self.n_features}), '
                              f'got shape {X.shape}')
        return (X - self.mean) / self.scale

    def decision_function(self, X):
        """Return the (n,) logit of P(false positive) for features X (n, F)."""
        return self._standardise(X) @ self.coef + self.intercept

    def predict_fp_proba(self, X):
        """Return the (n,) probability that each segment is a false positive."""
        return _sigmoid(self.decision_function(X))

    def predict_iou(self, X, clip=True):
        """Return the (n,) predicted segment IoU, clipped to [0, 1] unless clip=False."""
        y = self._standardise(X) @ self.reg_coef + self.reg_intercept
        return np.clip(y, 0.0, 1.0) if clip else y

    def keep(self, X):
        """Return the (n,) bool mask of segments to keep: P(false positive) <= threshold."""
        return self.predict_fp_proba(X) <= self.threshold

    def to_dict(self):
        """Return a plain-JSON dict (floats round-trip exactly through json)."""
        d = {'format': FORMAT, 'version': VERSION,
             'feature_names': list(self.feature_names)}
        for key in _ARRAY_KEYS:
            d[key] = [float(v) for v in getattr(self, key)]
        for key in _SCALAR_KEYS:
            d[key] = float(getattr(self, key))
        d['info'] = json.loads(json.dumps(self.info))
        return d

    @classmethod
    def from_dict(cls, d, expected_features=None, where='meta classifier'):
        """Build from :meth:`to_dict` output; check feature names if expected ones given."""
        if not isinstance(d, dict):
            raise OodSegError(f'{where}: expected a JSON object, got {type(d).__name__}')
        if d.get('format') != FORMAT:
            raise OodSegError(f'{where}: format is {d.get("format")!r}, expected {FORMAT!r}')
        if d.get('version') != VERSION:
            raise OodSegError(f'{where}: version {d.get("version")!r} is not supported '
                              f'(expected {VERSION})')
        from .schema import validate_meta
        validate_meta(d, where)
        missing = [k for k in ('feature_names',) + _ARRAY_KEYS + _SCALAR_KEYS if k not in d]
        if missing:
            raise OodSegError(f'{where}: missing keys {missing}')
        names = d['feature_names']
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise OodSegError(f'{where}: feature_names must be a list of strings')
        if expected_features is not None:
            _check_names(names, expected_features, where)
        try:
            return cls(names, d['mean'], d['scale'], d['coef'], d['intercept'], d['reg_coef'],
                       d['reg_intercept'], d['threshold'], d.get('info'))
        except OodSegError as e:
            raise OodSegError(f'{where}: {e}') from None
        except (TypeError, ValueError) as e:
            raise OodSegError(f'{where}: bad values ({e})') from None

    def save(self, path):
        """Write the classifier as JSON to ``path``."""
        path = Path(path)
        try:
            path.write_text(json.dumps(self.to_dict(), indent=1) + '\n')
        except OSError as e:
            raise OodSegError(f'{path}: cannot write meta classifier ({e.strerror})') from None

    @classmethod
    def load(cls, path, expected_features=None):
        """Read a classifier written by :meth:`save`; check feature names if given."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except OSError as e:
            raise OodSegError(f'{path}: cannot read meta classifier ({e.strerror})') from None
        except ValueError as e:
            raise OodSegError(f'{path}: not valid JSON ({e})') from None
        return cls.from_dict(d, expected_features=expected_features, where=str(path))


def group_folds(groups, n_splits, seed=0):
    """
    Return the (N,) fold index in 0..k-1 of each sample, grouped by ``groups``.

    scikit-learn's GroupKFold on group ids relabelled by a random permutation (``seed``),
    so that ties in group size are broken randomly but reproducibly. k = min(n_splits,
    number of groups); all samples of one group land in the same fold.
    """
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    uniq, codes = np.unique(groups, return_inverse=True)
    k = min(int(n_splits), uniq.size)
    folds = np.zeros(groups.shape[0], dtype=np.int64)
    if k < 2:
        return folds
    perm = np.random.default_rng(seed).permutation(uniq.size)
    split = GroupKFold(n_splits=k).split(np.zeros((groups.shape[0], 1)), groups=perm[codes])
    for f, (_, test) in enumerate(split):
        folds[test] = f
    return folds


def _fit_models(X, y_fp, iou, C=1.0):
    """
    Fit scaler + logistic regression (L2, ``C``) + linear regression; return the parameters.

    One-class training data gives a constant classifier (coef 0, intercept = smoothed
    log prior odds); iou None gives a zero regression.
    """
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    n_fp = int(y_fp.sum())
    n_tp = int(y_fp.size - n_fp)
    if n_fp == 0 or n_tp == 0:
        coef = np.zeros(X.shape[1])
        intercept = math.log((n_fp + 0.5) / (n_tp + 0.5))
    else:
        clf = LogisticRegression(C=float(C), max_iter=_MAX_ITER).fit(Xs, y_fp)
        coef = clf.coef_[0]
        intercept = float(clf.intercept_[0])
    if iou is None:
        reg_coef, reg_intercept = np.zeros(X.shape[1]), 0.0
    else:
        reg = LinearRegression().fit(Xs, iou)
        reg_coef, reg_intercept = reg.coef_, float(reg.intercept_)
    return scaler.mean_, scaler.scale_, coef, intercept, reg_coef, reg_intercept


def fit_meta(features, is_false_positive, iou, feature_names, groups, n_splits=5,
             threshold=0.5, seed=0, target_tp_kept=None, C=1.0, return_oof=False):
    """
    Evaluate the meta classifier by grouped K-fold, then fit it on all segments.

    features: (N, F) segment features; is_false_positive: (N,) bool (segment has no
    overlap with ground-truth OoD); iou: (N,) segment IoU in [0, 1] or None (no meta
    regression); feature_names: F names; groups: (N,) image ids (segments of one image
    never split across folds); threshold: drop when P(false positive) > threshold.

    Per fold the scaler, logistic regression (L2, C = 1) and linear regression are fitted
    on the training segments only; out-of-fold predictions are pooled over folds.
    Report keys: n_segments, n_fp, n_groups, n_splits (requested), n_splits_used,
    threshold, auroc (P(fp) vs truth), r2 (unclipped linear IoU prediction),
    fp_removed (share of false positives dropped), tp_kept (share of true segments kept),
    warnings (list of str for degenerate cases). Unavailable metrics are None.
    ``target_tp_kept`` (e.g. 0.9): choose the threshold instead, as the smallest one that
    keeps at least that share of the true segments in the out-of-fold predictions
    (report key ``threshold_rule``); fp_removed / tp_kept are then reported at it.
    ``return_oof``: also return the out-of-fold P(false positive) per segment (report key
    ``p_oof``, a numpy array; None without cross-validation).
    Returns ``(MetaClassifier, report)``; the report is also stored in ``info['cv']``.
    """
    from sklearn.metrics import r2_score, roc_auc_score

    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2:
        raise OodSegError(f'fit_meta: features must be (N, F), got shape {X.shape}')
    N, F = X.shape
    if N == 0:
        raise OodSegError('fit_meta: no segments to fit the meta classifier on')
    names = [str(n) for n in feature_names]
    if len(names) != F:
        raise OodSegError(f'fit_meta: {len(names)} feature names for {F} feature columns')
    if not np.isfinite(X).all():
        bad = names[int(np.flatnonzero(~np.isfinite(X).all(axis=0))[0])]
        raise OodSegError(f'fit_meta: non-finite values in feature {bad!r}')
    y = np.asarray(is_false_positive).astype(bool).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if y.shape != (N,) or g.shape != (N,):
        raise OodSegError(f'fit_meta: is_false_positive and groups need {N} entries, got '
                          f'{y.shape[0]} and {g.shape[0]}')
    t = None
    if iou is not None:
        t = np.asarray(iou, dtype=np.float64).reshape(-1)
        if t.shape != (N,) or not np.isfinite(t).all():
            raise OodSegError(f'fit_meta: iou must hold {N} finite values')
    if not 0.0 <= float(threshold) <= 1.0:
        raise OodSegError(f'fit_meta: threshold must be in [0, 1], got {threshold}')
    if int(n_splits) < 2:
        raise OodSegError(f'fit_meta: n_splits must be >= 2, got {n_splits}')

    n_fp = int(y.sum())
    n_groups = int(np.unique(g).size)
    k = min(int(n_splits), n_groups)
    report = {'n_segments': N, 'n_fp': n_fp, 'n_groups': n_groups,
              'n_splits': int(n_splits), 'n_splits_used': k if k >= 2 else 0,
              'threshold': float(threshold), 'auroc': None, 'r2': None,
              'fp_removed': None, 'tp_kept': None, 'warnings': []}
    warn = report['warnings']
    one_class = n_fp == 0 or n_fp == N
    if one_class:
        which = 'false positives' if n_fp == N else 'true segments'
        warn.append(f'one class only: all {N} segments are {which}; the classifier is '
                    f'a constant prior and AUROC is undefined')
    if t is None:
        warn.append('no iou given: meta regression skipped')
    if k < 2:
        warn.append(f'cross-validation skipped: {n_groups} image group(s), need >= 2')
    else:
        if k < int(n_splits):
            warn.append(f'only {n_groups} image groups for n_splits={n_splits}: '
                        f'used {k} folds')
        folds = group_folds(g, k, seed)
        p_oof = np.empty(N)
        iou_oof = np.empty(N)
        for f in range(k):
            tr = folds != f
            te = ~tr
            clf = MetaClassifier(names, *_fit_models(X[tr], y[tr],
                                                     None if t is None else t[tr], C),
                                 threshold=threshold)
            p_oof[te] = clf.predict_fp_proba(X[te])
            iou_oof[te] = clf.predict_iou(X[te], clip=False)
        if target_tp_kept is not None and not one_class:
            p_true = np.sort(p_oof[~y])
            need = int(np.ceil(float(target_tp_kept) * p_true.size))
            threshold = float(p_true[max(need, 1) - 1])
            report['threshold'] = threshold
            report['threshold_rule'] = f'keep >= {float(target_tp_kept):g} of true segments'
        drop = p_oof > threshold
        report['_p_oof'] = p_oof
        if not one_class:
            report['auroc'] = float(roc_auc_score(y, p_oof))
        if n_fp > 0:
            report['fp_removed'] = float(drop[y].mean())
        if n_fp < N:
            report['tp_kept'] = float((~drop[~y]).mean())
        if t is not None:
            if np.ptp(t) > 0:
                report['r2'] = float(r2_score(t, iou_oof))
            else:
                warn.append('iou is constant: R^2 undefined')

    report['C'] = float(C)
    p_oof = report.pop('_p_oof', None)
    clf = MetaClassifier(names, *_fit_models(X, y, t, C), threshold=threshold,
                         info={'cv': report})
    if return_oof:
        report = {**report, 'p_oof': p_oof}
    return clf, report


# Features that describe the training domain rather than the segment's uncertainty:
# class probabilities, neighbourhood classes and image position. ``transfer`` drops them.
DOMAIN_FEATURE_PREFIXES = ('prob_c', 'nbr_c', 'centroid_')
FEATURE_SETS = ('all', 'transfer')


def select_features(names, feature_set: str):
    """Column indices and names of a feature set ('all' or 'transfer')."""
    if feature_set not in FEATURE_SETS:
        raise OodSegError(f'unknown feature set {feature_set!r}; use {FEATURE_SETS}')
    idx = [i for i, n in enumerate(names)
           if feature_set == 'all' or not str(n).startswith(DOMAIN_FEATURE_PREFIXES)]
    return idx, [names[i] for i in idx]


def transfer_auroc(features, is_false_positive, sets, C=1.0):
    """
    Leave-one-set-out AUROC: fit on all sets but one, score the held-out set.

    Returns {held-out set: AUROC or None (one class)}; shows whether features transfer
    between datasets, which grouped K-fold inside one set cannot.
    """
    from sklearn.metrics import roc_auc_score
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(is_false_positive).astype(bool)
    sets = np.asarray(sets)
    out = {}
    for held in sorted(set(sets.tolist())):
        tr, te = sets != held, sets == held
        if len(set(y[tr].tolist())) < 2 or len(set(y[te].tolist())) < 2:
            out[held] = None
            continue
        params = _fit_models(X[tr], y[tr], None, C)
        clf = MetaClassifier([f'f{i}' for i in range(X.shape[1])], *params)
        out[held] = float(roc_auc_score(y[te], clf.predict_fp_proba(X[te])))
    return out


def choose_config(feats, is_fp, sets, names, feature_sets, cs):
    """Pick (feature set, C) by the worst leave-one-set-out AUROC; return choice + table."""
    table = []
    for fs in feature_sets:
        idx, _ = select_features(names, fs)
        for c in cs:
            per = transfer_auroc(feats[:, idx], is_fp, sets, c)
            vals = [v for v in per.values() if v is not None]
            table.append({'features': fs, 'C': c, 'transfer_auroc': per,
                          'worst': float(min(vals)) if vals else float('nan')})
    scored = [t for t in table if np.isfinite(t['worst'])]
    best = max(scored, key=lambda t: t['worst']) if scored else table[0]
    return best, table


def fp_rate_threshold(p_oof, is_fp, sets, frames, target):
    """
    Largest P(false positive) threshold with <= ``target`` kept false segments per frame.

    Checked on every set separately (out-of-fold probabilities); a segment is kept when
    its probability is <= the threshold.
    """
    cands = np.unique(np.concatenate([[0.0], p_oof]))
    best = 0.0
    for t in cands:
        ok = all(((p_oof <= t) & is_fp & (sets == name)).sum() / n <= target
                 for name, n in frames.items() if n)
        if not ok:
            break
        best = float(t)
    return best
