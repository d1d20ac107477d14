"""
The contract of a labelled (in-distribution) dataset kind, and what every kind shares.

A kind (``camvid``, ``cityscapes``, ``folder``: see :mod:`ood_seg_ros.tools.data.datasets`) is a
:class:`LabelledDataset` subclass that says where a split's (image, label) files are and
which classes the labels hold; listing, checking and loading are shared here:

- a split lists its frames sorted by name, refuses an empty split and a split mixing image
  formats (e.g. ``.jpg`` and ``.png``: a sign of two sources in one folder);
- a label maps through the kind's table (file value -> train id 0..C-1, or ignore = 255
  in memory); a value outside the table is an error naming the file and the values;
- an image and its label must have one size.

Every error is an :class:`ood_seg_ros.errors.OodSegError` (one line, exit status 2).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .images import read_gray, read_rgb
from ...errors import OodSegError

IGNORE = 255    # ignored label value in memory (losses, metrics, the bundle's ignore_index)
_SAME_FORMAT = {'.jpeg': '.jpg'}


@dataclass(frozen=True)
class ClassInfo:
    """The classes of a dataset: names (train ids 0..C-1), ignore index, optional palette."""

    names: Tuple[str, ...]
    ignore_index: int = IGNORE
    palette: Optional[Tuple[Tuple[int, int, int], ...]] = None   # RGB per class

    def to_config(self) -> dict:
        """Return the bundle.json ``config`` fields: class_names, ignore_index, palette."""
        return {'class_names': list(self.names), 'ignore_index': int(self.ignore_index),
                'palette': [list(c) for c in self.palette] if self.palette else None}


def label_table(mapping: Dict[int, int], n_classes: int) -> np.ndarray:
    """Lookup table (256,) int16: file value -> train id, 255 ignore, -1 not allowed."""
    lut = np.full(256, -1, np.int16)
    for src, dst in mapping.items():
        if not 0 <= int(src) <= 255:
            raise OodSegError(f'label value {src} is outside 0..255 (8-bit label files)')
        if not (0 <= int(dst) < n_classes or int(dst) == IGNORE):
            raise OodSegError(f'label value {src} maps to {dst}, not a class id '
                              f'0..{n_classes - 1} or {IGNORE} (ignore)')
        lut[int(src)] = int(dst)
    return lut


def image_format(path: Path) -> str:
    """Return the format of an image file by its suffix (``.jpeg`` counts as ``.jpg``)."""
    suffix = path.suffix.lower()
    return _SAME_FORMAT.get(suffix, suffix)


class LabelledDataset:
    """
    One dataset folder of a kind: ``splits()``, ``list_pairs(split)``, ``load_split(...)``.

    A kind sets ``kind`` and implements ``_read_classes`` (its :class:`ClassInfo`),
    ``_label_mapping`` (file value -> train id), ``splits`` and ``_find_pairs``.
    """

    kind: str = ''
    coco_same: Dict[str, Tuple[str, ...]] = {}  # more COCO category -> class names

    def __init__(self, root):
        """Open ``root`` (checked: a folder); read the classes the kind defines."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise OodSegError(f'{self.kind} dataset folder {self.root} does not exist')
        self.classes = self._read_classes()
        self._lut = label_table(self._label_mapping(), len(self.classes.names))

    # -- what a kind defines ----------------------------------------------------------
    def _read_classes(self) -> ClassInfo:
        raise NotImplementedError

    def _label_mapping(self) -> Dict[int, int]:
        """File value -> train id (or 255); default: ids 0..C-1 and the ignore index."""
        n = len(self.classes.names)
        return {**{i: i for i in range(n)}, self.classes.ignore_index: IGNORE}

    def splits(self) -> List[str]:
        """Names of the splits present, sorted."""
        raise NotImplementedError

    def _find_pairs(self, split: str) -> List[Tuple[Path, Path]]:
        """(image, label) paths of a split (any order; checked by ``list_pairs``)."""
        raise NotImplementedError

    def frame_name(self, image_path: Path) -> str:
        """Name of a frame (reports, OoD sets built from it): the image stem by default."""
        return image_path.stem

    # -- shared -----------------------------------------------------------------------
    @property
    def identity(self) -> str:
        """``kind:folder name``: which data a bundle trained on (no machine path)."""
        return f'{self.kind}:{self.root.name}'

    def coco_excluded(self, extra=None) -> frozenset:
        """COCO category ids that are classes of this dataset (never pasted as OoD)."""
        from .coco_objects import excluded_categories
        table = {k: list(v) for k, v in self.coco_same.items()}
        for category, names in (extra or {}).items():
            table.setdefault(category, []).extend([names] if isinstance(names, str) else names)
        return excluded_categories(self.classes.names, table)

    def list_pairs(self, split: str) -> List[Tuple[Path, Path]]:
        """(image, label) paths of ``split``, sorted by frame name; empty or mixed refused."""
        pairs = sorted(self._find_pairs(split), key=lambda p: self.frame_name(p[0]))
        if not pairs:
            raise OodSegError(f'{self.kind} dataset {self.root}: split {split!r} holds no '
                              f'frames (splits found: {", ".join(self.splits()) or "none"})')
        formats = sorted({image_format(img) for img, _ in pairs})
        if len(formats) > 1:
            raise OodSegError(f'{self.kind} dataset {self.root}: split {split!r} mixes image '
                              f'formats {", ".join(formats)}; convert them to one format')
        return pairs

    def load_label(self, path) -> np.ndarray:
        """Load a label file as train ids uint8 (H, W), ignore = 255; bad values refused."""
        return self._apply(self._lut, read_gray(path), path)

    def _apply(self, lut: np.ndarray, raw: np.ndarray, path) -> np.ndarray:
        """Map raw file values through ``lut``; values it does not allow are an error."""
        out = lut[raw]
        if (out < 0).any():
            values = np.unique(raw[out < 0])[:5].tolist()
            allowed = np.flatnonzero(lut >= 0).tolist()
            raise OodSegError(f'label {path} has values {values} outside the class list of '
                              f'{self.kind} dataset {self.root.name} (allowed: '
                              f'{_ranges(allowed)})')
        return out.astype(np.uint8)

    def load_pair(self, image_path, label_path) -> Tuple[np.ndarray, np.ndarray]:
        """Load one frame: (rgb uint8 (H, W, 3), train ids uint8 (H, W), ignore 255)."""
        rgb = read_rgb(image_path)
        label = self.load_label(label_path)
        if rgb.shape[:2] != label.shape:
            raise OodSegError(f'image {image_path} is {rgb.shape[1]}x{rgb.shape[0]} but label '
                              f'{label_path} is {label.shape[1]}x{label.shape[0]} (WxH)')
        return rgb, label

    def load_split(self, splits: Sequence[str]) -> tuple:
        """Load whole splits: (images (N, H, W, 3), labels (N, H, W), names); one size."""
        if isinstance(splits, str):
            splits = [splits]
        return load_pairs(self, [p for s in splits for p in self.list_pairs(s)])

    def check_split(self, split: str, limit: int = 0) -> int:
        """
        Check ``split`` before anything is written; return the number of frames checked.

        Every label's values and every image's size (from its header, without decoding).
        """
        from ...imagecodec.image_headers import compressed_size
        pairs = self.list_pairs(split)[:limit or None]
        for img, lab in pairs:
            label = self.load_label(lab)
            try:
                size = compressed_size(Path(img).read_bytes())
            except OSError as exc:
                raise OodSegError(f'cannot read image {img}: {exc.strerror or exc}') from None
            w, h = size if size else read_rgb(img).shape[1::-1]
            if (h, w) != label.shape:
                raise OodSegError(f'image {img} is {w}x{h} but label {lab} is '
                                  f'{label.shape[1]}x{label.shape[0]} (WxH)')
        return len(pairs)


def load_pairs(dataset, pairs) -> tuple:
    """Load (image, label) pairs into arrays (N, H, W, 3), (N, H, W) and their names."""
    images = labels = None
    names = []
    for i, (img_path, lab_path) in enumerate(pairs):
        rgb, label = dataset.load_pair(img_path, lab_path)
        if images is None:
            images = np.empty((len(pairs),) + rgb.shape, np.uint8)
            labels = np.empty((len(pairs),) + label.shape, np.uint8)
        elif rgb.shape != images.shape[1:]:
            raise OodSegError(f'image {img_path} is {rgb.shape[1]}x{rgb.shape[0]}, other frames '
                              f'are {images.shape[2]}x{images.shape[1]} (WxH)')
        images[i], labels[i] = rgb, label
        names.append(dataset.frame_name(Path(img_path)))
    return images, labels, names


def _ranges(values: List[int]) -> str:
    """Write sorted values as ranges: [0, 1, 2, 5, 255] -> '0..2, 5, 255'."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f'{start}..{v}')
            start = None
    return ', '.join(out)
