"""Checked reading of image and label files (OpenCV): one error type, the file named."""

from pathlib import Path

import cv2
import numpy as np

from ...errors import OodSegError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    """Read and decode an image file; OodSegError naming ``what`` and the file otherwise."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise OodSegError(f'cannot read {what} {path}: {exc.strerror or exc}') from None
    img = cv2.imdecode(data, flags) if data.size else None
    if img is None:
        raise OodSegError(f'cannot decode {what} {path}: not a valid image file')
    return img


def read_rgb(path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); raise OodSegError if unreadable."""
    path = Path(path)
    bgr = _decode(path, cv2.IMREAD_COLOR, 'image')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_gray(path) -> np.ndarray:
    """
    Read a single-channel 8-bit label image as uint8 (H, W); raise OodSegError if bad.

    A 3-channel file whose channels are identical is accepted (channel 0 is used).
    """
    path = Path(path)
    img = _decode(path, cv2.IMREAD_UNCHANGED, 'label')
    if img.dtype != np.uint8:
        raise OodSegError(f'label {path} has dtype {img.dtype}, expected 8-bit')
    if img.ndim == 3:
        if img.shape[2] >= 3 and np.array_equal(img[..., 0], img[..., 1]) \
                and np.array_equal(img[..., 0], img[..., 2]):
            img = np.ascontiguousarray(img[..., 0])
        else:
            raise OodSegError(f'label {path} has {img.shape[2]} channels, expected 1 (class ids)')
    return img


def frame_and_label(rgb, label) -> tuple:
    """Return (rgb, label) as arrays after checking: uint8 (H, W, 3) and a (H, W) label."""
    rgb, label = np.asarray(rgb), np.asarray(label)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise OodSegError(f'rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}')
    if label.shape != rgb.shape[:2]:
        raise OodSegError(f'label shape {label.shape} does not match image {rgb.shape[:2]}')
    return rgb, label
