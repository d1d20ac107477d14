"""Obstacle mode: the prior on a hand-made label map, band crop and fusion, flips, contrast."""

import math

import cv2
from model_helpers import save_tiny_bundle
import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.obstacle import (band_input_size, drivable_ids, drivable_mask, fill_rows,
                                  fuse_band, local_contrast, ObstacleSettings,
                                  parse_band_rows, region_distance, region_weight)
from ood_seg_ros.pipeline import Letterbox, Pipeline, runtime_for_size
from ood_seg_ros.tools.calibrate import calibration_update
import pytest

pytestmark = pytest.mark.usefixtures('torch_threads')
CAMVID = ['Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence',
          'Car', 'Pedestrian', 'Bicyclist']
CITYSCAPES = ['road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
              'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car']
SKY, ROAD, PAVE, CAR = 0, 3, 4, 8
H, W = 96, 128


def _one_hot(labels, n=len(CAMVID)):
    return np.eye(n, dtype=np.float32)[labels].transpose(2, 0, 1)


def _hand_made():
    """Return a 12 x 16 scene: sky, a road widening downwards, a car on it, a pavement."""
    lab = np.full((12, 16), SKY, np.int64)
    for r in range(4, 12):
        lab[r, 7 - (r - 4):9 + (r - 4)] = ROAD            # cols 7-8 in row 4, 0-15 in 11
    lab[7:9, 6:10] = CAR                                   # a car on the road: a hole
    lab[6, 7:9] = CAR                                       # row 6: road left and right of it
    lab[5, 12:16] = PAVE
    return lab


def test_class_lookup_by_name_for_camvid_and_cityscapes():
    assert drivable_ids(CAMVID, ['Road']).tolist() == [ROAD]
    assert drivable_ids(CAMVID, ['road', 'PAVEMENT', 'sidewalk']).tolist() == [ROAD, PAVE]
    assert drivable_ids(CITYSCAPES, ['Road', 'Sidewalk']).tolist() == [0, 1]
    assert drivable_ids(CITYSCAPES, ['Pavement']).size == 0


def test_prior_against_a_hand_made_label_map():
    lab = _hand_made()
    st = ObstacleSettings(close=0.0, margin=0.0)
    mask = drivable_mask(_one_hot(lab), drivable_ids(CAMVID, ['Road']), st)
    want = np.zeros_like(mask)
    for r in range(4, 12):                                  # rows filled end to end
        want[r, 7 - (r - 4):9 + (r - 4)] = True
    np.testing.assert_array_equal(mask, want)               # the car's hole is filled
    assert not mask[5, 12:].any()                           # pavement is not road ...
    with_pave = drivable_mask(_one_hot(lab), drivable_ids(CAMVID, ['Road', 'Pavement']), st)
    assert with_pave[5, 6:16].all() and not with_pave[5, :6].any()   # ... unless asked
    # Widening and fall-off against distances computed pixel by pixel.
    st = ObstacleSettings(close=0.0, margin=1.5 / 16, falloff=2.0 / 16, floor=0.05)
    dist = region_distance(mask)
    widened, weight = region_weight(dist, st)
    inside = list(zip(*np.nonzero(mask)))
    for r in range(12):
        for c in range(16):
            d = min(math.hypot(r - rr, c - cc) for rr, cc in inside)
            assert dist[r, c] == pytest.approx(d, abs=1e-3)
            assert widened[r, c] == (d <= 1.5)
            want_w = 1.0 if d <= 1.5 else max(0.05, math.exp(-(d - 1.5) / 2.0))
            assert weight[r, c] == pytest.approx(want_w, abs=1e-4)
    assert weight[0, 0] == pytest.approx(0.05)               # far sky: the floor, not 0


def test_closing_bridges_a_row_without_road():
    lab = np.full((10, 12), SKY, np.int64)
    lab[3:10, 2:10] = ROAD
    lab[6] = CAR                                             # a whole row seen as car
    ids = drivable_ids(CAMVID, ['Road'])
    open_mask = drivable_mask(_one_hot(lab), ids, ObstacleSettings(close=0.0))
    assert not open_mask[6].any()
    closed = drivable_mask(_one_hot(lab), ids, ObstacleSettings(close=3 / 12))
    assert closed[6, 2:10].all() and not closed[6, :2].any() and not closed[:3].any()
    assert fill_rows(np.zeros((2, 3), bool)).sum() == 0


def test_band_rows_and_sizes():
    assert parse_band_rows('0.4:0.85') == (0.4, 0.85)
    assert parse_band_rows([0.0, 1.0]) == (0.0, 1.0)
    for bad in ('0.9:0.4', 'x', '0.1:1.5', [0.2]):
        with pytest.raises(OodSegError, match='band rows'):
            parse_band_rows(bad)
    assert band_input_size((1024, 2048), (0.4, 0.85)) == (464, 2048)
    assert band_input_size((1024, 2048), (0.4, 0.85), 1024) == (240, 1024)
    st = ObstacleSettings.from_runtime({'obstacle': {'band_rows': 'auto'}})
    assert st.band_auto and st.band_rows == (0.4, 0.85)
    with pytest.raises(OodSegError, match='fusion'):
        ObstacleSettings.from_runtime({}, band_fusion='min')


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp('bundle') / 'b', (H, W))


def test_band_crop_and_fusion_against_cropping_by_hand(bundle):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', band=True,
                                band_rows='0.4:0.85', band_width=200)
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, (100, 400, 3), dtype=np.uint8)
    out = pipe.infer(frame)
    assert out['band_rows'] == (0.4, 0.85)
    # By hand: rows 40..85 of the frame, fitted into the band network input.
    crop = frame[40:85]
    size = band_input_size(frame.shape[:2], (0.4, 0.85), 200)
    assert size == (32, 208)
    box = Letterbox.fit(crop.shape[:2], size)
    be = pipe.band_backend(frame.shape[:2], (0.4, 0.85))
    assert be.input_size == size and be.model is pipe.backend.model   # shared network
    hand = box.crop(be.infer(box.place(crop)))
    name = pipe.score_name
    np.testing.assert_array_equal(out['band'][name], hand[name])
    # Fusion at frame size: the first pass upsampled, the band's rows its maximum with
    # the band map resized to them (bilinear).
    first = cv2.resize(out[name], (400, 100), interpolation=cv2.INTER_LINEAR)
    band = cv2.resize(hand[name], (400, 45), interpolation=cv2.INTER_LINEAR)
    fused = first.copy()
    fused[40:85] = np.maximum(first[40:85], band)
    np.testing.assert_allclose(pipe.heat_at(out, (100, 400)), fused, atol=1e-6)
    assert (fused[40:85] > first[40:85]).any()               # the band changed something
    res = pipe.process(frame)
    np.testing.assert_allclose(res.heatmap, pipe.norm.apply(fused), atol=1e-6)
    # Decoder grid: outside the band rows the first pass, inside at least it.
    low = pipe.heat_low(out)
    r0, r1 = round(0.4 * low.shape[0]), round(0.85 * low.shape[0])
    np.testing.assert_array_equal(low[:r0], out[name][:r0])
    np.testing.assert_array_equal(low[r1:], out[name][r1:])
    assert (low[r0:r1] >= out[name][r0:r1]).all()
    mean = fuse_band(out[name], hand[name], (0.4, 0.85), 'mean')
    assert mean.shape == low.shape


def test_flip_average_by_hand(bundle):
    plain = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    flip = Pipeline.from_bundle(bundle, backend='torch', device='cpu', flip=True)
    frame = np.random.default_rng(6).integers(0, 255, (H, W, 3), dtype=np.uint8)
    a = plain.infer(frame)                                  # the frame's own pass
    b = plain.infer(np.ascontiguousarray(frame[:, ::-1]))   # the mirror image's pass
    got = flip.infer(frame)
    name = plain.score_name
    # Semantic, probs, the score maps and the prior stay the frame's own ...
    for key in ('semantic', 'probs', name, 'region_weight', 'drivable'):
        np.testing.assert_array_equal(got[key], a[key])
    # ... the mirror pass keeps its maps mirrored back, with the prior of its own probs.
    np.testing.assert_allclose(got['mirror'][name], b[name][:, ::-1], atol=1e-6)
    np.testing.assert_allclose(got['mirror']['region_weight'], b['region_weight'][:, ::-1],
                               atol=1e-6)
    assert 'probs' not in got['mirror']
    # The heatmap: each pass weighed by its own prior, then the mean (drivable mode) ...
    lo = plain.base_lo(name)
    for region in ('drivable', 'all'):
        plain.set_region(region)
        flip.set_region(region)
        if region == 'drivable':
            own = np.maximum(a[name] - lo, 0) * a['region_weight']
            mirror = (np.maximum(b[name] - lo, 0) * b['region_weight'])[:, ::-1]
        else:                                               # ... the plain mean in all
            own, mirror = a[name], b[name][:, ::-1]
        np.testing.assert_allclose(flip.heat_low(got), 0.5 * (own + mirror), atol=1e-5)
        np.testing.assert_allclose(plain.heat_low(a), own, atol=1e-5)
    res = flip.process(frame)
    np.testing.assert_allclose(res.heatmap, flip.norm.apply(cv2.resize(
        flip.heat_low(got), (W, H), interpolation=cv2.INTER_LINEAR)), atol=1e-5)


def test_flip_average_with_padding_and_the_band(bundle):
    """A letterboxed frame: the mirror pass lines up with the frame; the band has one too."""
    flip = Pipeline.from_bundle(bundle, backend='torch', device='cpu', flip=True, band=True,
                                band_width=64)
    plain = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    frame = np.random.default_rng(7).integers(0, 255, (40, W, 3), dtype=np.uint8)
    got = flip.infer(frame)
    name = plain.score_name
    own = plain.infer(frame)
    mirror = plain.infer(np.ascontiguousarray(frame[:, ::-1]))
    assert got['mirror'][name].shape == own[name].shape
    np.testing.assert_allclose(got['mirror'][name], mirror[name][:, ::-1], atol=1e-5)
    assert 'mirror' in got['band'] and 'region_weight' in got['band']['mirror']
    assert got['band']['mirror'][name].shape == got['band'][name].shape
    assert np.isfinite(flip.process(frame).heatmap).all()


def _contrast_by_loop(raw, gain, k):
    """Brute force: each pixel against the mean of its k x k window, mirrored edges."""
    h, w = raw.shape
    r = k // 2
    out = np.empty_like(raw, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            total = 0.0
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = y + dy, x + dx     # mirror with the edge pixel repeated
                    yy = -yy - 1 if yy < 0 else (2 * h - yy - 1 if yy >= h else yy)
                    xx = -xx - 1 if xx < 0 else (2 * w - xx - 1 if xx >= w else xx)
                    total += raw[yy, xx]
            out[y, x] = raw[y, x] + gain * max(raw[y, x] - total / (k * k), 0.0)
    return out


def test_local_contrast_against_a_loop():
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(11, 14)).astype(np.float32)
    raw[5, 6] += 6.0                                        # a one-pixel obstacle
    for gain, k in ((1.0, 3), (0.5, 5), (2.0, 9)):
        got = local_contrast(raw, gain, k)
        np.testing.assert_allclose(got, _contrast_by_loop(raw, gain, k), atol=1e-5)
        assert got.dtype == np.float32 and (got >= raw).all()
    assert local_contrast(raw, 0.0, 9) is raw               # off: untouched
    flat = np.full((8, 8), 0.7, np.float32)
    np.testing.assert_allclose(local_contrast(flat, 1.0, 5), flat, atol=1e-6)
    # a peak smaller than the window rises by its excess; the inside of a large hot
    # square, flat over the whole window, does not
    big = np.zeros((30, 30), np.float32)
    big[5:25, 5:25] = 1.0
    big[2, 2] = 1.0
    got = local_contrast(big, 1.0, 5)
    assert got[15, 15] == pytest.approx(1.0) and got[2, 2] == pytest.approx(1.96)


@pytest.mark.parametrize('gain,window,words', [
    (-0.5, 9, 'contrast must be a number >= 0'), (float('nan'), 9, 'contrast must be'),
    ('x', 9, 'contrast must be a number'), (1.0, 4, 'odd integer >= 3'),
    (1.0, 1, 'odd integer >= 3'), (1.0, 9.0, 'odd integer >= 3')])
def test_contrast_settings_are_checked_in_one_line(gain, window, words):
    with pytest.raises(OodSegError, match=words) as err:
        ObstacleSettings.from_runtime({'obstacle': {'contrast': gain,
                                                    'contrast_window': window}})
    assert '\n' not in str(err.value)
    st = ObstacleSettings.from_runtime({}, contrast=0.5, contrast_window=5)
    assert (st.contrast, st.contrast_window) == (0.5, 5)
    assert ObstacleSettings.from_runtime({}).contrast == 0.0


def test_contrast_applies_after_the_prior_in_both_regions(bundle, caplog):
    plain = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True)
    assert 'small-object contrast' not in caplog.text
    con = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True,
                               contrast=0.8, contrast_window=5)
    assert "small-object contrast 0.8 (window 5) differs from the bundle's 0" in caplog.text
    frame = np.random.default_rng(8).integers(0, 255, (H, W, 3), dtype=np.uint8)
    out = plain.infer(frame)
    out['drivable'], out['region_weight'] = plain._region(out['probs'])
    h, w = out['region_weight'].shape
    out['region_weight'][:, : w // 2] = 0.3
    out['region_weight'][h // 2, 3 * w // 4] = 1.0
    name = plain.score_name
    out[name][h // 2, 3 * w // 4] += 1.0                    # a one-pixel obstacle
    for region in ('all', 'drivable'):
        plain.set_region(region)
        con.set_region(region)
        want = local_contrast(plain.heat_low(out), 0.8, 5)
        np.testing.assert_allclose(con.heat_low(out), want, atol=1e-6)
        np.testing.assert_allclose(con.heat_at(out, (H, W)),
                                   cv2.resize(want, (W, H), interpolation=cv2.INTER_LINEAR),
                                   atol=1e-5)
        rise = con.heat_low(out)[h // 2, 3 * w // 4] - plain.heat_low(out)[h // 2, 3 * w // 4]
        assert rise > 0.5, region


def test_region_mode_switch_and_calibration_per_region(bundle):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True)
    frame = np.random.default_rng(7).integers(0, 255, (H, W, 3), dtype=np.uint8)
    out = pipe.infer(frame)
    name = pipe.score_name
    h, w = out[name].shape
    road = np.full((h, w), SKY, np.int64)
    road[:, :w // 2] = ROAD                                   # the left half is road
    out['probs'] = 0.5 * out['probs'] + 0.5 * _one_hot(road, out['probs'].shape[0])
    out['drivable'], out['region_weight'] = pipe._region(out['probs'])
    assert out['drivable'][:, :w // 2].all() and not out['drivable'][:, -2:].any()
    assert pipe.region == 'all'
    np.testing.assert_array_equal(pipe.heat_low(out), out[name])
    pipe.set_threshold(0.05)
    n_all = pipe.segment(out)[2]
    backend = pipe.backend
    pipe.set_region('drivable')
    assert pipe.backend is backend and pipe.region == 'drivable'
    lo = pipe.base_lo(name)
    np.testing.assert_allclose(pipe.heat_low(out),
                               np.maximum(out[name] - lo, 0) * out['region_weight'], atol=1e-7)
    # segments in this mode touch the widened drivable region
    pipe.set_threshold(0.05)
    _, labels, n, feats = pipe.segment(out)
    assert 0 < n
    col = pipe.extractor.feature_names.index('drivable_overlap')
    for k in range(1, n + 1):
        assert (out['drivable'] & (labels == k)).any()
    assert (feats[:, col] > 0).all() and n_all > 0
    with pytest.raises(OodSegError, match='heatmap region'):
        pipe.set_region('sky')
    assert pipe.region == 'drivable'                           # refused: nothing changed
    runtime = {'heatmap_score': 'msp', 'normalisation': {'msp': [0.1, 0.9]},
               'segment_threshold': 0.6,
               'sizes': {'96x128': {'regions': {'drivable': {
                   'heatmap_score': 'msp', 'normalisation': {'msp': [0.0, 0.4]},
                   'segment_threshold': 0.3}}}}}
    rt, calibrated = runtime_for_size(runtime, (96, 128), 'drivable')
    assert calibrated and rt['segment_threshold'] == 0.3
    assert rt['normalisation'] == {'msp': [0.0, 0.4]}
    assert rt['base_normalisation'] == {'msp': [0.1, 0.9]}
    rt, calibrated = runtime_for_size(runtime, (96, 128))
    assert rt['segment_threshold'] == 0.6 and rt['normalisation'] == {'msp': [0.1, 0.9]}
    rt, calibrated = runtime_for_size(runtime, (64, 64), 'drivable')
    assert not calibrated and rt['normalisation'] == {'msp': [0.0, pytest.approx(0.8)]}
    # a drivable calibration is stored beside the size's own, the top level untouched
    cal = {'heatmap_score': 'msp', 'normalisation': {'msp': [0.0, 0.5]},
           'segment_threshold': 0.4, 'calibrated_size': '96x128', 'region': 'drivable',
           'calibration': {}}
    upd = calibration_update(runtime, cal, [96, 128])
    assert set(upd) == {'sizes'}
    assert upd['sizes']['96x128']['regions']['drivable']['segment_threshold'] == 0.4
    upd = calibration_update({**runtime, **upd}, dict(cal, region='all'), [96, 128])
    assert upd['segment_threshold'] == 0.4 and 'drivable' in upd['sizes']['96x128']['regions']


def test_bundle_schema_checks_region_calibration_and_obstacle_settings():
    from ood_seg_ros.schema import validate_bundle
    good = {'format_version': 1, 'config': {}, 'runtime': {
        'obstacle': {'drivable_classes': ['Road', 'Pavement'], 'band_rows': [0.4, 0.85],
                     'band_fusion': 'max', 'contrast': 0.5, 'contrast_window': 9},
        'sizes': {'360x480': {'segment_threshold': 0.5, 'regions': {'drivable': {
            'heatmap_score': 'msp', 'normalisation': {'msp': [0.0, 1.0]},
            'segment_threshold': 0.4}}}}}}
    validate_bundle(good, 'bundle.json')
    bad = json_copy(good)
    bad['runtime']['sizes']['360x480']['regions']['drivable']['segment_threshold'] = 1.5
    bad['runtime']['obstacle']['band_fusion'] = 'min'
    bad['runtime']['obstacle']['margn'] = 0.1
    bad['runtime']['obstacle']['contrast'] = -1
    bad['runtime']['obstacle']['contrast_window'] = 1
    with pytest.raises(OodSegError) as err:
        validate_bundle(bad, 'bundle.json')
    text = str(err.value)
    assert '5 bad fields' in text and 'regions.drivable.segment_threshold' in text
    assert 'obstacle.contrast' in text and 'obstacle.contrast_window' in text
    assert 'obstacle.margn: unknown key' in text and 'obstacle.band_fusion' in text


def json_copy(doc):
    """Return a deep copy of a JSON document."""
    import json
    return json.loads(json.dumps(doc))


def test_the_bundle_names_its_default_region(bundle, tmp_path):
    import shutil
    from ood_seg_ros.model.bundle import update_bundle_json
    from ood_seg_ros.pipeline import default_region, PipelineSettings
    from ood_seg_ros.schema import validate_bundle
    from ood_seg_ros.tools.evaluate import score_kw
    plain = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    assert (plain.region, plain.default_region) == ('all', 'all')    # no key: all
    b = tmp_path / 'b'
    shutil.copytree(bundle, b)
    doc = update_bundle_json(b, lambda d: d['runtime'].update(heatmap_region='drivable'))
    validate_bundle(doc, 'bundle.json')
    assert default_region(doc['runtime']) == 'drivable'
    assert default_region(doc['runtime'], 'all') == 'all'
    pipe = Pipeline.from_bundle(b, backend='torch', device='cpu')
    assert (pipe.region, pipe.default_region) == ('drivable', 'drivable')
    pipe.set_region('all')
    assert pipe.region == 'all'
    pipe.set_region('')                               # empty: back to the bundle's mode
    assert pipe.region == 'drivable'
    assert Pipeline.from_bundle(b, backend='torch', device='cpu', region='all').region == 'all'
    assert PipelineSettings(str(b), backend='torch').resolved().region == 'drivable'
    assert score_kw(b) == {'score': 'moose_entropy'}
    with pytest.raises(OodSegError, match='heatmap_region'):
        validate_bundle(dict(doc, runtime={'heatmap_region': 'road'}), 'bundle.json')
