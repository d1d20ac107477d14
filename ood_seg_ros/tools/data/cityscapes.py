"""
The ``cityscapes`` dataset kind: fine annotations, the 19 evaluation classes.

Layout (as distributed): ``leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<frame>_gtFine_labelIds.png`` (the 34 label ids, mapped to the 19
train ids by the official table of cityscapesScripts ``labels.py``; every other id is
ignored) or ``<frame>_gtFine_labelTrainIds.png`` (train ids 0..18 and 255, read as they
are; used when present). Frame names are ``<city>_<seq>_<frame>``.
"""

from pathlib import Path
from typing import Dict, List, Tuple

from .images import read_gray
from .labelled import ClassInfo, IGNORE, label_table, LabelledDataset
from ...errors import OodSegError

# (name, train id, RGB) of the 19 evaluation classes, in train-id order.
TRAIN_CLASSES = (
    ('road', (128, 64, 128)), ('sidewalk', (244, 35, 232)), ('building', (70, 70, 70)),
    ('wall', (102, 102, 156)), ('fence', (190, 153, 153)), ('pole', (153, 153, 153)),
    ('traffic light', (250, 170, 30)), ('traffic sign', (220, 220, 0)),
    ('vegetation', (107, 142, 35)), ('terrain', (152, 251, 152)), ('sky', (70, 130, 180)),
    ('person', (220, 20, 60)), ('rider', (255, 0, 0)), ('car', (0, 0, 142)),
    ('truck', (0, 0, 70)), ('bus', (0, 60, 100)), ('train', (0, 80, 100)),
    ('motorcycle', (0, 0, 230)), ('bicycle', (119, 11, 32)))
# label id -> train id of the official table (ids 0..33; absent ids are ignored: 255)
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                  23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
N_LABEL_IDS = 34
IMAGE_SUFFIX = '_leftImg8bit'
LABEL_IDS = '_gtFine_labelIds.png'
TRAIN_IDS = '_gtFine_labelTrainIds.png'


class Cityscapes(LabelledDataset):
    """``leftImg8bit/<split>/<city>/*`` + ``gtFine/<split>/<city>/*`` (labelIds or trainIds)."""

    kind = 'cityscapes'

    def _read_classes(self) -> ClassInfo:
        return ClassInfo(tuple(n for n, _ in TRAIN_CLASSES), IGNORE,
                         tuple(c for _, c in TRAIN_CLASSES))

    def _label_mapping(self) -> Dict[int, int]:
        """Label ids 0..33 through the official table (a trainIds file: see load_label)."""
        return {i: LABEL_TO_TRAIN.get(i, IGNORE) for i in range(N_LABEL_IDS)}

    def splits(self) -> List[str]:
        """Sub-folders of ``leftImg8bit/``."""
        base = self.root / 'leftImg8bit'
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def frame_name(self, image_path: Path) -> str:
        """``aachen_000000_000019`` of ``aachen_000000_000019_leftImg8bit.png``."""
        return image_path.stem.removesuffix(IMAGE_SUFFIX)

    def _find_pairs(self, split: str) -> List[Tuple[Path, Path]]:
        img_root, lab_root = self.root / 'leftImg8bit' / split, self.root / 'gtFine' / split
        if not img_root.is_dir():
            raise OodSegError(f'cityscapes dataset {self.root}: no folder {img_root} (expected '
                              f'leftImg8bit/<split>/<city>/*_leftImg8bit.png)')
        pairs = []
        for img in img_root.glob(f'*/*{IMAGE_SUFFIX}.*'):
            stem = self.frame_name(img)
            folder = lab_root / img.parent.name
            label = folder / f'{stem}{TRAIN_IDS}'
            if not label.is_file():
                label = folder / f'{stem}{LABEL_IDS}'
            if not label.is_file():
                raise OodSegError(f'image {img} has no label {stem}{LABEL_IDS} (or '
                                  f'{stem}{TRAIN_IDS}) in {folder}')
            pairs.append((img, label))
        return pairs

    def load_label(self, path):
        """Map labelIds through the table; read a labelTrainIds file as it is (0..18, 255)."""
        if str(path).endswith(TRAIN_IDS):
            n = len(TRAIN_CLASSES)
            return self._apply(label_table({**{i: i for i in range(n)}, IGNORE: IGNORE}, n),
                               read_gray(path), path)
        return super().load_label(path)
