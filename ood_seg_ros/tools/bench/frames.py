"""
Camera-like input frames for the benchmarks, without any data set.

:func:`sample_frame` takes the first image of the package's sample bag
(``test/data/sample.bag``) when the source tree is present, else draws a synthetic
street-like frame (sky gradient, a road plane, box-shaped objects, sensor noise). Real
content matters for timing: the number of segments after thresholding depends on it.
"""

from pathlib import Path

import cv2
import numpy as np

from ..data.bags import read_image_bag
from ...imagecodec.image_codec import array_to_rgb

SAMPLE_BAG = Path(__file__).resolve().parents[3] / 'test' / 'data' / 'sample.bag'


def sample_frame(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Return a uint8 (height, width, 3) RGB frame: the sample bag's first, else synthetic."""
    img = _bag_frame(SAMPLE_BAG)
    if img is None:
        img = synthetic_frame(height, width, rng)
    return np.ascontiguousarray(cv2.resize(img, (int(width), int(height))))


def _bag_frame(path: Path):
    """First image of the bag at ``path`` as RGB, or None when there is no such bag."""
    if not (path / 'metadata.yaml').is_file():
        return None
    for msg in read_image_bag(path):
        return array_to_rgb(msg.image, msg.header.encoding)
    return None


def synthetic_frame(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """
    Street-like uint8 RGB frame: sky gradient above the horizon, darker road below.

    Plus a few boxes of random colour (cars, walls) and Gaussian sensor noise; all
    drawn from ``rng``.
    """
    h, w = int(height), int(width)
    horizon = int(h * rng.uniform(0.35, 0.5))
    img = np.empty((h, w, 3), np.float32)
    t = np.linspace(0.0, 1.0, max(horizon, 1))[:, None, None]
    img[:horizon] = (1 - t) * np.array([110, 150, 220]) + t * np.array([200, 210, 220])
    g = np.linspace(0.0, 1.0, h - horizon)[:, None, None]
    img[horizon:] = (1 - g) * np.array([120, 120, 115]) + g * np.array([70, 70, 70])
    for _ in range(int(rng.integers(3, 8))):
        bh, bw = int(rng.uniform(0.08, 0.3) * h), int(rng.uniform(0.05, 0.25) * w)
        y0 = int(rng.uniform(horizon - bh, h - bh)) if h - bh > horizon - bh else 0
        x0 = int(rng.uniform(0, max(1, w - bw)))
        img[max(0, y0):y0 + bh, x0:x0 + bw] = rng.uniform(20, 235, 3)
    img += rng.normal(0.0, 4.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
