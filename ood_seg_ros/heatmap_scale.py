"""
The heatmap's normalisation: a raw anomaly score mapped to [0, 1] by ``(lo, hi)``.

One owner for the scale that the bundle stores per score (``runtime.normalisation``,
written by calibration), that the pipeline applies to every frame, that the evaluation
applies to its heatmaps and that the bench inverts to make a raw score map from a wanted
heatmap. :class:`HeatmapScale` is a named ``(lo, hi)`` pair, so it unpacks and compares
like the tuples it replaces.
"""

from typing import NamedTuple

import numpy as np

MIN_SPAN = 1e-12     # a degenerate (lo, hi) still maps, everything at or above lo to 1


class HeatmapScale(NamedTuple):
    """``(lo, hi)`` of one score: ``apply`` maps raw to [0, 1], ``invert`` maps back."""

    lo: float
    hi: float

    @classmethod
    def of(cls, pair) -> 'HeatmapScale':
        """Return the scale of a stored ``[lo, hi]`` pair (floats)."""
        lo, hi = pair
        return cls(float(lo), float(hi))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Map a raw score map to [0, 1]: ``(s - lo) / (hi - lo)``, clipped, float32."""
        scale = 1.0 / max(self.hi - self.lo, MIN_SPAN)
        return np.clip((raw - self.lo) * scale, 0.0, 1.0).astype(np.float32, copy=False)

    def invert(self, heat: np.ndarray) -> np.ndarray:
        """Raw score map whose heatmap is ``heat`` (values in [0, 1]), float32."""
        return (self.lo + heat * (self.hi - self.lo)).astype('float32')

    def unit(self, raw: float) -> float:
        """Return a raw score value (a threshold) in heatmap units, not clipped."""
        return (raw - self.lo) / (self.hi - self.lo)

    def to_json(self) -> list:
        """Return the ``[lo, hi]`` pair as stored in ``bundle.json``."""
        return [self.lo, self.hi]
