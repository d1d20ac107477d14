"""
Meta classification and meta regression of OoD segments (methods §5).

Target of the classifier: the segment is a *false positive* (no overlap with ground-truth
OoD). A segment is kept when P(false positive) <= threshold. The meta regression
predicts the segment IoU with a linear model on the same standardised features.

The runtime (:class:`MetaClassifier`, this module) is numpy only and is stored as plain
JSON: scaler mean / scale, logistic and linear coefficients, feature order and threshold.
Fitting it (scikit-learn) is an offline tool: :mod:`ood_seg_ros.tools.meta_fit`.
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
