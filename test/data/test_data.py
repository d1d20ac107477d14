"""Tests of CamVid loading and COCO object groups (real files where present, tiny fakes)."""

import os
from pathlib import Path

import cv2
from matplotlib.path import Path as MplPath
import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.data import camvid, coco_objects
import pytest
from repo_paths import CAMVID, COCO


@pytest.fixture
def camvid_root():
    if not (CAMVID / 'val' / 'images').is_dir():
        pytest.skip(f'shared CamVid data not found at ../shared/data/camvid ({CAMVID})')
    return CAMVID


@pytest.fixture(scope='module')
def coco_root():
    if not (COCO / 'images').is_dir():
        pytest.skip(f'shared coco128-seg data not found at ../shared/data/coco128_seg ({COCO})')
    return COCO


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _fake_camvid(root: Path, split='train', n=3, h=12, w=16) -> list:
    """Write n frames with known content; return [(name, rgb, file label)]."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        name = f'seq_{i:03d}'
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, 12, (h, w), dtype=np.uint8)  # 11 = void
        _write(root / split / 'images' / f'{name}.png', rgb[..., ::-1])  # lossless, BGR
        _write(root / split / 'labels' / f'{name}.png', label)
        out.append((name, rgb, label))
    return out


# --------------------------------------------------------------------------- CamVid, real


def test_class_table():
    assert camvid.CAMVID_CLASSES == (
        'Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car',
        'Pedestrian', 'Bicyclist')
    assert camvid.VOID == 255


@pytest.mark.data
def test_real_split_counts(camvid_root):
    counts = {s: len(camvid.list_pairs(camvid_root, s)) for s in ('train', 'val', 'test')}
    assert counts == {'train': 367, 'val': 101, 'test': 233}
    pairs = camvid.list_pairs(camvid_root, 'val')
    names = [img.stem for img, _ in pairs]
    assert names == sorted(os.path.splitext(f)[0]
                           for f in os.listdir(camvid_root / 'val' / 'images'))
    assert all(img.stem == lab.stem for img, lab in pairs)


@pytest.mark.data
def test_real_frames_load(camvid_root):
    ds = camvid.CamVidDataset(camvid_root, 'val')
    assert len(ds) == 101
    for i in (0, 50, 100):
        rgb, label, name = ds[i]
        assert name == ds.names[i]
        assert rgb.shape == (360, 480, 3) and rgb.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.uint8
        ref_bgr = cv2.imread(str(camvid_root / 'val' / 'images' / f'{name}.jpg'))
        np.testing.assert_array_equal(rgb, ref_bgr[..., ::-1])
        raw = cv2.imread(str(camvid_root / 'val' / 'labels' / f'{name}.png'),
                         cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(label == 255, raw == 11)
        np.testing.assert_array_equal(label[raw != 11], raw[raw != 11])
        assert set(np.unique(label).tolist()) <= set(range(11)) | {255}
    # road is the usual dominant class of a driving frame
    assert np.bincount(ds[0][1][ds[0][1] < 11], minlength=11).argmax() in (1, 3)


# --------------------------------------------------------------------------- CamVid, fakes


def test_fake_split_load_and_stack(tmp_path):
    frames = _fake_camvid(tmp_path, 'train', n=3)
    _fake_camvid(tmp_path, 'val', n=2)
    images, labels, names = camvid.load_split(tmp_path, ['train', 'val'])
    assert images.shape == (5, 12, 16, 3) and labels.shape == (5, 12, 16)
    assert names[:3] == [f[0] for f in frames]
    for i, (name, rgb, file_label) in enumerate(frames):
        np.testing.assert_array_equal(images[i], rgb)
        expected = file_label.copy()
        expected[expected == 11] = 255
        np.testing.assert_array_equal(labels[i], expected)
    rgb, label = camvid.load_pair(tmp_path / 'train' / 'images' / 'seq_001.png',
                                  tmp_path / 'train' / 'labels' / 'seq_001.png')
    np.testing.assert_array_equal(rgb, frames[1][1])


def test_missing_split_folder(tmp_path):
    _fake_camvid(tmp_path, 'train', n=1)
    with pytest.raises(OodSegError, match='val'):
        camvid.list_pairs(tmp_path, 'val')
    (tmp_path / 'train' / 'labels' / 'seq_000.png').unlink()
    (tmp_path / 'train' / 'labels').rmdir()
    with pytest.raises(OodSegError, match='labels'):
        camvid.CamVidDataset(tmp_path, 'train')


def test_image_without_label(tmp_path):
    _fake_camvid(tmp_path, n=2)
    (tmp_path / 'train' / 'labels' / 'seq_001.png').unlink()
    with pytest.raises(OodSegError, match='seq_001'):
        camvid.list_pairs(tmp_path, 'train')


def test_label_without_image(tmp_path):
    _fake_camvid(tmp_path, n=2)
    (tmp_path / 'train' / 'images' / 'seq_000.png').unlink()
    with pytest.raises(OodSegError, match='seq_000'):
        camvid.load_split(tmp_path, ['train'])


def test_corrupt_and_empty_image(tmp_path):
    _fake_camvid(tmp_path, n=2)
    (tmp_path / 'train' / 'images' / 'seq_001.png').write_bytes(b'not a png at all')
    ds = camvid.CamVidDataset(tmp_path, 'train')
    ds[0]
    with pytest.raises(OodSegError, match='seq_001.png'):
        ds[1]
    (tmp_path / 'train' / 'images' / 'seq_001.png').write_bytes(b'')
    with pytest.raises(OodSegError, match='seq_001.png'):
        camvid.load_split(tmp_path, ['train'])


def test_label_values_out_of_range(tmp_path):
    _fake_camvid(tmp_path, n=2)
    bad = np.full((12, 16), 3, np.uint8)
    bad[0, 0] = 12
    _write(tmp_path / 'train' / 'labels' / 'seq_001.png', bad)
    with pytest.raises(OodSegError, match=r'seq_001\.png.*12'):
        camvid.CamVidDataset(tmp_path, 'train')[1]
    # a colour label (RGB-coded) is refused too
    _write(tmp_path / 'train' / 'labels' / 'seq_000.png',
           np.dstack([bad, bad * 0, bad * 0 + 1]))
    with pytest.raises(OodSegError, match='seq_000.png'):
        camvid.CamVidDataset(tmp_path, 'train')[0]


def test_size_mismatch(tmp_path):
    _fake_camvid(tmp_path, n=2)
    _write(tmp_path / 'train' / 'labels' / 'seq_001.png', np.zeros((12, 15), np.uint8))
    with pytest.raises(OodSegError, match='seq_001'):
        camvid.CamVidDataset(tmp_path, 'train')[1]
    # frames of different sizes cannot be stacked
    _write(tmp_path / 'train' / 'images' / 'seq_001.png', np.zeros((12, 15, 3), np.uint8))
    with pytest.raises(OodSegError, match='seq_001'):
        camvid.load_split(tmp_path, ['train'])


# --------------------------------------------------------------------------- COCO, real


def _polygon_pixel_count(vertices: np.ndarray, w: int, h: int) -> int:
    """Count pixel centres inside a normalised polygon (matplotlib, nonzero winding)."""
    v = vertices * [w, h]
    x0, y0 = np.floor(v.min(0)).astype(int)
    x1, y1 = np.ceil(v.max(0)).astype(int)
    gx, gy = np.meshgrid(np.arange(x0, x1 + 1.0), np.arange(y0, y1 + 1.0))
    return int(MplPath(v).contains_points(np.c_[gx.ravel(), gy.ravel()]).sum())


@pytest.fixture(scope='module')
def real_groups(coco_root):
    excluded = camvid.CamVid(Path('.')).coco_excluded()
    return {g: coco_objects.load_objects(coco_root, g, excluded=excluded) for g in 'abc'}


def test_coco_class_table():
    assert len(coco_objects.COCO_CLASSES) == 80
    # the CamVid kind leaves out the same categories as the table it replaced
    excluded = camvid.CamVid(Path('.')).coco_excluded()
    names = {i: coco_objects.COCO_CLASSES[i] for i in excluded}
    assert names == {0: 'person', 1: 'bicycle', 2: 'car', 3: 'motorcycle', 5: 'bus',
                     6: 'train', 7: 'truck', 9: 'traffic light', 11: 'stop sign'}
    assert coco_objects.COCO_CLASSES[14] == 'bird' and coco_objects.COCO_CLASSES[79] == \
        'toothbrush'


@pytest.mark.data
def test_image_groups_rule(coco_root):
    groups = coco_objects.image_groups(coco_root)
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(coco_root / 'images'))
    assert len(ids) == 128
    assert {k: len(v) for k, v in groups.items()} == {'a': 64, 'b': 32, 'c': 32}
    assert sorted(groups['a'] + groups['b'] + groups['c']) == ids
    for i, image_id in enumerate(ids):
        expected = 'b' if i % 4 == 1 else 'c' if i % 4 == 3 else 'a'
        assert image_id in groups[expected]


@pytest.mark.data
def test_groups_disjoint_and_cover(coco_root, real_groups):
    keys = {g: {o.key for o in objs} for g, objs in real_groups.items()}
    assert not keys['a'] & keys['b'] and not keys['a'] & keys['c']
    assert not keys['b'] & keys['c']
    image_sets = {g: {o.image_id for o in objs} for g, objs in real_groups.items()}
    assert not image_sets['a'] & image_sets['b'] and not image_sets['b'] & image_sets['c']
    assert not image_sets['a'] & image_sets['c']
    union = keys['a'] | keys['b'] | keys['c']
    # independent reference: parse the label files here and count the pixel centres inside
    # each polygon (fillPoly also fills boundary pixels: up to ~20 % more, never less)
    sure_in, sure_out = set(), set()
    for txt in sorted((coco_root / 'labels').glob('*.txt')):
        img_path = coco_root / 'images' / f'{txt.stem}.jpg'
        if not img_path.is_file():
            continue
        h, w = cv2.imread(str(img_path)).shape[:2]
        for line, text in enumerate(txt.read_text().splitlines()):
            fields = text.split()
            cls = int(fields[0])
            key = f'{txt.stem}:{line}'
            if cls in (0, 1, 2, 3, 5, 6, 7, 9, 11):
                sure_out.add(key)
                continue
            area = _polygon_pixel_count(np.array(fields[1:], float).reshape(-1, 2), w, h)
            if area < 900 / 1.3:
                sure_out.add(key)
            elif area > 1.05 * 900:
                sure_in.add(key)
    assert len(sure_in) > 300
    assert sure_in <= union
    assert not union & sure_out
    assert all(len(keys[g]) > 60 for g in 'abc')


@pytest.mark.data
def test_real_objects_are_valid(real_groups):
    for objs in real_groups.values():
        for o in objs:
            assert o.class_id not in camvid.CamVid(Path('.')).coco_excluded()
            assert o.rgb.dtype == np.uint8 and o.alpha.dtype == np.float32
            assert o.rgb.shape == o.alpha.shape + (3,)
            assert set(np.unique(o.alpha).tolist()) <= {0.0, 1.0}
            assert o.alpha.sum() >= coco_objects.MIN_AREA_PX
            # tight crop: the mask touches all four sides
            assert o.alpha[0].any() and o.alpha[-1].any()
            assert o.alpha[:, 0].any() and o.alpha[:, -1].any()


# --------------------------------------------------------------------------- COCO, fakes


def _fake_coco(root: Path, lines: dict, size=(80, 100)) -> None:
    h, w = size
    for image_id, text in lines.items():
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 2] = 200  # red in BGR
        img[:, :50, 1] = 90
        _write(root / 'images' / f'{image_id}.jpg', img)
        (root / 'labels').mkdir(parents=True, exist_ok=True)
        (root / 'labels' / f'{image_id}.txt').write_text(text)


def test_fake_coco_masks_and_filters(tmp_path):
    # rectangle x 10..49, y 10..39 (in px of a 100 x 80 image): fillPoly includes the
    # border, so its mask has 40 * 30 = 1200 px
    rect = '0.10 0.125 0.49 0.125 0.49 0.4875 0.10 0.4875'
    lines = {
        '0001': f'14 {rect}\n2 {rect}\n15 0.7 0.7 0.75 0.7 0.75 0.75\n',
        '0002': f'16 {rect}\n',
        '0003': f'17 {rect}\n',
        '0004': f'18 {rect}\n',
    }
    _fake_coco(tmp_path, lines)
    excluded = camvid.CamVid(Path('.')).coco_excluded()
    objs = coco_objects.load_objects(tmp_path, 'all', min_area=1000, excluded=excluded)
    # car (2) excluded, the tiny bird-sized triangle is below min_area
    assert [(o.image_id, o.line, o.class_id) for o in objs] == [
        ('0001', 0, 14), ('0002', 0, 16), ('0003', 0, 17), ('0004', 0, 18)]
    assert objs[0].alpha.shape == (30, 40) and objs[0].alpha.sum() == 1200
    assert objs[0].class_name == 'bird'
    # crop comes from the right place: x 10..49 straddles the green edge at x = 50
    assert abs(int(objs[0].rgb[15, 20, 1]) - 90) < 12
    groups = {g: [o.image_id for o in coco_objects.load_objects(tmp_path, g, 1000, excluded)]
              for g in 'abc'}
    assert groups == {'a': ['0001', '0003'], 'b': ['0002'], 'c': ['0004']}
    assert coco_objects.load_objects(tmp_path, 'all', min_area=1201) == []


@pytest.mark.parametrize('text,pattern', [
    ('14 0.1 0.1 0.5 0.1 0.5\n', 'coordinates'),
    ('99 0.1 0.1 0.5 0.1 0.5 0.5\n', 'class 99'),
    ('14 0.1 zz 0.5 0.1 0.5 0.5\n', 'non-numeric'),
    ('14 0.1 0.1 1.5 0.1 0.5 0.5\n', 'outside'),
])
def test_bad_coco_label(tmp_path, text, pattern):
    _fake_coco(tmp_path, {'0042': text})
    with pytest.raises(OodSegError, match=pattern) as info:
        coco_objects.load_objects(tmp_path, 'all')
    assert '0042.txt' in str(info.value)


def test_bad_coco_folders_and_images(tmp_path):
    with pytest.raises(OodSegError, match='images'):
        coco_objects.load_objects(tmp_path, 'a')
    _fake_coco(tmp_path, {'0007': '14 0.1 0.1 0.9 0.1 0.9 0.9\n'})
    with pytest.raises(OodSegError, match='group'):
        coco_objects.load_objects(tmp_path, 'd')
    (tmp_path / 'images' / '0007.jpg').write_bytes(b'\xff\xd8 truncated')
    with pytest.raises(OodSegError, match='0007.jpg'):
        coco_objects.load_objects(tmp_path, 'all')
