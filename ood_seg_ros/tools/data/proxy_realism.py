"""
Finishing touches that make an OoD training proxy look less like a paste.

Against the paste shortcut (ood_levers.md, "Outlier exposure done properly"): the
object placement itself (:mod:`ood_seg_ros.tools.data.road_obstacles`) already feathers the
alpha, matches colour and brightness to the local road and adds a contact shadow. This
module adds the frame-level steps:

- :func:`ignore_band`: a band of ``band_px`` pixels around each pasted object is left out
  of every loss (255 in both the OoD label and the semantic label), so the network is not
  taught a sharp decision on the blended edge pixels, which are neither object nor scene;
- :func:`jpeg_reencode`: the whole composed frame is JPEG-compressed at a random quality,
  so the pasted region carries the same compression artefacts as the rest of the frame;
- :func:`choose_placement`: per frame, road placement (obstacles on the drivable area) or
  scene placement (objects against any texture of known classes, e.g. vegetation).
"""

import cv2
import numpy as np

from ...errors import OodSegError

OOD = 1


def ignore_band(ood_label: np.ndarray, semantic: np.ndarray, band_px: int, void: int = 255):
    """
    Return (ood_label, semantic) with a ``band_px`` band outside each object set to ``void``.

    The band is the pixels within Chebyshev distance ``band_px`` of an OoD pixel (a square
    dilation) that are not OoD themselves. Object pixels keep their label 1. Inputs are
    not modified.
    """
    band_px = int(band_px)
    if band_px < 0:
        raise OodSegError(f'ignore band must be >= 0 px, got {band_px}')
    ood_label, semantic = ood_label.copy(), semantic.copy()
    obj = ood_label == OOD
    if band_px == 0 or not obj.any():
        return ood_label, semantic
    kernel = np.ones((2 * band_px + 1, 2 * band_px + 1), np.uint8)
    band = (cv2.dilate(obj.astype(np.uint8), kernel) > 0) & ~obj
    ood_label[band] = void
    semantic[band] = void
    return ood_label, semantic


def jpeg_reencode(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Return the uint8 RGB frame after one JPEG encode/decode at ``quality`` (1..100)."""
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise OodSegError(f'JPEG quality must lie in 1..100, got {quality}')
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OodSegError('cannot JPEG-encode the frame')
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def choose_placement(placement: str, rng, road_fraction: float) -> str:
    """``road`` or ``scene`` for one frame; ``mixed`` draws road with ``road_fraction``."""
    if placement != 'mixed':
        return placement
    if not 0.0 <= road_fraction <= 1.0:
        raise OodSegError(f'road_fraction must lie in [0, 1], got {road_fraction}')
    return 'road' if rng.random() < road_fraction else 'scene'
