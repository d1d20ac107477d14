"""
The ``folder`` dataset kind: a plain folder of images and label PNGs with a class file.

Layout::

    <root>/classes.yaml
    <root>/images/<split>/<name>.jpg|png     (one format per split)
    <root>/labels/<split>/<name>.png         (8-bit, one value per pixel)

The splits are the sub-folders of ``images/`` (e.g. ``train``, ``val``, ``test``).
``classes.yaml``::

    names: [road, sidewalk, building, car, sky]   # class index 0..C-1 (at least two)
    ignore_index: 255            # optional (default 255): label value of ignored pixels
    colours: [[128, 64, 128], [244, 35, 232], [70, 70, 70], [0, 0, 142], [70, 130, 180]]
                                 # optional: RGB per class (overlays)
    id_map: {0: 255, 7: 0, 8: 1, 11: 2, 26: 3, 23: 4}
                                 # optional: label value in the files -> class index, or
                                 # 255 (ignored); without it the files hold the indices
    coco: {bench: [street furniture]}
                                 # optional: COCO categories that are one of these
                                 # classes (never pasted as OoD), added to the default
                                 # table of ood_seg_ros.tools.data.coco_objects

Without ``id_map`` the label files may hold 0..C-1 and ``ignore_index``; with it, only the
values it lists. Any other value is an error naming the file.
"""

from pathlib import Path
from typing import Dict, List, Tuple

import yaml

from .images import IMAGE_SUFFIXES
from .labelled import ClassInfo, IGNORE, LabelledDataset
from ...errors import OodSegError

CLASSES_FILE = 'classes.yaml'
KEYS = ('names', 'ignore_index', 'colours', 'id_map', 'coco')


def _int(value, what: str, lo: int = 0, hi: int = 255) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise OodSegError(f'{what} must be an integer {lo}..{hi}, got {value!r}')
    return value


def parse_classes(doc, source: str) -> Tuple[ClassInfo, Dict[int, int]]:
    """Check a classes.yaml document; return its ClassInfo and the label mapping."""
    if not isinstance(doc, dict):
        raise OodSegError(f'{source}: expected a mapping with {", ".join(KEYS)}')
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise OodSegError(f'{source}: unknown keys {unknown} (known: {", ".join(KEYS)})')
    names = doc.get('names')
    if (not isinstance(names, list) or len(names) < 2
            or not all(isinstance(n, str) and n.strip() for n in names)):
        raise OodSegError(f'{source}: names must be a list of at least two class names')
    if len(set(names)) != len(names):
        raise OodSegError(f'{source}: names must be distinct, got {names}')
    ignore = _int(doc.get('ignore_index', IGNORE), f'{source}: ignore_index')
    palette = doc.get('colours')
    if palette is not None:
        if not isinstance(palette, list) or len(palette) != len(names) or not all(
                isinstance(c, list) and len(c) == 3 for c in palette):
            raise OodSegError(f'{source}: colours must be {len(names)} [R, G, B] triples')
        palette = tuple(tuple(_int(v, f'{source}: colours value') for v in c)
                        for c in palette)
    id_map = doc.get('id_map')
    if id_map is None:
        if ignore < len(names):
            raise OodSegError(f'{source}: ignore_index {ignore} is a class index '
                              f'(0..{len(names) - 1}); give an id_map')
        mapping = {**{i: i for i in range(len(names))}, ignore: IGNORE}
    else:
        if not isinstance(id_map, dict) or not id_map:
            raise OodSegError(f'{source}: id_map must map label values to class indices')
        mapping = {_int(k, f'{source}: id_map key'): _int(v, f'{source}: id_map value')
                   for k, v in id_map.items()}
        mapping[ignore] = IGNORE
    return ClassInfo(tuple(names), IGNORE, palette), mapping


class FolderDataset(LabelledDataset):
    """``images/<split>/`` + ``labels/<split>/`` + ``classes.yaml``."""

    kind = 'folder'

    def _read_classes(self) -> ClassInfo:
        path = self.root / CLASSES_FILE
        if not path.is_file():
            raise OodSegError(f'folder dataset {self.root}: no {CLASSES_FILE} (class names, '
                              f'ignore_index, optional colours and id_map)')
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise OodSegError(f'{path}: not a readable YAML file: '
                              f'{str(exc).splitlines()[0]}') from None
        classes, self._mapping = parse_classes(doc, str(path))
        coco = doc.get('coco') or {}
        if not isinstance(coco, dict):
            raise OodSegError(f'{path}: coco must map COCO categories to class names')
        self.coco_same = coco
        return classes

    def _label_mapping(self) -> Dict[int, int]:
        return self._mapping

    def splits(self) -> List[str]:
        """Sub-folders of ``images/``."""
        base = self.root / 'images'
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def _find_pairs(self, split: str) -> List[Tuple[Path, Path]]:
        img_dir, lab_dir = self.root / 'images' / split, self.root / 'labels' / split
        if not img_dir.is_dir():
            raise OodSegError(f'folder dataset {self.root}: no split folder {img_dir} '
                              f'(splits found: {", ".join(self.splits()) or "none"})')
        pairs, seen = [], {}
        for img in img_dir.iterdir():
            if not (img.is_file() and img.suffix.lower() in IMAGE_SUFFIXES):
                continue
            if img.stem in seen:
                raise OodSegError(f'two images named {img.stem} in {img_dir}: '
                                  f'{seen[img.stem].name}, {img.name}')
            seen[img.stem] = img
            label = lab_dir / f'{img.stem}.png'
            if not label.is_file():
                raise OodSegError(f'image {img} has no label {label}')
            pairs.append((img, label))
        return pairs
