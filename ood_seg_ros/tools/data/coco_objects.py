"""
COCO object cut-outs from coco128-seg, split into disjoint groups for OoD composition.

Source layout: ``<coco_root>/images/<id>.jpg`` and ``<coco_root>/labels/<id>.txt`` with one
object per line, ``class_id x1 y1 x2 y2 ...`` (polygon vertices normalised to [0, 1], YOLO
segmentation format). Images without a label file hold no objects; label files without an
image are ignored (coco128-seg has two of each).

Objects of a COCO category that is one of the dataset's classes are never used (as
meta-ood leaves them out for Cityscapes): ``COCO_TO_CLASSES`` maps a category to the class
names it is, a dataset kind adds its own names (``coco_same``; a folder dataset's
``classes.yaml`` ``coco`` key) and a user file more (``--coco-map``); see
:func:`excluded_categories`. An object counts
only when its rasterised mask (``cv2.fillPoly``) covers at least ``MIN_AREA_PX`` source pixels,
so small fragments and far-away objects do not become OoD samples.

Groups (disjoint by source image, deterministic): sort the ids of all image files; the image at
sorted index ``i`` belongs to

- group ``a`` (OoD training proxy, ~50 %) when ``i % 4`` is 0 or 2,
- group ``b`` (validation objects, ~25 %) when ``i % 4 == 1``,
- group ``c`` (test objects, ~25 %) when ``i % 4 == 3``.

The interleaving spreads every part of the id range (and so varied content) over all groups.
Measured on coco128-seg (128 images, 941 polygons, ``MIN_AREA_PX = 900``, the categories
the ``camvid`` kind excludes): 360 usable objects;
group a 64 images (48 with usable objects) / 166 objects, group b 32 images (26) / 109 objects,
group c 32 images (25) / 85 objects.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .images import read_rgb
from ...errors import OodSegError

COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
    'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack',
    'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball',
    'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
    'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
    'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
    'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush')

# COCO category -> dataset class names it is (compared case-insensitively, ' ' = '_');
# a category always matches a class of its own name. Extend with a kind's ``coco_same``,
# classes.yaml ``coco`` or ``--coco-map``.
COCO_TO_CLASSES = {
    'person': ('pedestrian', 'rider', 'human', 'people'),
    'bicycle': ('bike', 'bicyclist', 'cyclist', 'rider'),
    'car': ('vehicle', 'cars'),
    'motorcycle': ('motorbike', 'motorcyclist', 'rider', 'vehicle'),
    'bus': ('vehicle',),
    'train': ('vehicle', 'tram'),
    'truck': ('vehicle', 'lorry'),
    'traffic light': ('traffic signal',),
    'stop sign': ('traffic sign', 'sign'),
}


def _norm(name: str) -> str:
    return ' '.join(str(name).lower().replace('_', ' ').split())


def excluded_categories(class_names, extra=None) -> frozenset:
    """
    Return the COCO category ids that are one of ``class_names`` (never pasted as OoD).

    ``extra``: more ``{COCO category: [class names]}`` (a kind's ``coco_same``, a user's
    table); an unknown category is an error.
    """
    table = {c: {_norm(c), *map(_norm, COCO_TO_CLASSES.get(c, ()))} for c in COCO_CLASSES}
    for category, names in (extra or {}).items():
        if category not in table:
            raise OodSegError(f'COCO mapping: unknown COCO category {category!r}')
        table[category] |= {_norm(names)} if isinstance(names, str) else set(map(_norm, names))
    wanted = {_norm(n) for n in class_names}
    return frozenset(i for i, c in enumerate(COCO_CLASSES) if table[c] & wanted)


def read_coco_map(path) -> dict:
    """Read a user's ``{COCO category: [class names]}`` table from a YAML file."""
    import yaml
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise OodSegError(f'cannot read COCO mapping {path}: {str(exc).splitlines()[0]}') \
            from None
    if not isinstance(doc, dict) or not all(
            isinstance(v, (str, list)) for v in doc.values()):
        raise OodSegError(f'COCO mapping {path}: expected {{COCO category: [class names]}}')
    return doc


GROUPS = {
    'a': 'OoD training proxy',
    'b': 'validation objects',
    'c': 'test objects',
}
MIN_AREA_PX = 900


@dataclass(frozen=True)
class CocoObject:
    """
    One object cut-out: rgb crop uint8 (h, w, 3), alpha float32 (h, w) in [0, 1].

    ``class_id`` is the COCO class (0..79), ``image_id`` the source image's file stem and
    ``line`` the 0-based line of the polygon in the label file (``(image_id, line)`` is unique).
    """

    rgb: np.ndarray
    alpha: np.ndarray
    class_id: int
    image_id: str
    line: int = -1

    @property
    def class_name(self) -> str:
        """Return the COCO class name."""
        return COCO_CLASSES[self.class_id]

    @property
    def key(self) -> str:
        """Return a unique id ``<image_id>:<line>``."""
        return f'{self.image_id}:{self.line}'


def group_of_index(index: int) -> str:
    """Return the group ('a', 'b' or 'c') of the image at sorted position ``index``."""
    return {0: 'a', 1: 'b', 2: 'a', 3: 'c'}[index % 4]


def _folders(coco_root) -> tuple:
    root = Path(coco_root)
    img_dir, lab_dir = root / 'images', root / 'labels'
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise OodSegError(f'COCO folder {d} does not exist '
                              f'(expected <coco_root>/images and <coco_root>/labels)')
    return img_dir, lab_dir


def list_image_ids(coco_root) -> list:
    """Return the sorted ids (file stems) of all images in ``<coco_root>/images``."""
    img_dir, _ = _folders(coco_root)
    ids = sorted(p.stem for p in img_dir.iterdir()
                 if p.is_file() and p.suffix.lower() in ('.jpg', '.jpeg', '.png'))
    if not ids:
        raise OodSegError(f'COCO folder {img_dir} holds no images')
    return ids


def image_groups(coco_root) -> dict:
    """Return {group: sorted image ids} for groups 'a', 'b', 'c' (rule in the module doc)."""
    out = {g: [] for g in GROUPS}
    for i, image_id in enumerate(list_image_ids(coco_root)):
        out[group_of_index(i)].append(image_id)
    return out


def parse_label_file(path) -> list:
    """Parse a YOLO polygon file: list of (class_id, vertices float64 (K, 2) normalised)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OodSegError(f'cannot read COCO label file {path}: {exc}') from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            class_id = int(fields[0])
            coords = np.array([float(v) for v in fields[1:]], np.float64)
        except ValueError:
            raise OodSegError(f'COCO label file {path} line {n}: non-numeric value') from None
        if not 0 <= class_id < len(COCO_CLASSES):
            raise OodSegError(f'COCO label file {path} line {n}: class {class_id} outside 0..79')
        if coords.size < 6 or coords.size % 2:
            raise OodSegError(f'COCO label file {path} line {n}: expected class and at least 3 '
                              f'x y pairs, got {coords.size} coordinates')
        if not np.all(np.isfinite(coords)) or coords.min() < -0.01 or coords.max() > 1.01:
            raise OodSegError(f'COCO label file {path} line {n}: coordinates outside [0, 1]')
        out.append((class_id, coords.reshape(-1, 2)))
    return out


def polygon_mask(vertices: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rasterise normalised polygon vertices (K, 2) into a uint8 (height, width) 0/1 mask."""
    pts = np.round(vertices * np.array([width, height])).astype(np.int32)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [pts.reshape(-1, 1, 2)], 1)
    return mask


def objects_of_image(coco_root, image_id: str, min_area: int = MIN_AREA_PX,
                     excluded: frozenset = frozenset()) -> list:
    """Cut out the usable objects (category not ``excluded``, area >= min_area) of an image."""
    img_dir, lab_dir = _folders(coco_root)
    label_path = lab_dir / f'{image_id}.txt'
    if not label_path.is_file():
        return []
    polygons = parse_label_file(label_path)
    wanted = [(k, c, v) for k, (c, v) in enumerate(polygons) if c not in excluded]
    if not wanted:
        return []
    candidates = [p for p in img_dir.iterdir() if p.stem == image_id and p.is_file()]
    if not candidates:
        raise OodSegError(f'COCO image {image_id} not found in {img_dir}')
    rgb = read_rgb(sorted(candidates)[0])
    height, width = rgb.shape[:2]
    out = []
    for line, class_id, vertices in wanted:
        mask = polygon_mask(vertices, width, height)
        area = int(mask.sum())
        if area < min_area:
            continue
        x, y, w, h = cv2.boundingRect(mask)
        out.append(CocoObject(
            rgb=np.ascontiguousarray(rgb[y:y + h, x:x + w]),
            alpha=mask[y:y + h, x:x + w].astype(np.float32),
            class_id=int(class_id), image_id=image_id, line=int(line)))
    return out


def load_objects(coco_root, group: str, min_area: int = MIN_AREA_PX,
                 excluded: frozenset = frozenset()) -> list:
    """
    Load all usable objects of a group ('a', 'b', 'c' or 'all'), sorted by (image, line).

    ``excluded``: COCO category ids left out, those that are the dataset's classes
    (``dataset.coco_excluded()``, :func:`excluded_categories`).
    """
    if group == 'all':
        ids = list_image_ids(coco_root)
    elif group in GROUPS:
        ids = image_groups(coco_root)[group]
    else:
        raise OodSegError(f'unknown COCO object group {group!r}: use a (training proxy), '
                          f'b (validation), c (test) or all')
    return [obj for image_id in ids
            for obj in objects_of_image(coco_root, image_id, min_area, excluded)]
