"""Tiny labelled datasets written by the tests: a Cityscapes tree, a folder tree, an OoD set."""

from pathlib import Path

import cv2
import numpy as np

CITY_IDS = {'sky': 23, 'building': 11, 'road': 7, 'sidewalk': 8, 'car': 26,
            'unlabeled': 0, 'parking': 9}


def write_png(path: Path, img: np.ndarray) -> Path:
    """Write an image (RGB when 3 channels) losslessly, making the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3:
        img = img[..., ::-1]
    assert cv2.imwrite(str(path), img)
    return path


def street_scene(seed: int, h: int = 64, w: int = 128):
    """Return a synthetic street: (rgb, Cityscapes labelIds) with sky, building, road, car."""
    rng = np.random.default_rng(seed)
    ids = np.full((h, w), CITY_IDS['sky'], np.uint8)
    horizon = h // 3 + int(rng.integers(-3, 4))
    ids[horizon // 2:horizon] = CITY_IDS['building']
    ids[horizon:] = CITY_IDS['road']
    ids[horizon:horizon + 4, :w // 4] = CITY_IDS['sidewalk']
    x = int(rng.integers(0, w - 30))
    ids[horizon + 6:horizon + 18, x:x + 26] = CITY_IDS['car']
    ids[-2:, :] = CITY_IDS['unlabeled']           # ego vehicle edge: ignored
    ids[horizon + 20:horizon + 22, -10:] = CITY_IDS['parking']   # not a train class
    colours = {CITY_IDS['sky']: (70, 130, 180), CITY_IDS['building']: (70, 70, 70),
               CITY_IDS['road']: (128, 64, 128), CITY_IDS['sidewalk']: (244, 35, 232),
               CITY_IDS['car']: (0, 0, 142), CITY_IDS['unlabeled']: (0, 0, 0),
               CITY_IDS['parking']: (250, 170, 160)}
    rgb = np.zeros((h, w, 3), np.uint8)
    for i, c in colours.items():
        rgb[ids == i] = c
    noise = rng.integers(-12, 13, rgb.shape)
    return np.clip(rgb.astype(int) + noise, 0, 255).astype(np.uint8), ids


def make_cityscapes(root: Path, counts=None, h: int = 64, w: int = 128) -> dict:
    """Write leftImg8bit + gtFine labelIds; return {split: [(name, rgb, labelIds)]}."""
    counts = counts or {'train': 4, 'val': 2, 'test': 2}
    out, seed = {}, 0
    for split, n in counts.items():
        out[split] = []
        for i in range(n):
            city = 'aachen' if i % 2 == 0 else 'bremen'
            name = f'{city}_000000_{i:06d}'
            rgb, ids = street_scene(seed, h, w)
            seed += 1
            write_png(root / 'leftImg8bit' / split / city / f'{name}_leftImg8bit.png', rgb)
            write_png(root / 'gtFine' / split / city / f'{name}_gtFine_labelIds.png', ids)
            out[split].append((name, rgb, ids))
    return out


FOLDER_CLASSES = """\
names: [road, sidewalk, obstacle-free, sky]
ignore_index: 0
colours: [[128, 64, 128], [244, 35, 232], [10, 200, 10], [70, 130, 180]]
id_map: {10: 0, 20: 1, 30: 2, 40: 3}
"""


def make_folder(root: Path, counts=None, h: int = 32, w: int = 48,
                classes: str = FOLDER_CLASSES) -> dict:
    """Write images/<split>, labels/<split> (values 0, 10..40) and classes.yaml."""
    counts = counts or {'train': 2, 'val': 1}
    root.mkdir(parents=True, exist_ok=True)
    (root / 'classes.yaml').write_text(classes)
    rng = np.random.default_rng(7)
    out = {}
    for split, n in counts.items():
        out[split] = []
        for i in range(n):
            raw = rng.choice(np.array([0, 10, 20, 30, 40], np.uint8), (h, w))
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            write_png(root / 'images' / split / f'f{i:03d}.png', rgb)
            write_png(root / 'labels' / split / f'f{i:03d}.png', raw)
            out[split].append((f'f{i:03d}', rgb, raw))
    return out


def make_anomaly_set(root: Path, n: int = 4, h: int = 64, w: int = 128, seed: int = 100):
    """Write an OoD set (images/ + labels/ 0/1/255): street scenes with an odd object."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        rgb, ids = street_scene(seed + i, h, w)
        label = np.where(ids == CITY_IDS['unlabeled'], 255, 0).astype(np.uint8)
        y, x = int(rng.integers(h // 2, h - 16)), int(rng.integers(0, w - 20))
        rgb[y:y + 12, x:x + 18] = (255, 220, 0)
        rgb[y + 3:y + 9, x + 4:x + 14] = (20, 240, 60)
        label[y:y + 12, x:x + 18] = 1
        write_png(root / 'images' / f'o{i:03d}.png', rgb)
        write_png(root / 'labels' / f'o{i:03d}.png', label)
    return root
