"""HeatmapScale against the formulas it replaces (copied here as the reference)."""

from hypothesis import given, settings, strategies as st
import numpy as np
from ood_seg_ros.heatmap_scale import HeatmapScale


# -- the old formulas, verbatim (pipeline.normalise, the bench's inverse, calibration) --
def old_normalise(score, lo, hi):
    scale = 1.0 / max(hi - lo, 1e-12)
    return np.clip((score - lo) * scale, 0.0, 1.0).astype(np.float32, copy=False)


def old_bench_inverse(heat, lo, hi):
    return (lo + heat * (hi - lo)).astype('float32')


def old_calibration_threshold(t, lo, hi):
    return float(np.clip((t - lo) / (hi - lo), 0.05, 0.95))


finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(lo=finite, span=st.floats(1e-6, 1e3), seed=st.integers(0, 2 ** 16))
def test_apply_invert_and_unit_equal_the_old_formulas(lo, span, seed):
    hi = lo + span
    rng = np.random.default_rng(seed)
    raw = (lo + rng.uniform(-0.5, 1.5, (7, 9)) * span).astype(np.float32)
    heat = rng.uniform(0, 1, (7, 9)).astype(np.float32)
    scale = HeatmapScale(lo, hi)
    np.testing.assert_array_equal(scale.apply(raw), old_normalise(raw, lo, hi))
    np.testing.assert_array_equal(scale.invert(heat), old_bench_inverse(heat, lo, hi))
    t = float(raw[0, 0])
    assert float(np.clip(scale.unit(t), 0.05, 0.95)) == old_calibration_threshold(t, lo, hi)


def test_degenerate_span_and_dtypes():
    scale = HeatmapScale(2.0, 2.0)
    raw = np.array([1.0, 2.0, 3.0], np.float64)
    np.testing.assert_array_equal(scale.apply(raw), old_normalise(raw, 2.0, 2.0))
    assert scale.apply(raw).dtype == np.float32
    assert scale.invert(np.array([0.5])).dtype == np.float32


def test_invert_then_apply_is_the_identity_inside_the_range():
    scale = HeatmapScale(-3.5, 7.25)
    heat = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(scale.apply(scale.invert(heat)), heat, atol=1e-6)


def test_a_stored_pair_round_trips_and_compares_as_a_tuple():
    scale = HeatmapScale.of([1, '2.5'])
    assert scale == (1.0, 2.5) and isinstance(scale.lo, float)
    assert scale.to_json() == [1.0, 2.5]
    lo, hi = scale
    assert (lo, hi) == (1.0, 2.5)
