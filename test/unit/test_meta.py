"""The meta classifier (ood_seg_ros.meta) and its fitting (tools.meta_fit) against scikit-learn."""

import json
import warnings

import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.meta import MetaClassifier
from ood_seg_ros.tools.meta_fit import fit_meta, group_folds
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

NAMES = [f'f{i}' for i in range(6)]


def _problem(rng, n_images=40, per_image=12, separation=3.0):
    """Return a synthetic segment data set: X, is_fp, iou, groups."""
    N = n_images * per_image
    groups = np.repeat(np.arange(n_images) * 7 + 100, per_image)
    y = rng.random(N) < 0.4
    X = rng.normal(size=(N, len(NAMES))) * [1.0, 5.0, 0.1, 2.0, 1.0, 30.0] + [0, 3, -1, 0, 9, 100]
    X[:, 0] += separation * y
    X[:, 3] -= 0.5 * separation * y
    iou = np.clip(0.7 - 0.15 * X[:, 0] + 0.05 * rng.normal(size=N), 0, 1)
    return X, y, iou, groups


def test_numpy_predictions_match_sklearn():
    rng = np.random.default_rng(0)
    X, y, iou, groups = _problem(rng, separation=1.0)
    clf, _ = fit_meta(X, y, iou, NAMES, groups)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=10000)).fit(X, y)
    X_test = rng.normal(size=(50, len(NAMES))) * 10 + 3
    np.testing.assert_allclose(clf.predict_fp_proba(X_test), ref.predict_proba(X_test)[:, 1],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(clf.predict_fp_proba(X), ref.predict_proba(X)[:, 1],
                               rtol=0, atol=1e-6)
    reg = make_pipeline(StandardScaler(), LinearRegression()).fit(X, iou)
    np.testing.assert_allclose(clf.predict_iou(X_test, clip=False), reg.predict(X_test),
                               rtol=1e-9, atol=1e-9)
    pred = clf.predict_iou(X_test)
    assert pred.min() >= 0 and pred.max() <= 1
    np.testing.assert_array_equal(clf.keep(X_test), clf.predict_fp_proba(X_test) <= 0.5)


def test_sigmoid_is_stable_for_extreme_logits():
    clf = MetaClassifier(['a'], [0.0], [1.0], [1.0], 0.0, [0.0], 0.0)
    x = np.array([[-1e4], [-800.0], [-30.0], [0.0], [30.0], [800.0], [1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        p = clf.predict_fp_proba(x)
    want = [0.0, 0.0, 1.0 / (1.0 + np.exp(30.0)), 0.5, 1.0 / (1.0 + np.exp(-30.0)), 1.0, 1.0]
    np.testing.assert_allclose(p, want, rtol=1e-12, atol=1e-300)


def test_json_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    X, y, iou, groups = _problem(rng)
    clf, report = fit_meta(X, y, iou, NAMES, groups, threshold=0.3)
    path = tmp_path / 'meta.json'
    clf.save(path)
    back = MetaClassifier.load(path, expected_features=NAMES)
    assert back.to_dict() == clf.to_dict()
    for key in ('mean', 'scale', 'coef', 'reg_coef'):
        np.testing.assert_array_equal(getattr(back, key), getattr(clf, key))
    assert back.intercept == clf.intercept and back.threshold == 0.3
    np.testing.assert_array_equal(back.predict_fp_proba(X), clf.predict_fp_proba(X))
    assert back.info['cv'] == json.loads(json.dumps(report))
    # Plain JSON: only standard types, no NaN.
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f'constant {c}'))


def test_feature_name_mismatch_raises(tmp_path):
    rng = np.random.default_rng(2)
    X, y, iou, groups = _problem(rng, n_images=10)
    clf, _ = fit_meta(X, y, iou, NAMES, groups)
    d = clf.to_dict()
    wrong = NAMES[:3] + ['other'] + NAMES[4:]
    with pytest.raises(OodSegError, match="feature 3 is 'f3' but 'other'"):
        MetaClassifier.from_dict(d, expected_features=wrong)
    with pytest.raises(OodSegError, match="'f6' is missing"):
        MetaClassifier.from_dict(d, expected_features=NAMES + ['f6'])
    with pytest.raises(OodSegError, match='extra feature'):
        MetaClassifier.from_dict(d, expected_features=NAMES[:-1])
    path = tmp_path / 'm.json'
    clf.save(path)
    with pytest.raises(OodSegError, match='m.json'):
        MetaClassifier.load(path, expected_features=wrong)
    with pytest.raises(OodSegError, match='missing.json'):
        MetaClassifier.load(tmp_path / 'missing.json')
    bad = dict(d, coef=d['coef'][:-1])
    with pytest.raises(OodSegError, match='coef'):
        MetaClassifier.from_dict(bad)
    with pytest.raises(OodSegError, match=r'\(n, 6\)'):
        clf.predict_fp_proba(X[:, :5])


def test_grouped_cv_matches_independent_sklearn_cv():
    rng = np.random.default_rng(3)
    X, y, iou, groups = _problem(rng, separation=1.0)
    _, report = fit_meta(X, y, iou, NAMES, groups, n_splits=4, seed=7)
    folds = group_folds(groups, 4, seed=7)
    # Each image lies in exactly one fold; 4 folds used.
    assert all(np.unique(folds[groups == gid]).size == 1 for gid in np.unique(groups))
    assert set(folds.tolist()) == {0, 1, 2, 3}
    p = np.empty(len(y))
    q = np.empty(len(y))
    for f in range(4):
        tr, te = folds != f, folds == f
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10000))
        p[te] = clf.fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
        q[te] = make_pipeline(StandardScaler(), LinearRegression()).fit(
            X[tr], iou[tr]).predict(X[te])
    assert report['auroc'] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert report['r2'] == pytest.approx(r2_score(iou, q), abs=1e-6)
    assert report['fp_removed'] == pytest.approx(np.mean(p[y] > 0.5), abs=1e-12)
    assert report['tp_kept'] == pytest.approx(np.mean(p[~y] <= 0.5), abs=1e-12)
    assert report['n_segments'] == len(y) and report['n_fp'] == int(y.sum())
    assert report['n_splits_used'] == 4 and report['warnings'] == []


def test_separable_and_noise_problems():
    rng = np.random.default_rng(4)
    X, y, iou, groups = _problem(rng, separation=3.0)
    _, rep = fit_meta(X, y, iou, NAMES, groups)
    assert rep['auroc'] > 0.9 and rep['r2'] > 0.5
    assert rep['fp_removed'] > 0.8 and rep['tp_kept'] > 0.8
    X, y, iou, groups = _problem(rng, n_images=100, per_image=20, separation=0.0)
    iou = rng.random(len(y))
    _, rep = fit_meta(X, y, iou, NAMES, groups)
    assert abs(rep['auroc'] - 0.5) < 0.06
    assert rep['r2'] < 0.02


def test_degenerate_inputs_give_report_entries():
    rng = np.random.default_rng(5)
    X, y, iou, groups = _problem(rng, n_images=8)
    clf, rep = fit_meta(X, np.zeros(len(y), bool), iou, NAMES, groups)
    assert rep['auroc'] is None and rep['fp_removed'] is None
    assert rep['tp_kept'] == 1.0
    assert any('one class only' in w for w in rep['warnings'])
    assert clf.keep(X).all()
    clf, rep = fit_meta(X, np.ones(len(y), bool), iou, NAMES, groups)
    assert rep['auroc'] is None and rep['fp_removed'] == 1.0 and not clf.keep(X).any()
    # Fewer images than folds: the folds are reduced and this is reported.
    _, rep = fit_meta(X, y, iou, NAMES, groups, n_splits=20)
    assert rep['n_splits_used'] == 8 and rep['auroc'] is not None
    assert any('used 8 folds' in w for w in rep['warnings'])
    # One image only: no cross-validation, still a classifier.
    clf, rep = fit_meta(X, y, iou, NAMES, np.zeros(len(y)))
    assert rep['auroc'] is None and rep['n_splits_used'] == 0
    assert any('cross-validation skipped' in w for w in rep['warnings'])
    assert clf.predict_fp_proba(X).shape == (len(y),)
    # Constant IoU and no IoU.
    _, rep = fit_meta(X, y, np.full(len(y), 0.5), NAMES, groups)
    assert rep['r2'] is None and any('constant' in w for w in rep['warnings'])
    clf, rep = fit_meta(X, y, None, NAMES, groups)
    assert rep['r2'] is None and not clf.reg_coef.any()


def test_bad_inputs_raise():
    rng = np.random.default_rng(6)
    X, y, iou, groups = _problem(rng, n_images=5)
    with pytest.raises(OodSegError, match='feature names'):
        fit_meta(X, y, iou, NAMES[:-1], groups)
    with pytest.raises(OodSegError, match='no segments'):
        fit_meta(X[:0], y[:0], iou[:0], NAMES, groups[:0])
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(OodSegError, match="'f2'"):
        fit_meta(Xn, y, iou, NAMES, groups)
    with pytest.raises(OodSegError, match='groups'):
        fit_meta(X, y, iou, NAMES, groups[:-1])
