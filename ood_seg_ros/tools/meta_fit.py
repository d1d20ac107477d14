"""
Fitting the meta classifier of OoD segments (methods §5), with scikit-learn.

Grouped K-fold evaluation and the final fit of :class:`ood_seg_ros.meta.MetaClassifier`
(the numpy runtime the node runs), the feature-set choice by leave-one-set-out AUROC and
the threshold for a target false-positive rate, and the segment data they fit on
(:func:`load_meta_dataset`). scikit-learn is imported lazily inside the functions that
use it.
"""

import math
from pathlib import Path
from typing import Optional

import numpy as np

from .data.ood_sets import OodDataset
from .evaluate import OodEvaluation, score_kw, set_name
from ..errors import OodSegError
from ..meta import MetaClassifier
from ..pipeline import load_region_metas, Pipeline
from ..scores import SCORES
from ..segments import STAT_NAMES

_MAX_ITER = 10000


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
# Draws of the folds pooled for the balanced threshold by default (train-meta --cv-repeats).
DEFAULT_CV_REPEATS = 10


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


def map_features(maps):
    """Names of the per-map statistics of the score maps ``maps`` (``<map>_<stat>``)."""
    return {f'{m}_{s}' for m in maps for s in STAT_NAMES}


def columns_without(names, maps):
    """Column indices of ``names`` that are not statistics of one of the maps ``maps``."""
    drop = map_features(maps)
    return [i for i, n in enumerate(names) if str(n) not in drop]


def parse_meta_pgn(text, available):
    """
    PGN maps named by ``train-meta --meta-pgn``: ``none`` -> [], else comma-separated names.

    Every name must be a PGN score map (``pgn_...``) in ``available`` (the bundle's
    scores); OodSegError names the first bad one.
    """
    text = str(text).strip()
    if text.lower() == 'none':
        return []
    names = [n.strip() for n in text.split(',') if n.strip()]
    if not names:
        raise OodSegError('--meta-pgn: give "none" or comma-separated PGN score names')
    have = [a for a in available if a.startswith('pgn_')]
    for n in names:
        if n not in have:
            raise OodSegError(f'--meta-pgn: {n!r} is not a PGN score map of this '
                              f'bundle (it has {", ".join(have)})')
    if len(set(names)) != len(names):
        raise OodSegError(f'--meta-pgn: a name is repeated in {names}')
    return names


def pgn_maps_read(meta: MetaClassifier):
    """Return the PGN score maps whose statistics the meta classifier ``meta`` reads."""
    have = set(meta.feature_names)
    return [m for m in SCORES if m.startswith('pgn_') and map_features([m]) & have]


def runtime_pgn_names(bundle_path, pgn, region='all'):
    """
    ``runtime.meta_pgn_names`` after fitting region ``region``'s meta classifier on ``pgn``.

    ``pgn`` plus the PGN maps that the bundle's other meta classifiers
    (``meta_<region>.json``) read, so that every one of them stays computable.
    """
    names = list(pgn)
    for r, meta in load_region_metas(bundle_path).items():
        if r != region and meta is not None:
            names += [m for m in pgn_maps_read(meta) if m not in names]
    return names


def _removed_kept(drop, is_fp):
    """Shares of false segments dropped and of true segments kept (None if there are none)."""
    return {'fp_removed': float(drop[is_fp].mean()) if is_fp.any() else None,
            'tp_kept': float((~drop[~is_fp]).mean()) if (~is_fp).any() else None}


def fit_chosen(feats, is_fp, iou, groups, sets, frames, names, features='auto',
               cs=(1.0, 0.1, 0.01), folds=5, threshold=0.5, target_tp_kept=0.9,
               max_fp_per_frame=0.0, seed=0, balanced=False, repeats=1):
    """
    ``train-meta``'s fit: choose (feature set, C), fit, set the threshold, report per set.

    (feature set, C) by the worst leave-one-set-out AUROC (:func:`choose_config`;
    ``features`` 'auto' tries 'all' and 'transfer'); then :func:`fit_meta` with grouped
    K-fold (folds drawn with ``seed``). The threshold, on the out-of-fold probabilities
    (both override ``target_tp_kept``): ``balanced`` by :func:`balanced_threshold`
    (``max_fp_per_frame`` > 0 caps it), else ``max_fp_per_frame`` > 0 by
    :func:`fp_rate_threshold`. ``repeats`` > 1 (with either rule): the out-of-fold
    probabilities of fold seeds ``seed`` .. ``seed + repeats - 1`` are pooled, and the
    threshold and every out-of-fold share and AUROC are those of the pool (each segment
    counted once per repeat: the mean over the fold draws), so the threshold does not
    hang on one draw of the folds. Report: fit_meta's, plus ``features``, ``selection``
    (the choice table), ``per_set`` (out-of-fold fp_removed, tp_kept, false detections per
    frame) and ``cv_repeats``. Returns ``(MetaClassifier, report)``.
    """
    repeats = cv_repeats(repeats, balanced)
    feature_sets = ['all', 'transfer'] if features == 'auto' else [features]
    choice, table = (choose_config(feats, is_fp, sets, names, feature_sets, cs)
                     if len(set(sets.tolist())) > 1 else
                     ({'features': feature_sets[-1], 'C': cs[0]}, []))
    idx, used = select_features(names, choice['features'])
    clf, report = fit_meta(feats[:, idx], is_fp, iou, used, groups, n_splits=folds,
                           threshold=threshold, target_tp_kept=target_tp_kept or None,
                           C=choice['C'], seed=seed, return_oof=True)
    p_oof = report.pop('p_oof')
    if p_oof is None or not (balanced or max_fp_per_frame):
        repeats = 1             # no out-of-fold threshold rule for the pool to serve
    # The pool: each segment once per draw of the folds (one draw: the segments as given).
    pool_fp, pool_sets = np.tile(is_fp, repeats), np.tile(sets, repeats)
    pool_frames = {k: v * repeats for k, v in frames.items()}
    if repeats > 1:
        p_oof = np.concatenate([p_oof] + [
            fit_meta(feats[:, idx], is_fp, None, used, groups, n_splits=folds, C=choice['C'],
                     seed=seed + r, return_oof=True)[1]['p_oof'] for r in range(1, repeats)])
        if 0 < int(pool_fp.sum()) < len(pool_fp):
            from sklearn.metrics import roc_auc_score
            report['auroc'] = float(roc_auc_score(pool_fp, p_oof))
    report['cv_repeats'] = repeats
    rule = None
    if balanced and p_oof is not None:
        thr = balanced_threshold(p_oof, pool_fp, pool_sets, pool_frames, max_fp_per_frame)
        rule = ('the largest worst share, over the sets, of false segments removed and '
                'true segments kept' + (f', within <= {max_fp_per_frame:g} false detections '
                                        f'per frame on every set' if max_fp_per_frame else ''))
    elif max_fp_per_frame and p_oof is not None:
        thr = fp_rate_threshold(p_oof, pool_fp, pool_sets, pool_frames, max_fp_per_frame)
        rule = f'<= {max_fp_per_frame:g} false detections per frame on every set'
    if rule is not None:
        clf.threshold = report['threshold'] = thr
        report['threshold_rule'] = rule
        report.update(_removed_kept(p_oof > thr, pool_fp))
    per_set = {}
    for name in sorted(set(sets.tolist())):
        m = sets == name
        entry = {'n_segments': int(m.sum()), 'n_fp': int(is_fp[m].sum())}
        if p_oof is not None:   # out-of-fold: each segment scored by a model not fit on it
            pm = pool_sets == name
            drop, fp = p_oof[pm] > report['threshold'], pool_fp[pm]
            entry.update(_removed_kept(drop, fp))
            entry['false_detections_per_frame'] = float((~drop[fp]).sum() / pool_frames[name])
        entry['frames'] = frames[name]
        per_set[name] = entry
    report.update({'features': choice['features'], 'selection': table, 'per_set': per_set})
    clf.info['cv'] = report
    return clf, report


def cv_repeats(value, balanced: bool) -> int:
    """
    ``train-meta --cv-repeats``: K >= 1 draws of the folds for the threshold.

    None: :data:`DEFAULT_CV_REPEATS` with the balanced rule, else 1.
    """
    k = (DEFAULT_CV_REPEATS if balanced else 1) if value is None else int(value)
    if k < 1:
        raise OodSegError(f'--cv-repeats must be >= 1, got {k}')
    return k


def _within_fp_rate(p, fp, sets, frames, target):
    """
    Candidate thresholds and which of them keep the false segments within ``target``.

    Candidates: 0 and every probability, sorted. A candidate t is within when, on every
    set, at most ``target`` false segments per frame have p <= t (are kept).
    """
    cands = np.unique(np.concatenate([[0.0], p]))
    ok = np.ones(len(cands), dtype=bool)
    for name, n in frames.items():
        if n:
            kept = np.searchsorted(np.sort(p[fp & (sets == name)]), cands, side='right')
            ok &= kept / n <= target
    return cands, ok


def fp_rate_threshold(p_oof, is_fp, sets, frames, target):
    """
    Largest P(false positive) threshold with <= ``target`` kept false segments per frame.

    Checked on every set separately (out-of-fold probabilities); a segment is kept when
    its probability is <= the threshold. 0 when no candidate keeps within ``target``.
    """
    cands, ok = _within_fp_rate(np.asarray(p_oof, dtype=np.float64), np.asarray(is_fp, bool),
                                np.asarray(sets, dtype=object), frames, target)
    return float(cands[ok].max()) if ok.any() else 0.0


def balanced_threshold(p_oof, is_fp, sets, frames=None, max_fp_per_frame=0.0):
    """
    P(false positive) threshold with the largest worst share of removed and kept segments.

    For each candidate threshold t (0 and every out-of-fold probability; a segment is kept
    when its probability is <= t) the shares are, per set, the false segments removed and
    the true segments kept (a set without false or without true segments has no share of
    that kind); the worst of them over the sets is maximised, ties broken by the larger
    mean share, then by the larger t. ``max_fp_per_frame`` > 0 (needs ``frames``, the
    frame count per set): only thresholds within :func:`fp_rate_threshold`'s bound take
    part (t = 0 always does).
    """
    p = np.asarray(p_oof, dtype=np.float64).reshape(-1)
    fp = np.asarray(is_fp, dtype=bool).reshape(-1)
    sets = np.asarray(sets, dtype=object).reshape(-1)
    if not len(p) == len(fp) == len(sets):
        raise OodSegError(f'balanced_threshold: {len(p)} probabilities, {len(fp)} labels '
                          f'and {len(sets)} set names')
    if max_fp_per_frame and not frames:
        raise OodSegError('balanced_threshold: a false-detection cap needs frames per set')
    cands = np.unique(np.concatenate([[0.0], p]))
    shares = []
    for name in sorted(set(sets.tolist())):
        m = sets == name
        pf, pt = np.sort(p[m & fp]), np.sort(p[m & ~fp])
        if len(pf):     # removed: p > t
            shares.append(1.0 - np.searchsorted(pf, cands, side='right') / len(pf))
        if len(pt):     # kept: p <= t
            shares.append(np.searchsorted(pt, cands, side='right') / len(pt))
    if not shares:
        return 0.0
    shares = np.stack(shares)
    allowed = (_within_fp_rate(p, fp, sets, frames, max_fp_per_frame)[1]
               if max_fp_per_frame else np.ones(len(cands), dtype=bool))
    allowed[0] = True
    worst = np.where(allowed, shares.min(0), -np.inf)
    order = np.lexsort((cands, shares.mean(0), worst))
    return float(cands[order[-1]])


def load_meta_dataset(bundle_path, ood_root, device='cpu', limit=0, progress=None,
                      pipeline: Optional[Pipeline] = None, input_size=None,
                      geometry='letterbox', obstacle=None, meta_pgn=None):
    """
    Segment features / targets on one or several OoD sets for meta classifier training.

    Returns (pipeline, features, is_fp, iou, groups, set_of_segment, frames_per_set):
    ``groups`` are image ids unique across the sets (for grouped cross-validation),
    ``set_of_segment`` the set name of every segment, ``frames_per_set`` the number of
    frames read from each set (frames without segments count too). ``meta_pgn``: the PGN
    maps of the features (default: the bundle's ``runtime.meta_pgn_names``).
    """
    roots = [ood_root] if isinstance(ood_root, (str, Path)) else list(ood_root)
    obstacle = obstacle or {}
    pipe = pipeline or Pipeline.from_bundle(
        bundle_path, backend='torch', device=device, input_size=input_size,
        geometry=geometry, meta_pgn=meta_pgn, **obstacle,
        **score_kw(bundle_path, input_size, obstacle.get('region')))
    feats, is_fp, iou, groups, sets = [], [], [], [], []
    frames = {}
    offset = 0
    for root in roots:
        ev = OodEvaluation(pipe, OodDataset(root), limit, progress)
        f, fp, io, g, _ = ev.segment_records()
        feats.append(f)
        is_fp.append(fp)
        iou.append(io)
        groups.append(g + offset)
        sets.append(np.full(len(fp), set_name(root), dtype=object))
        frames[set_name(root)] = ev.n
        offset += ev.n
    return (pipe, np.concatenate(feats), np.concatenate(is_fp), np.concatenate(iou),
            np.concatenate(groups), np.concatenate(sets), frames)
