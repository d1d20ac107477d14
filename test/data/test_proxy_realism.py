"""Training-proxy realism: ignore band, whole-frame JPEG re-encode, mixed placement."""

import json

import cv2
import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.data import camvid, proxy_realism as P
from ood_seg_ros.tools.data import ood_sets
import pytest
from repo_paths import CAMVID, COCO, SHARED_DATA


def _labels():
    ood = np.zeros((30, 40), np.uint8)
    ood[10:14, 12:20] = 1
    ood[25, 2] = 1
    ood[0, :3] = 255
    sem = np.full((30, 40), 3, np.uint8)
    sem[ood == 1] = 255
    sem[0, :3] = 255
    return ood, sem


@pytest.mark.parametrize('band', [1, 3, 4])
def test_ignore_band_matches_a_brute_force_distance(band):
    ood, sem = _labels()
    o2, s2 = P.ignore_band(ood, sem, band)
    ys, xs = np.nonzero(ood == 1)
    for y in range(ood.shape[0]):
        for x in range(ood.shape[1]):
            d = np.max(np.abs(np.stack([ys - y, xs - x])), 0).min()  # Chebyshev distance
            if ood[y, x] == 1:
                assert o2[y, x] == 1 and s2[y, x] == 255
            elif d <= band:
                assert o2[y, x] == 255 and s2[y, x] == 255, (y, x)
            else:
                assert o2[y, x] == ood[y, x] and s2[y, x] == sem[y, x], (y, x)
    assert (ood == _labels()[0]).all()          # inputs untouched


def test_ignore_band_zero_and_bad_values():
    ood, sem = _labels()
    o2, s2 = P.ignore_band(ood, sem, 0)
    assert np.array_equal(o2, ood) and np.array_equal(s2, sem)
    with pytest.raises(OodSegError, match='ignore band'):
        P.ignore_band(ood, sem, -1)


def test_jpeg_reencode_is_the_codec_and_deterministic():
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (0, 0), 2)
    a = P.jpeg_reencode(rgb, 40)
    assert a.dtype == np.uint8 and a.shape == rgb.shape
    assert np.array_equal(a, P.jpeg_reencode(rgb, 40))
    assert not np.array_equal(a, rgb)
    # lower quality, larger error (independent measure: mean absolute error)
    err = [np.abs(P.jpeg_reencode(rgb, q).astype(int) - rgb).mean() for q in (95, 60, 20)]
    assert err[0] < err[1] < err[2]
    with pytest.raises(OodSegError, match='quality'):
        P.jpeg_reencode(rgb, 0)


def test_mixed_placement_draws_road_at_the_given_rate():
    rng = np.random.default_rng(3)
    draws = [P.choose_placement('mixed', rng, 0.7) for _ in range(2000)]
    assert set(draws) == {'road', 'scene'}
    assert abs(draws.count('road') / 2000 - 0.7) < 0.04
    assert P.choose_placement('road', rng, 0.0) == 'road'
    with pytest.raises(OodSegError, match='road_fraction'):
        P.choose_placement('mixed', rng, 1.5)


@pytest.mark.data
def test_make_ood_set_mixed_band_and_jpeg(tmp_path):
    if not (CAMVID / 'train' / 'images').is_dir() or not (COCO / 'images').is_dir():
        pytest.skip(f'shared data not found in {SHARED_DATA}')
    kw = {'seed': 4, 'limit': 6, 'placement': 'mixed', 'road_fraction': 0.5,
          'ignore_band_px': 3, 'jpeg_quality': (50, 70), 'objects_per_frame': (2, 3)}
    ood_sets.make_ood_set(CAMVID, COCO, 'train', 'a', tmp_path / 'a', **kw)
    ood_sets.make_ood_set(CAMVID, COCO, 'train', 'a', tmp_path / 'b', **kw)
    info = json.loads((tmp_path / 'a' / 'info.json').read_text())
    assert {f['placement'] for f in info['frames']} == {'road', 'scene'}
    assert info['ignore_band_px'] == 3 and info['jpeg_quality'] == [50, 70]
    a, b = ood_sets.OodDataset(tmp_path / 'a'), ood_sets.OodDataset(tmp_path / 'b')
    pairs = camvid.list_pairs(CAMVID, 'train')[:6]
    n_band = 0
    for i in range(6):
        sa, sb = a[i], b[i]
        assert np.array_equal(sa.rgb, sb.rgb) and np.array_equal(sa.ood_label, sb.ood_label)
        _, label = camvid.load_pair(*pairs[i])
        obj = sa.ood_label == 1
        # the band: void in both labels, next to objects, on pixels labelled in CamVid
        band = (sa.ood_label == 255) & (label != 255)
        n_band += int(band.sum())
        assert (sa.semantic[band] == 255).all()
        near = cv2.dilate(obj.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert not (band & ~near).any()
        keep = ~obj & ~band
        assert np.array_equal(sa.semantic[keep], label[keep])
    assert n_band > 0
    with pytest.raises(OodSegError, match='jpeg_quality'):
        ood_sets.make_ood_set(CAMVID, COCO, 'train', 'a', tmp_path / 'c', seed=0, limit=1,
                              jpeg_quality=(90, 50))
    assert not (tmp_path / 'c').exists()          # refused before anything is written
