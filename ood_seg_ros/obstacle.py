"""
Obstacle mode, ROS-free: the drivable-area prior, the high-resolution road band, flips.

- **Drivable prior** (:func:`drivable_mask`, :func:`region_weight`): the pixels whose
  predicted class (argmax of ``probs``) is one of the bundle's drivable classes, found by
  NAME in its class list (``Road`` by default; ``Pavement`` / ``Sidewalk`` optionally),
  so a CamVid and a Cityscapes bundle both work. Holes are filled row by row (every pixel
  between the leftmost and the rightmost drivable pixel of a row) and by a morphological
  closing; the region is widened by ``margin`` (Euclidean, fraction of the map width),
  and outside it the weight falls off as ``exp(-d / falloff)`` (``d``: distance to the
  widened region, fraction of the width), never below ``floor``: an obstacle the
  network labels "not road" still counts.
- **Region score** (:func:`region_score`): ``max(s - lo, 0) * w``, ``lo`` the score's
  lower normalisation bound of the ``all`` mode: in-region pixels keep their ranking,
  pixels off the road are damped.
- **Road band** (:func:`band_rows`, :func:`band_input_size`, :func:`fuse_band`): a second
  pass of the network over the rows between horizon and bonnet at (up to) the frame's
  own resolution, fused into the first pass (max or mean) inside the band.
- **Flip averaging** (:func:`mirrored_back`): the score maps and ``probs`` of the mirrored
  input, mirrored back onto the frame. The pipeline weighs each of the two passes by its
  own drivable prior and averages the weighted scores; semantic, ``probs`` and the maps
  of the segment features stay the frame's own.
- **Small-object contrast** (:func:`local_contrast`, off by default): the score plus
  ``contrast`` times its positive excess over the box mean of a ``contrast_window``
  square (decoder pixels) around each pixel. Peaks smaller than the window rise, flat
  areas and the inside of large hot regions keep their score; no pixel goes down.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from .errors import OodSegError

REGIONS = ('all', 'drivable')
FUSIONS = ('max', 'mean')
DEFAULT_OBSTACLE = {
    'drivable_classes': ['Road'],   # names, case-insensitive; e.g. add 'Pavement'
    'margin': 0.01,                  # widening, fraction of the map width
    'falloff': 0.04,                 # exp(-d / falloff) outside, d as a fraction of width
    'floor': 0.0,                    # lowest weight far from the road
    'close': 0.03,                   # closing kernel, fraction of the map width
    'band_rows': [0.40, 0.85],       # band top / bottom as fractions of the frame height
    'band_width': 0,                 # band network width at most; 0: the frame's own
    'band_fusion': 'max',
    'contrast': 0.0,                 # small-object contrast gain; 0: off
    'contrast_window': 9,            # its box-mean window, decoder pixels (odd)
}


@dataclass(frozen=True)
class ObstacleSettings:
    """Drivable prior and band settings (bundle ``runtime.obstacle`` + overrides)."""

    drivable_classes: Tuple[str, ...] = tuple(DEFAULT_OBSTACLE['drivable_classes'])
    margin: float = DEFAULT_OBSTACLE['margin']
    falloff: float = DEFAULT_OBSTACLE['falloff']
    floor: float = DEFAULT_OBSTACLE['floor']
    close: float = DEFAULT_OBSTACLE['close']
    band_rows: Optional[Tuple[float, float]] = tuple(DEFAULT_OBSTACLE['band_rows'])
    band_auto: bool = False
    band_width: int = DEFAULT_OBSTACLE['band_width']
    band_fusion: str = DEFAULT_OBSTACLE['band_fusion']
    contrast: float = DEFAULT_OBSTACLE['contrast']
    contrast_window: int = DEFAULT_OBSTACLE['contrast_window']

    @classmethod
    def from_runtime(cls, runtime: dict, **overrides) -> 'ObstacleSettings':
        """Read a bundle's ``runtime.obstacle``, then the non-None ``overrides``."""
        doc = {**DEFAULT_OBSTACLE, **((runtime or {}).get('obstacle') or {})}
        doc.update({k: v for k, v in overrides.items() if v is not None})
        auto = doc.get('band_rows') == 'auto' or bool(doc.get('band_auto', False))
        rows = parse_band_rows(doc['band_rows']) if doc['band_rows'] != 'auto' else \
            tuple(DEFAULT_OBSTACLE['band_rows'])
        if doc['band_fusion'] not in FUSIONS:
            raise OodSegError(f'band fusion must be one of {", ".join(FUSIONS)}, got '
                              f'{doc["band_fusion"]!r}')
        if int(doc['band_width']) < 0:
            raise OodSegError(f'band width must be >= 0, got {doc["band_width"]}')
        check_contrast_gain(doc['contrast'])
        check_contrast_window(doc['contrast_window'])
        return cls(tuple(str(c) for c in doc['drivable_classes']), float(doc['margin']),
                   float(doc['falloff']), float(doc['floor']), float(doc['close']), rows,
                   auto, int(doc['band_width']), doc['band_fusion'], float(doc['contrast']),
                   int(doc['contrast_window']))

    @property
    def contrast_spec(self) -> Tuple[float, int]:
        """(gain, window) of the small-object contrast: what its calibration depends on."""
        return self.contrast, self.contrast_window


def check_contrast_gain(gain) -> None:
    """Raise OodSegError unless the contrast ``gain`` is a finite number >= 0."""
    try:
        g = float(gain)
    except (TypeError, ValueError):
        raise OodSegError(f'contrast must be a number >= 0, got {gain!r}') from None
    if not np.isfinite(g) or g < 0:
        raise OodSegError(f'contrast must be a number >= 0 (0: off), got {gain!r}')


def check_contrast_window(window) -> None:
    """Raise OodSegError unless the contrast ``window`` is an odd integer >= 3."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or \
            window < 3 or window % 2 == 0:
        raise OodSegError(f'contrast window must be an odd integer >= 3 (decoder pixels), '
                          f'got {window!r}')


def parse_band_rows(spec) -> Tuple[float, float]:
    """``'0.4:0.85'``, ``[0.4, 0.85]`` -> (0.4, 0.85); OodSegError unless 0 <= t < b <= 1."""
    try:
        top, bottom = (float(v) for v in (spec.split(':') if isinstance(spec, str) else spec))
    except (TypeError, ValueError):
        raise OodSegError(f'band rows must be TOP:BOTTOM fractions of the frame height '
                          f'(e.g. 0.4:0.85) or auto, got {spec!r}') from None
    if not 0.0 <= top < bottom <= 1.0:
        raise OodSegError(f'band rows must satisfy 0 <= top < bottom <= 1, got {spec!r}')
    return top, bottom


def drivable_ids(class_names: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    """Class ids whose names match ``wanted`` (case-insensitive); none found: empty."""
    lower = [str(n).lower() for n in class_names]
    return np.array([i for i, n in enumerate(lower) if n in {w.lower() for w in wanted}],
                    dtype=np.int64)


def drivable_mask(probs: np.ndarray, ids: np.ndarray, settings: ObstacleSettings
                  ) -> np.ndarray:
    """
    Return the filled drivable region (h, w) bool of ``probs`` (C, h, w), not widened.

    Argmax class in ``ids``; every row filled between its leftmost and rightmost drivable
    pixel; closed with a square kernel of ``close * w`` pixels (bridges rows without
    road between rows with road).
    """
    c, h, w = probs.shape
    mask = fill_rows(np.isin(probs.argmax(axis=0), ids))
    k = int(round(settings.close * w))
    if k > 1:
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE,
                                np.ones((k, k), np.uint8),
                                borderType=cv2.BORDER_REPLICATE).astype(bool)
    return mask


def fill_rows(mask: np.ndarray) -> np.ndarray:
    """Fill every row of a (h, w) bool mask between its leftmost and rightmost True."""
    h, w = mask.shape
    has = mask.any(axis=1)
    left = mask.argmax(axis=1)
    right = w - 1 - mask[:, ::-1].argmax(axis=1)
    cols = np.arange(w)
    return has[:, None] & (cols >= left[:, None]) & (cols <= right[:, None])


def region_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels, float32) of every pixel to the nearest True of ``mask``."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2,
                                 cv2.DIST_MASK_PRECISE)


def region_weight(dist: np.ndarray, settings: ObstacleSettings) -> Tuple[np.ndarray,
                                                                         np.ndarray]:
    """
    Widened region and soft weight from the distance map of the filled region.

    Widened: ``dist <= margin * w``. Weight: 1 there, ``exp(-(dist - margin * w) /
    (falloff * w))`` outside, never below ``floor``. Returns (widened bool, weight float32).
    """
    w = dist.shape[1]
    margin = settings.margin * w
    over = np.maximum(dist - margin, 0.0)
    weight = np.exp(-over / max(settings.falloff * w, 1e-6))
    return dist <= margin, np.maximum(weight, settings.floor).astype(np.float32)


def region_score(raw: np.ndarray, lo: float, weight: Optional[np.ndarray]) -> np.ndarray:
    """``max(raw - lo, 0) * weight`` (``weight`` None: ``raw`` unchanged)."""
    if weight is None:
        return raw
    return (np.maximum(raw - lo, 0.0) * weight).astype(np.float32, copy=False)


def band_rows(settings: ObstacleSettings, mask: Optional[np.ndarray] = None
              ) -> Tuple[float, float]:
    """
    Band (top, bottom) as fractions of the frame height.

    Fixed rows, or with ``band_auto`` the same height starting a little above the first
    row of the drivable ``mask`` (the horizon of the road), kept inside the frame.
    """
    top, bottom = settings.band_rows
    if not settings.band_auto or mask is None or not mask.any():
        return top, bottom
    height = bottom - top
    first = int(np.flatnonzero(mask.any(axis=1))[0]) / mask.shape[0]
    top = min(max(first - settings.margin, 0.0), 1.0 - height)
    return top, top + height


def band_input_size(frame_size, rows, band_width: int = 0, multiple: int = 16
                    ) -> Tuple[int, int]:
    """Network input (H, W) of a band: the crop at most ``band_width`` wide (0: native)."""
    fh, fw = frame_size
    scale = min(band_width or fw, fw) / fw
    ch = max(1, int(round(fh * rows[1])) - int(round(fh * rows[0])))

    def up(v):
        return max(multiple, int(np.ceil(v / multiple)) * multiple)

    return up(ch * scale), up(fw * scale)


def row_span(rows, height: int) -> Tuple[int, int]:
    """Pixel rows [r0, r1) of the band fractions ``rows`` in a map of ``height`` rows."""
    r0 = int(round(rows[0] * height))
    return r0, max(r0 + 1, int(round(rows[1] * height)))


def fuse_band(base: np.ndarray, band: np.ndarray, rows, mode: str = 'max') -> np.ndarray:
    """
    Fuse a band map into ``base`` (h, w) inside the band rows (fractions of the height).

    The band map is resized to the band's rows of ``base``: bilinear when it is smaller,
    else area-averaged after a max filter as wide as the scale (``max``: a peak of a few
    band pixels survives the smaller grid). ``max`` keeps the larger of the two, ``mean``
    their average. Returns a new array.
    """
    h, w = base.shape
    r0, r1 = row_span(rows, h)
    r1 = min(r1, h)
    th, tw = r1 - r0, w
    bh, bw = band.shape
    src = band.astype(np.float32, copy=False)
    if bh > th or bw > tw:
        if mode == 'max':
            k = (max(1, int(np.ceil(bw / tw))), max(1, int(np.ceil(bh / th))))
            src = cv2.dilate(src, np.ones((k[1], k[0]), np.uint8))
        src = cv2.resize(src, (tw, th), interpolation=cv2.INTER_AREA)
    elif (bh, bw) != (th, tw):
        src = cv2.resize(src, (tw, th), interpolation=cv2.INTER_LINEAR)
    out = base.astype(np.float32, copy=True)
    out[r0:r1] = np.maximum(out[r0:r1], src) if mode == 'max' else 0.5 * (out[r0:r1] + src)
    return out


def local_contrast(raw: np.ndarray, gain: float, window: int) -> np.ndarray:
    """
    ``raw + gain * max(raw - boxmean(raw), 0)``: small-object contrast of a score map.

    ``boxmean``: the mean over the ``window`` x ``window`` square centred on each pixel,
    the map mirrored at its edges (``cv2.BORDER_REFLECT``). ``gain`` 0 returns ``raw``.
    """
    if gain <= 0:
        return raw
    src = raw.astype(np.float32, copy=False)
    mean = cv2.blur(src, (window, window), borderType=cv2.BORDER_REFLECT)
    out = src + np.float32(gain) * np.maximum(src - mean, 0.0)
    return out.astype(np.float32, copy=False)


def mirrored_back(flipped: Dict[str, np.ndarray], keys: Sequence[str]
                  ) -> Dict[str, np.ndarray]:
    """Return the maps ``keys`` of the mirrored input's outputs, mirrored back."""
    return {k: np.ascontiguousarray(flipped[k][..., ::-1]) for k in keys if k in flipped}
