"""Tests of OoD composition (paste_objects, make_ood_set) and the OoD set reader."""

import json
from pathlib import Path

import cv2
import numpy as np
from ood_seg_ros import cli
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.data import camvid, coco_objects, ood_sets
from ood_seg_ros.tools.data.coco_objects import CocoObject
import pytest
from repo_paths import CAMVID, COCO, SHARED_DATA


GRAY = 100
RED = (255, 0, 0)


@pytest.fixture(scope='module')
def real_data():
    if not (CAMVID / 'val' / 'images').is_dir() or not (COCO / 'images').is_dir():
        pytest.skip(f'shared data (camvid, coco128_seg) not found in {SHARED_DATA}')
    return CAMVID, COCO


@pytest.fixture(scope='module')
def real_frame(real_data):
    rgb, label, name = camvid.CamVidDataset(real_data[0], 'val')[3]
    return rgb, label


@pytest.fixture(scope='module')
def real_objects(real_data):
    return coco_objects.load_objects(real_data[1], 'c',
                                     excluded=camvid.CamVid(Path('.')).coco_excluded())


def _disc_object(colour=RED, size=(24, 18), class_id=14, line=0) -> CocoObject:
    h, w = size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = colour
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, h // 2), (w // 2, h // 2), 0, 0, 360, 1.0, -1)
    return CocoObject(rgb, alpha, class_id, 'fake', line)


ROADS = ood_sets.road_ids(camvid.CAMVID_CLASSES)   # CamVid's road class, found by name


def _flat_frame(h=90, w=120, road=True):
    """Gray frame; label: sky top half, road (or building) bottom, a void block."""
    rgb = np.full((h, w, 3), GRAY, np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[h // 2:] = camvid.ROAD if road else 1
    label[h // 2 - 10:h // 2 + 10, :30] = camvid.VOID
    return rgb, label


# --------------------------------------------------------------------------- paste


@pytest.mark.data
def test_paste_is_deterministic(real_frame, real_objects):
    rgb, label = real_frame
    a = ood_sets.paste_objects(rgb, label, real_objects, np.random.default_rng(7))
    b = ood_sets.paste_objects(rgb, label, real_objects, np.random.default_rng(7))
    c = ood_sets.paste_objects(rgb, label, real_objects, np.random.default_rng(8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
    assert a[0].dtype == np.uint8 and a[0].shape == rgb.shape
    assert a[1].shape == label.shape and a[2].shape == label.shape


def test_pasted_pixels_labelled_on_flat_frame():
    """Hand-checkable: red objects on a gray frame, so the colour change gives the alpha."""
    rgb, label = _flat_frame()
    objects = [_disc_object(line=k) for k in range(3)]
    for seed in range(6):
        out, ood, sem = ood_sets.paste_objects(rgb, label, objects, np.random.default_rng(seed),
                                               n_objects=(2, 3), feather_px=1.5)
        # same-colour objects: R channel = GRAY + union_alpha * (255 - GRAY)
        alpha = (out[..., 0].astype(float) - GRAY) / (255 - GRAY)
        assert (ood == 1).sum() > 50
        assert np.all(alpha[ood == 1] >= 0.5 - 0.01)  # labelled 1 -> at least half object
        assert np.all(ood[alpha > 0.5 + 0.01] == 1)  # strongly changed -> labelled 1
        untouched = np.all(out == rgb, axis=2)
        assert untouched.sum() > 0.5 * untouched.size
        expected = np.where(label == 255, 255, 0)
        np.testing.assert_array_equal(ood[untouched], expected[untouched])
        np.testing.assert_array_equal(sem[untouched], label[untouched])
        # void stays 255 where not pasted; semantic is 255 exactly where pasted or void
        assert np.all(ood[(label == 255) & (ood != 1)] == 255)
        np.testing.assert_array_equal(sem, np.where(ood == 1, 255, label))
        assert set(np.unique(ood).tolist()) <= {0, 1, 255}
        # feathering: soft edge values exist
        assert ((alpha > 0.05) & (alpha < 0.95)).sum() > 0


@pytest.mark.data
def test_pasted_labels_match_alpha_on_real_frame(real_frame, real_objects):
    rgb, label = real_frame
    res = ood_sets.compose_ood_frame(rgb, label, real_objects, np.random.default_rng(3),
                                     n_objects=(3, 3), road_ids=ROADS)
    assert len(res.placements) == 3
    pasted = res.alpha >= 0.5
    assert pasted.sum() > 100
    np.testing.assert_array_equal(res.ood_label == 1, pasted)
    diff = np.abs(res.rgb.astype(int) - rgb.astype(int)).max(axis=2)
    assert np.all(res.ood_label[(diff > 60) & pasted] == 1)
    untouched = res.alpha == 0
    np.testing.assert_array_equal(res.rgb[untouched], rgb[untouched])
    np.testing.assert_array_equal(res.semantic[untouched], label[untouched])
    np.testing.assert_array_equal(res.ood_label[untouched],
                                  np.where(label == 255, 255, 0)[untouched])
    np.testing.assert_array_equal(res.semantic, np.where(res.ood_label == 1, 255, label))


def test_on_road_anchor_and_sizes():
    rgb, label = _flat_frame()
    objects = [_disc_object()]
    for seed in range(10):
        res = ood_sets.compose_ood_frame(rgb, label, objects, np.random.default_rng(seed),
                                         n_objects=(1, 2), on_road_fraction=1.0,
                                         height_frac=(0.2, 0.3), road_ids=ROADS)
        for p in res.placements:
            assert p.on_road
            ax, ay = p.anchor
            assert label[ay, ax] == camvid.ROAD
            assert p.y1 - 1 == ay  # bottom row of the object on the road pixel
            assert 0.2 * 90 - 1 <= p.height_px <= 0.3 * 90 + 1
    # without road in the frame: placed anywhere, fully inside
    rgb, label = _flat_frame(road=False)
    for seed in range(10):
        res = ood_sets.compose_ood_frame(rgb, label, objects, np.random.default_rng(seed),
                                         n_objects=(1, 1), on_road_fraction=1.0,
                                         height_frac=(0.2, 0.3), road_ids=ROADS)
        p = res.placements[0]
        assert not p.on_road and p.anchor is None
        assert p.y1 - p.y0 == p.height_px and 0 <= p.x0 < p.x1 <= 120


def test_random_flip_matches_image():
    rgb, label = _flat_frame()
    obj_rgb = np.zeros((20, 20, 3), np.uint8)
    obj_rgb[:, :10] = (255, 0, 0)
    obj_rgb[:, 10:] = (0, 0, 255)
    obj = CocoObject(obj_rgb, np.ones((20, 20), np.float32), 14, 'fake', 0)
    seen = set()
    for seed in range(12):
        res = ood_sets.compose_ood_frame(rgb, label, [obj], np.random.default_rng(seed),
                                         n_objects=(1, 1), height_frac=(0.3, 0.3),
                                         feather_px=0)
        red_x = np.nonzero((res.rgb[..., 0] > 200) & (res.rgb[..., 2] < 50))[1].mean()
        blue_x = np.nonzero((res.rgb[..., 2] > 200) & (res.rgb[..., 0] < 50))[1].mean()
        flipped = res.placements[0].flipped
        assert (red_x > blue_x) == flipped
        seen.add(flipped)
    assert seen == {True, False}


def test_paste_bad_arguments():
    rgb, label = _flat_frame()
    rng = np.random.default_rng(0)
    with pytest.raises(OodSegError, match='no COCO objects'):
        ood_sets.paste_objects(rgb, label, [], rng)
    with pytest.raises(OodSegError, match='label shape'):
        ood_sets.paste_objects(rgb, label[1:], [_disc_object()], rng)
    with pytest.raises(OodSegError, match='height_frac'):
        ood_sets.paste_objects(rgb, label, [_disc_object()], rng, height_frac=(0.5, 0.2))


# --------------------------------------------------------------------------- make_ood_set


@pytest.mark.data
def test_make_ood_set_round_trip(real_data, real_objects, tmp_path):
    camvid_root, coco_root = real_data
    out = tmp_path / 'set'
    summary = ood_sets.make_ood_set(camvid_root, coco_root, 'val', 'c', out, seed=5, limit=3)
    assert summary['n_frames'] == 3 and summary['n_source_objects'] == len(real_objects)
    ds = ood_sets.OodDataset(out)
    assert ds.layout == 'images_labels' and ds.has_semantic
    pairs = camvid.list_pairs(camvid_root, 'val')[:3]
    assert ds.names == [img.stem for img, _ in pairs]
    info = json.loads((out / 'info.json').read_text())
    assert info['seed'] == 5 and info['split'] == 'val' and info['group'] == 'c'
    total_ood = 0
    for i, (img_path, lab_path) in enumerate(pairs):
        rgb, label = camvid.load_pair(img_path, lab_path)
        ref = ood_sets.compose_ood_frame(rgb, label, real_objects, ood_sets.frame_rng(5, i),
                                         road_ids=ROADS)
        s = ds[i]
        np.testing.assert_array_equal(s.ood_label, ref.ood_label)  # PNG: lossless
        np.testing.assert_array_equal(s.semantic, ref.semantic)
        assert np.abs(s.rgb.astype(int) - ref.rgb.astype(int)).mean() < 3  # JPEG q95
        frame = info['frames'][i]
        assert frame['name'] == s.name
        assert [o['key'] for o in frame['objects']] == [p.key for p in ref.placements]
        assert frame['ood_pixels'] == int((s.ood_label == 1).sum()) > 0
        total_ood += frame['ood_pixels']
    assert info['counts']['n_ood_pixels'] == total_ood == summary['n_ood_pixels']
    # frame content does not depend on limit; an existing folder is refused
    with pytest.raises(OodSegError, match='not empty'):
        ood_sets.make_ood_set(camvid_root, coco_root, 'val', 'c', out, seed=5, limit=1)
    ood_sets.make_ood_set(camvid_root, coco_root, 'val', 'c', out, seed=5, limit=1,
                          overwrite=True)
    ds1 = ood_sets.OodDataset(out)
    assert len(ds1) == 1
    np.testing.assert_array_equal(ds1[0].ood_label, ds[0].ood_label)


@pytest.mark.data
def test_cli_make_ood_set(real_data, tmp_path, capsys):
    camvid_root, coco_root = real_data
    argv = ['make-ood-set', '--camvid', str(camvid_root), '--coco', str(coco_root),
            '--split', 'val', '--group', 'b', '--out', str(tmp_path / 'o'), '--seed', '1',
            '--limit', '2', '--json']
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['n_frames'] == 2 and summary['group'] == 'b'
    assert len(list((tmp_path / 'o' / 'labels').glob('*.png'))) == 2
    argv[2] = str(tmp_path / 'nowhere')
    argv[argv.index('--out') + 1] = str(tmp_path / 'o2')
    assert cli.main(argv) == 2
    assert 'nowhere' in capsys.readouterr().err


# --------------------------------------------------------------------------- OodDataset


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _road_anomaly(root: Path, names=('scene_b', 'scene_a'), h=10, w=14) -> dict:
    labels = {}
    rng = np.random.default_rng(1)
    for name in names:
        _write(root / 'frames' / f'{name}.jpg', rng.integers(0, 256, (h, w, 3), np.uint8))
        lab = rng.integers(0, 3, (h, w), dtype=np.uint8)  # 0 road?, 1 other, 2 anomaly
        _write(root / 'frames' / f'{name}.labels' / 'labels_semantic.png', lab)
        labels[name] = lab
    return labels


def _our_layout(root: Path, names=('f1', 'f0'), h=10, w=14, semantic=True) -> dict:
    labels = {}
    rng = np.random.default_rng(2)
    for name in names:
        _write(root / 'images' / f'{name}.png', rng.integers(0, 256, (h, w, 3), np.uint8))
        lab = rng.choice(np.array([0, 1, 255], np.uint8), (h, w))
        _write(root / 'labels' / f'{name}.png', lab)
        if semantic:
            _write(root / 'semantic' / f'{name}.png', np.where(lab == 1, 255, 3).astype(np.uint8))
        labels[name] = lab
    return labels


def test_read_road_anomaly_layout(tmp_path):
    labels = _road_anomaly(tmp_path)
    ds = ood_sets.OodDataset(tmp_path)
    assert ds.layout == 'road_anomaly' and ds.names == ['scene_a', 'scene_b'] and len(ds) == 2
    s = ds[1]
    assert s.name == 'scene_b' and s.semantic is None and s.rgb.shape == (10, 14, 3)
    np.testing.assert_array_equal(s.ood_label, (labels['scene_b'] == 2).astype(np.uint8))
    assert s.ood_label.dtype == np.uint8


def test_read_our_layout(tmp_path):
    labels = _our_layout(tmp_path)
    ds = ood_sets.OodDataset(tmp_path)
    assert ds.names == ['f0', 'f1'] and ds.has_semantic
    s = ds[0]
    np.testing.assert_array_equal(s.ood_label, labels['f0'])
    np.testing.assert_array_equal(s.semantic, np.where(labels['f0'] == 1, 255, 3))
    _our_layout(tmp_path / 'nosem', semantic=False)
    assert ood_sets.OodDataset(tmp_path / 'nosem')[1].semantic is None


def test_reader_bad_inputs(tmp_path):
    with pytest.raises(OodSegError, match='images/.*frames/'):
        ood_sets.OodDataset(tmp_path)  # empty folder: unknown layout names both layouts
    with pytest.raises(OodSegError, match='missing_dir'):
        ood_sets.OodDataset(tmp_path / 'missing_dir')
    # missing label, both layouts
    ra = tmp_path / 'ra'
    _road_anomaly(ra)
    (ra / 'frames' / 'scene_a.labels' / 'labels_semantic.png').unlink()
    with pytest.raises(OodSegError, match='scene_a'):
        ood_sets.OodDataset(ra)
    ours = tmp_path / 'ours'
    _our_layout(ours)
    (ours / 'labels' / 'f1.png').unlink()
    with pytest.raises(OodSegError, match='f1'):
        ood_sets.OodDataset(ours)
    # unreadable image, mismatched sizes, bad label values
    ours = tmp_path / 'ours2'
    _our_layout(ours, names=('f0', 'f1', 'f2', 'f3'))
    (ours / 'images' / 'f0.png').write_bytes(b'garbage')
    _write(ours / 'labels' / 'f1.png', np.zeros((9, 14), np.uint8))
    _write(ours / 'labels' / 'f2.png', np.full((10, 14), 7, np.uint8))
    _write(ours / 'semantic' / 'f3.png', np.full((10, 14), 11, np.uint8))
    ds = ood_sets.OodDataset(ours, n_classes=11)
    for i, pattern in enumerate(['f0.png', 'f1.png', r'f2\.png.*7', r'f3\.png.*11']):
        with pytest.raises(OodSegError, match=pattern):
            ds[i]
    ra = tmp_path / 'ra2'
    _road_anomaly(ra)
    _write(ra / 'frames' / 'scene_b.labels' / 'labels_semantic.png', np.zeros((3, 3), np.uint8))
    with pytest.raises(OodSegError, match='scene_b'):
        ood_sets.OodDataset(ra)[1]
