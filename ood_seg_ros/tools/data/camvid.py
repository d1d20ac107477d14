"""
CamVid (SegNet 11-class version): file listing, checked loading, a torch-free dataset.

Layout: ``<root>/<split>/images/<name>.jpg|png`` and ``<root>/<split>/labels/<name>.png``
(8-bit class index per pixel, 0..10 the classes of ``CAMVID_CLASSES``, 11 void). Void is
remapped to ``VOID`` (255, the ignore value of losses and metrics) on load.
"""

from pathlib import Path

import numpy as np

from .images import IMAGE_SUFFIXES, read_gray, read_rgb
from .labelled import ClassInfo, IGNORE, LabelledDataset
from ...errors import OodSegError
from ...model.default_classes import CAMVID_CLASSES, CAMVID_PALETTE as PALETTE

NUM_CLASSES = len(CAMVID_CLASSES)
ROAD = CAMVID_CLASSES.index('Road')
FILE_VOID = 11  # void value in the label files
VOID = IGNORE  # void value in memory (ignore index)
SPLITS = ('train', 'val', 'test')


def _stems(folder: Path) -> dict:
    """Map name stem -> path for the image files in ``folder``."""
    out = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in out:
                raise OodSegError(f'two files named {p.stem} in {folder}: {out[p.stem].name}, '
                                  f'{p.name}')
            out[p.stem] = p
    return out


def list_pairs(root, split: str) -> list:
    """List (image_path, label_path) of a CamVid split, sorted by name (= time order)."""
    base = Path(root) / split
    img_dir, lab_dir = base / 'images', base / 'labels'
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise OodSegError(f'CamVid split folder {d} does not exist '
                              f'(expected <root>/<split>/images and <root>/<split>/labels)')
    images, labels = _stems(img_dir), _stems(lab_dir)
    for name in sorted(images):
        if name not in labels:
            raise OodSegError(f'image {images[name]} has no label {name}.png in {lab_dir}')
    for name in sorted(labels):
        if name not in images:
            raise OodSegError(f'label {labels[name]} has no image in {img_dir}')
    if not images:
        raise OodSegError(f'CamVid split folder {img_dir} holds no images')
    return [(images[n], labels[n]) for n in sorted(images)]


def load_label(label_path) -> np.ndarray:
    """Load a CamVid label as uint8 (H, W): classes 0..10, void (11 in the file) -> 255."""
    label = read_gray(label_path)
    bad = label > FILE_VOID
    if bad.any():
        values = np.unique(label[bad])[:5].tolist()
        raise OodSegError(f'label {label_path} has values {values} outside 0..10 and '
                          f'{FILE_VOID} (void)')
    label = label.copy()
    label[label == FILE_VOID] = VOID
    return label


def load_pair(image_path, label_path) -> tuple:
    """Load one frame: (rgb uint8 (H, W, 3), label uint8 (H, W) with void = 255)."""
    rgb = read_rgb(image_path)
    label = load_label(label_path)
    if rgb.shape[:2] != label.shape:
        raise OodSegError(f'image {image_path} is {rgb.shape[1]}x{rgb.shape[0]} but label '
                          f'{label_path} is {label.shape[1]}x{label.shape[0]} (WxH)')
    return rgb, label


def load_split(root, splits) -> tuple:
    """
    Load whole splits into memory: (images (N, H, W, 3), labels (N, H, W), names).

    All frames must share one size (CamVid: 480x360); ``splits`` is a list like
    ``['train', 'val']``; frames come split by split, each sorted by name.
    """
    return CamVid(root).load_split(splits)


class CamVid(LabelledDataset):
    """The ``camvid`` dataset kind: ``<root>/<split>/images`` + ``<root>/<split>/labels``."""

    kind = 'camvid'
    CLASSES = ClassInfo(CAMVID_CLASSES, VOID, PALETTE)
    # the SegNet classes merge vehicles into Car, motorbikes into Bicyclist, lights into signs
    coco_same = {'motorcycle': ('Bicyclist',), 'bus': ('Car',), 'train': ('Car',),
                 'truck': ('Car',), 'traffic light': ('SignSymbol',),
                 'stop sign': ('SignSymbol',)}

    def _read_classes(self) -> ClassInfo:
        return self.CLASSES

    def _label_mapping(self) -> dict:
        return {**{i: i for i in range(NUM_CLASSES)}, FILE_VOID: VOID}

    def splits(self) -> list:
        """Sub-folders of the root that hold ``images/``."""
        return sorted(p.name for p in self.root.iterdir() if (p / 'images').is_dir())

    def _find_pairs(self, split: str) -> list:
        return list_pairs(self.root, split)

    def load_label(self, path) -> np.ndarray:
        """Load a CamVid label: classes 0..10, void (11 in the file) -> 255."""
        return load_label(path)


class CamVidDataset:
    """A torch-free CamVid split: ``ds[i] -> (rgb uint8 (H, W, 3), label uint8 (H, W), name)``."""

    def __init__(self, root, split: str):
        """List the split's files (checked); frames are read lazily."""
        self.root = Path(root)
        self.split = split
        self.pairs = list_pairs(root, split)
        self.names = [img.stem for img, _ in self.pairs]

    def __len__(self) -> int:
        """Return the number of frames."""
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple:
        """Load frame ``index``: (rgb, label with void = 255, name)."""
        img_path, lab_path = self.pairs[index]
        rgb, label = load_pair(img_path, lab_path)
        return rgb, label, img_path.stem
