"""
Road obstacles: objects placed on the road of a frame, at a perspective-consistent size.

The missing validation type of the real-anomaly issue: small obstacles lying on the
drivable area (lost cargo, boxes, tyres, rocks, toys), far and near, as in Fishyscapes
Lost & Found and SegmentMeIfYouCan RoadObstacle21. Objects are COCO cut-outs and
procedural objects (boxes, tyres, rocks, bags of any colour), so the proxy is wider than
coco128's animals.

Geometry (flat road, pinhole camera at height ``camera_height`` m): a road point at image
row ``y`` below the horizon row ``y_h`` lies at depth Z = f * h_cam / (y - y_h), so an
object of physical height H metres standing there is H * (y - y_h) / h_cam pixels tall.
The horizon is taken ``horizon_margin`` x H above the farthest road row of the frame's
label. Anchor rows are drawn uniformly over the road's rows (not its pixels), so far,
small objects are as common as near ones.

Blending against the paste shortcut (ood_levers.md): the object's brightness and colour
are pulled toward the local road, its edge is feathered, a soft contact shadow darkens
the road under it, and the frame is written as JPEG like every OoD set.
"""

from dataclasses import dataclass
import math
from typing import Sequence

import cv2
import numpy as np

from .coco_objects import CocoObject
from .images import frame_and_label
from ...errors import OodSegError

# Procedural object kinds; each is a function (rng, h, w) -> (rgb uint8, alpha float32).
PROCEDURAL_KINDS = ('box', 'tyre', 'rock', 'bag')
PROCEDURAL_CLASS_ID = -1


@dataclass(frozen=True)
class RoadGeometry:
    """Perspective settings: camera height (m), object heights (m), horizon margin."""

    camera_height: float = 1.4
    object_height: tuple = (0.15, 0.9)
    horizon_margin: float = 0.02
    min_height_px: int = 4


def _noise(rng, h: int, w: int, scale: float) -> np.ndarray:
    """Smooth noise in [-1, 1] of shape (h, w) (upsampled random grid)."""
    gh, gw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _colour(rng) -> np.ndarray:
    """Draw a random colour of any hue, dull to saturated (RGB float32 0..255)."""
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(40, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _box(rng, h: int, w: int):
    """Draw a cuboid seen slightly from above: front, darker side face, lighter top."""
    rgb = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    base = _colour(rng)
    top_h = max(1, int(h * rng.uniform(0.1, 0.3)))
    side_w = max(1, int(w * rng.uniform(0.1, 0.35)))
    front = np.array([[0, top_h], [w - side_w, top_h], [w - side_w, h], [0, h]], np.int32)
    side = np.array([[w - side_w, top_h], [w, 0], [w, h - top_h], [w - side_w, h]], np.int32)
    top = np.array([[0, top_h], [side_w, 0], [w, 0], [w - side_w, top_h]], np.int32)
    for poly, shade in ((front, 1.0), (side, 0.7), (top, 1.25)):
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [poly], 1)
        rgb[m > 0] = np.clip(base * shade, 0, 255)
        alpha[m > 0] = 1.0
    rgb *= (1 + 0.08 * _noise(rng, h, w, 6.0))[..., None]
    return rgb, alpha


def _tyre(rng, h: int, w: int):
    """Draw a tyre: a dark elliptic ring around a coloured hub."""
    rgb = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    centre, axes = (w // 2, h // 2), (max(1, w // 2), max(1, h // 2))
    cv2.ellipse(alpha, centre, axes, 0, 0, 360, 1.0, -1)
    grey = rng.uniform(15, 45)
    rgb[:] = grey
    inner = (max(1, int(axes[0] * 0.55)), max(1, int(axes[1] * 0.55)))
    cv2.ellipse(rgb, centre, inner, 0, 0, 360, tuple(float(v) for v in _colour(rng) * 0.8),
                -1)
    rgb *= (1 + 0.15 * _noise(rng, h, w, 3.0))[..., None]
    return rgb, alpha


def _rock(rng, h: int, w: int):
    """Draw a rock or lump: an irregular polygon with a mottled texture."""
    n = int(rng.integers(6, 11))
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = rng.uniform(0.7, 1.0, n)
    pts = np.stack([w / 2 + rad * np.cos(ang) * w / 2, h / 2 + rad * np.sin(ang) * h / 2], 1)
    alpha = np.zeros((h, w), np.float32)
    cv2.fillPoly(alpha, [np.round(pts).astype(np.int32)], 1.0)
    grey = rng.uniform(60, 200)
    tint = np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.7, 1.0)], np.float32)
    rgb = np.ones((h, w, 3), np.float32) * grey * tint
    shade = np.linspace(1.15, 0.75, h, dtype=np.float32)[:, None]
    rgb *= (shade * (1 + 0.25 * _noise(rng, h, w, 2.5)))[..., None]
    return rgb, alpha


def _bag(rng, h: int, w: int):
    """Draw a bag or sack: a rounded blob of one colour with soft folds."""
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, int(h * 0.6)), (max(1, w // 2), max(1, int(h * 0.4))), 0,
                0, 360, 1.0, -1)
    cv2.ellipse(alpha, (w // 2, int(h * 0.3)), (max(1, int(w * 0.3)), max(1, int(h * 0.3))),
                0, 0, 360, 1.0, -1)
    rgb = np.ones((h, w, 3), np.float32) * _colour(rng)
    rgb *= (1 + 0.2 * _noise(rng, h, w, 4.0))[..., None]
    return rgb, alpha


_MAKERS = {'box': _box, 'tyre': _tyre, 'rock': _rock, 'bag': _bag}
_ASPECT = {'box': (0.8, 2.0), 'tyre': (0.6, 1.6), 'rock': (1.0, 2.0), 'bag': (0.7, 1.3)}


def procedural_object(kind: str, rng, height_px: int = 96) -> CocoObject:
    """Draw one procedural object of ``kind`` (see PROCEDURAL_KINDS) at ``height_px``."""
    if kind not in _MAKERS:
        raise OodSegError(f'unknown procedural object {kind!r}; known: '
                          f'{", ".join(PROCEDURAL_KINDS)}')
    lo, hi = _ASPECT[kind]
    h = int(height_px)
    w = max(2, int(round(h * rng.uniform(lo, hi))))
    rgb, alpha = _MAKERS[kind](rng, h, w)
    return CocoObject(rgb=np.clip(rgb, 0, 255).astype(np.uint8), alpha=alpha,
                      class_id=PROCEDURAL_CLASS_ID, image_id=f'procedural-{kind}')


def horizon_row(road: np.ndarray, margin: float) -> float:
    """Horizon row: ``margin`` x H above the farthest (topmost) road row."""
    rows = np.flatnonzero(road.any(1))
    return float(rows[0]) - margin * road.shape[0]


def match_to_background(obj_rgb: np.ndarray, alpha: np.ndarray, background: np.ndarray,
                        strength: float) -> np.ndarray:
    """
    Pull the object's mean colour and brightness toward the background's by ``strength``.

    Scene lighting: an object on a dark road under shade is darker than its cut-out. Means
    are taken over the object's alpha and over the background patch (float32 RGB).
    """
    w = alpha[..., None]
    obj_mean = (obj_rgb * w).sum((0, 1)) / max(float(w.sum()), 1e-6)
    bg_mean = background.reshape(-1, 3).mean(0)
    gain = (bg_mean + 1.0) / (obj_mean + 1.0)
    return obj_rgb * (1.0 + strength * (gain - 1.0))


def contact_shadow(frame: np.ndarray, x0: int, x1: int, y_bottom: int, depth: float) -> None:
    """Darken an elliptic soft shadow under an object's base, in place (float32 RGB)."""
    h, w = frame.shape[:2]
    half = max(1, (x1 - x0) * 0.6)
    tall = max(1.0, (x1 - x0) * 0.12)
    cx = (x0 + x1) / 2.0
    # Only the ellipse's bounding box changes (the shade is 1 outside the ellipse).
    ya, yb = max(0, int(np.floor(y_bottom - tall))), min(h, int(np.ceil(y_bottom + tall)) + 1)
    xa, xb = max(0, int(np.floor(cx - half))), min(w, int(np.ceil(cx + half)) + 1)
    if ya >= yb or xa >= xb:
        return
    ys, xs = np.ogrid[ya:yb, xa:xb]
    d = ((xs - cx) / half) ** 2 + ((ys - y_bottom) / tall) ** 2
    shade = 1.0 - depth * np.clip(1.0 - d, 0.0, 1.0)
    frame[ya:yb, xa:xb] *= shade[..., None].astype(np.float32)


def place_on_road(rgb: np.ndarray, label: np.ndarray, road_ids: Sequence[int], objects,
                  rng, n_objects=(1, 3), procedural_fraction: float = 0.5,
                  geometry: RoadGeometry = RoadGeometry(), feather_px=(1.0, 3.0),
                  void: int = 255):
    """
    Place objects on the road of one frame; return (rgb uint8, ood_label, semantic, boxes).

    ``label`` holds class ids (``void`` = unlabelled); pixels of ``road_ids`` are road.
    Each object is a COCO cut-out from ``objects`` or, with ``procedural_fraction``, a
    procedural one; its size follows the perspective rule of the module docstring. A frame
    without road gets no object (its OoD label is all in-distribution). ``ood_label``:
    1 where the object's alpha >= 0.5, 0 elsewhere, ``void`` where ``label`` is void.
    ``semantic``: ``label`` with the object pixels set to ``void``.
    """
    rgb, label = frame_and_label(rgb, label)
    if not 0.0 <= procedural_fraction <= 1.0:
        raise OodSegError(f'procedural_fraction must lie in [0, 1], got {procedural_fraction}')
    if procedural_fraction < 1.0 and not objects:
        raise OodSegError('no COCO objects to place (empty object list)')
    height, width = label.shape
    road = np.isin(label, list(road_ids))
    out = rgb.astype(np.float32)
    union = np.zeros((height, width), np.float32)
    boxes = []
    if road.any():
        y_h = horizon_row(road, geometry.horizon_margin)
        rows = np.flatnonzero(road.any(1))
        n = int(rng.integers(int(n_objects[0]), int(n_objects[1]) + 1))
        for _ in range(n):
            y = int(rng.choice(rows))
            xs = np.flatnonzero(road[y])
            x = int(rng.choice(xs))
            metres = rng.uniform(*geometry.object_height)
            h_px = int(round(metres * (y - y_h) / geometry.camera_height))
            if h_px < geometry.min_height_px:
                continue
            if rng.random() < procedural_fraction:
                kind = PROCEDURAL_KINDS[int(rng.integers(len(PROCEDURAL_KINDS)))]
                obj = procedural_object(kind, rng, h_px)
            else:
                obj = objects[int(rng.integers(len(objects)))]
            boxes.append(_blend_one(out, union, obj, x, y, h_px, rng, feather_px))
    pasted = union >= 0.5
    ood_label = np.where(label == void, void, 0).astype(np.uint8)
    ood_label[pasted] = 1
    semantic = label.astype(np.uint8, copy=True)
    semantic[pasted] = void
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), ood_label, semantic, boxes


def _blend_one(out, union, obj: CocoObject, x: int, y: int, h_px: int, rng, feather_px):
    """Resize ``obj`` to ``h_px`` tall, stand it at (x, y) bottom-centre, blend into ``out``."""
    height, width = union.shape
    h0, w0 = obj.alpha.shape
    scale = h_px / h0
    w_px = max(1, int(round(w0 * scale)))
    w_px = min(w_px, width)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    o_rgb = cv2.resize(obj.rgb, (w_px, h_px), interpolation=interp).astype(np.float32)
    o_a = np.clip(cv2.resize(obj.alpha.astype(np.float32), (w_px, h_px),
                             interpolation=interp), 0, 1)
    if rng.random() < 0.5:
        o_rgb, o_a = o_rgb[:, ::-1], o_a[:, ::-1]
    top, left = y - h_px + 1, x - w_px // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h_px, height), min(left + w_px, width)
    if y1 <= y0 or x1 <= x0:
        return None
    a = o_a[y0 - top:y1 - top, x0 - left:x1 - left]
    src = o_rgb[y0 - top:y1 - top, x0 - left:x1 - left]
    feather = rng.uniform(*feather_px) * min(1.0, h_px / 32.0)
    if feather > 0.3:
        a = np.clip(cv2.GaussianBlur(np.ascontiguousarray(a), (0, 0), feather), 0, 1)
    patch = out[max(0, y0 - h_px // 2):y1, max(0, x0 - w_px // 2):min(width, x1 + w_px // 2)]
    src = match_to_background(src, a, patch, rng.uniform(0.3, 0.7))
    contact_shadow(out, x0, x1, y1 - 1, rng.uniform(0.2, 0.5))
    dst = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = a[..., None] * src + (1.0 - a[..., None]) * dst
    union[y0:y1, x0:x1] = 1.0 - (1.0 - union[y0:y1, x0:x1]) * (1.0 - a)
    return {'kind': obj.image_id if obj.class_id == PROCEDURAL_CLASS_ID else obj.class_name,
            'x0': int(x0), 'y0': int(y0), 'x1': int(x1), 'y1': int(y1), 'height_px': h_px,
            'anchor': [int(x), int(y)]}
