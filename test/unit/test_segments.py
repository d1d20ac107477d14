"""Tests for ood_seg_ros.segments against hand-made cases and a brute-force reference."""

import math

import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.segments import (
    ALL_PGN_NAMES, find_segments, pgn_map_name, segment_areas, segment_boxes,
    SegmentFeatureExtractor)
import pytest

C = 5
MAPS = ('pgn_uni_p0.5', 'pgn_oh_p1')
STATS = ('mean', 'mean_in', 'mean_bd', 'rel', 'rel_in', 'var', 'var_in', 'var_bd')


def _brute_features(labels, n, probs, maps, map_names, region=None):
    """Compute the features with plain per-segment, per-pixel loops (independent)."""
    H, W = labels.shape
    n_cls = probs.shape[0]
    rows_out = []
    for k in range(1, n + 1):
        pix = [(r, c) for r in range(H) for c in range(W) if labels[r, c] == k]
        inner, bound, nbrs = [], [], set()
        for r, c in pix:
            is_inner = True
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if dr == 0 and dc == 0:
                        continue
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < H and 0 <= cc < W and labels[rr, cc] != k:
                        is_inner = False
                        nbrs.add((rr, cc))
            (inner if is_inner else bound).append((r, c))
        S, S_in, S_bd = len(pix), len(inner), len(bound)
        den = max(S_bd, 1)
        feats = [S, S_in, S_bd, S / den, S_in / den]

        def block(value):
            """Return the 8 statistics of value(r, c) over segment / inner / boundary."""
            def mean(px):
                return sum(value(r, c) for r, c in px) / len(px) if px else 0.0

            def var(px):
                if not px:
                    return 0.0
                m = mean(px)
                return sum((value(r, c) - m) ** 2 for r, c in px) / len(px)

            m_all, m_in, m_bd = mean(pix), mean(inner), mean(bound)
            return [m_all, m_in, m_bd, m_all * S / den, m_in * S_in / den,
                    var(pix), var(inner), var(bound)]

        def prob(r, c):
            return [float(probs[h, r, c]) for h in range(n_cls)]

        def entropy(r, c):
            return -sum(q * math.log(q) for q in prob(r, c) if q > 0) / math.log(n_cls)

        def margin(r, c):
            q = sorted(prob(r, c), reverse=True)
            return 1.0 - q[0] + q[1]

        def var_ratio(r, c):
            return 1.0 - max(prob(r, c))

        for fn in (entropy, margin, var_ratio):
            feats += block(fn)
        for h in range(n_cls):
            feats.append(sum(float(probs[h, r, c]) for r, c in pix) / S)
        hist = [0] * n_cls
        for r, c in nbrs:
            q = prob(r, c)
            hist[q.index(max(q))] += 1
        feats += [x / len(nbrs) if nbrs else 0.0 for x in hist]
        feats.append(sum(r for r, _ in pix) / S / H)
        feats.append(sum(c for _, c in pix) / S / W)
        for name in map_names:
            feats += block(lambda r, c, m=maps[name]: float(m[r, c]))
        if region is not None:      # drivable_overlap: share of the pixels in the region
            feats.append(sum(1 for r, c in pix if region[r, c]) / S)
        rows_out.append(feats)
    return np.array(rows_out, dtype=np.float64).reshape(n, -1)


def _random_frame(rng, H, W):
    """Return random probs (C, H, W) float32 and maps of the given frame size."""
    logits = rng.normal(scale=2.0, size=(C, H, W)).astype(np.float32)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    maps = {name: rng.normal(loc=-3.0, scale=2.0, size=(H, W)).astype(np.float32)
            for name in MAPS + ('moose_mi', 'moose_entropy', 'unused')}
    return probs, maps


def _blob_labels(rng, H, W):
    """Return labels of random smooth blobs plus forced corner cases."""
    noise = rng.random((H + 4, W + 4))
    smooth = sum(noise[i:i + H, j:j + W] for i in range(5) for j in range(5)) / 25.0
    labels, n = find_segments(smooth, np.quantile(smooth, 0.75), min_size=1)
    labels = labels.copy()
    # A segment touching the image border (top-left corner block).
    labels[0:4, 0:5] = n + 1
    # A single-pixel segment and a thin line (no inner pixels), adjacent to others.
    labels[H - 1, W // 2] = n + 2
    labels[H // 2, 3:W - 3] = n + 3
    # Relabel consecutively (some blob ids may have been overwritten completely).
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(labels.max() + 1, dtype=np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels], int(ids.size)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_features_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    H, W = 40, 50
    labels, n = _blob_labels(rng, H, W)
    probs, maps = _random_frame(rng, H, W)
    region = rng.random((H, W)) < 0.5
    region[:H // 3] = False             # segments fully outside, partly and fully inside
    region[-3:] = True
    ext = SegmentFeatureExtractor(C, pgn_names=MAPS, moose=True, region=True)
    got = ext.extract(labels, n, probs, maps, region=region)
    want = _brute_features(labels, n, probs, maps, ext.map_names, region)
    assert got.shape == (n, len(ext.feature_names)) == want.shape
    overlap = got[:, ext.feature_names.index('drivable_overlap')]
    assert (overlap == 0).any() and ((overlap > 0) & (overlap < 1)).any()
    assert got.dtype == np.float64
    for j, name in enumerate(ext.feature_names):
        np.testing.assert_allclose(got[:, j], want[:, j], rtol=2e-5, atol=1e-6,
                                   err_msg=name)
    # The corner cases are really present: a border segment with inner pixels, a
    # single-pixel segment, a segment without inner pixels.
    s_col = ext.feature_names.index('S')
    s_in_col = ext.feature_names.index('S_in')
    assert (got[:, s_col] == 1).any()
    assert ((got[:, s_in_col] == 0) & (got[:, s_col] > 1)).any()
    assert got[labels[0, 0] - 1, s_in_col] > 0


def test_touching_segments_and_whole_image():
    rng = np.random.default_rng(5)
    H, W = 12, 15
    probs, maps = _random_frame(rng, H, W)
    ext = SegmentFeatureExtractor(C, pgn_names=(), moose=False)
    # Segments filling the frame, touching each other (no background at all).
    labels = np.ones((H, W), dtype=np.int32)
    labels[:, 7:] = 2
    labels[5:9, 2:5] = 3
    got = ext.extract(labels, 3, probs, maps)
    np.testing.assert_allclose(got, _brute_features(labels, 3, probs, maps, ()),
                               rtol=2e-5, atol=1e-6)
    # One segment covering the whole image: no boundary, no neighbours (guards).
    whole = np.ones((H, W), dtype=np.int32)
    got = ext.extract(whole, 1, probs, maps)
    np.testing.assert_allclose(got, _brute_features(whole, 1, probs, maps, ()),
                               rtol=2e-5, atol=1e-6)
    names = ext.feature_names
    assert got[0, names.index('S_bd')] == 0
    assert got[0, names.index('S_rel')] == H * W
    assert not got[0, [names.index(f'nbr_c{c}') for c in range(C)]].any()


def test_empty_ids_and_no_segments():
    rng = np.random.default_rng(3)
    probs, maps = _random_frame(rng, 10, 10)
    ext = SegmentFeatureExtractor(C, pgn_names=MAPS)
    assert ext.extract(np.zeros((10, 10), np.int32), 0, probs, maps).shape == (0, ext.n_features)
    labels = np.zeros((10, 10), np.int32)
    labels[2:4, 2:4] = 2  # id 1 has no pixels
    got = ext.extract(labels, 2, probs, maps)
    assert not got[0].any()
    want = _brute_features(np.minimum(labels, 1), 1, probs, maps, ext.map_names)[0]
    np.testing.assert_allclose(got[1], want, rtol=2e-5, atol=1e-6)


def test_bad_inputs_raise():
    rng = np.random.default_rng(4)
    probs, maps = _random_frame(rng, 8, 9)
    ext = SegmentFeatureExtractor(C, pgn_names=MAPS)
    labels = np.zeros((8, 9), np.int32)
    labels[1, 1] = 3
    with pytest.raises(OodSegError, match='0..2'):
        ext.extract(labels, 2, probs, maps)
    with pytest.raises(OodSegError, match='moose_mi'):
        ext.extract(labels, 3, probs, {k: v for k, v in maps.items() if k != 'moose_mi'})
    with pytest.raises(OodSegError, match='probs'):
        ext.extract(labels, 3, probs[:, :4], maps)
    with pytest.raises(OodSegError):
        SegmentFeatureExtractor(1)


def test_feature_names():
    ext = SegmentFeatureExtractor(11)
    names = ext.feature_names
    assert len(names) == len(set(names)) == ext.n_features
    assert len(names) == 5 + 3 * 8 + 2 * 11 + 2 + 8 * len(ext.map_names)
    with_region = SegmentFeatureExtractor(11, region=True).feature_names
    assert with_region == names + ('drivable_overlap',)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(11), size=(6, 7)).transpose(2, 0, 1).astype(np.float32)
    maps = {m: rng.normal(size=(6, 7)) for m in ext.map_names}
    labels = np.zeros((6, 7), np.int32)
    labels[1:3, 1:4] = 1
    assert ext.extract(labels, 1, probs, maps).shape == (1, len(names))
    assert names[:5] == ('S', 'S_in', 'S_bd', 'S_rel', 'S_rel_in')
    assert 'moose_mi_var_bd' in names and 'pgn_uni_p0.5_rel_in' in names
    assert pgn_map_name('uni', 0.5) == 'pgn_uni_p0.5'
    assert pgn_map_name('oh', 1) == 'pgn_oh_p1'
    assert pgn_map_name('oh', 2.0) == 'pgn_oh_p2'
    assert len(ALL_PGN_NAMES) == 10 and 'pgn_oh_p0.1' in ALL_PGN_NAMES


def test_find_segments_hand_made():
    hm = np.array([
        [0.9, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.8, 0.0, 0.0, 0.7, 0.7],
        [0.0, 0.0, 0.0, 0.0, 0.7, 0.7],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.5, 0.0, 0.6, 0.0, 0.0, 0.9],
    ], dtype=np.float32)
    labels, n = find_segments(hm, 0.6, min_size=1)
    # Diagonal pixels (0,0)-(1,1) form one component; threshold is inclusive.
    want = np.zeros(hm.shape, np.int32)     # raster order of the first pixels
    want[0, 0] = want[1, 1] = 1
    want[1:3, 4:6] = 2
    want[4, 2] = 3
    want[4, 5] = 4
    assert n == 4 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, want)
    labels, n = find_segments(hm, 0.6, min_size=2)
    want2 = np.where(want == 1, 1, np.where(want == 2, 2, 0)).astype(np.int32)
    assert n == 2
    np.testing.assert_array_equal(labels, want2)
    labels, n = find_segments(hm, 0.95)
    assert n == 0 and not labels.any()
    with pytest.raises(OodSegError):
        find_segments(hm[None], 0.5)


def test_boxes_and_areas():
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 2:5] = 1
    labels[5, 7] = 3
    labels[0, 0] = 1
    boxes = segment_boxes(labels, 3)
    np.testing.assert_array_equal(boxes, [[0, 0, 5, 3], [0, 0, 0, 0], [7, 5, 8, 6]])
    np.testing.assert_array_equal(segment_areas(labels, 3), [7, 0, 1])
    assert segment_boxes(labels, 0).shape == (0, 4)
    assert segment_areas(labels, 0).shape == (0,)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_segment_boxes_match_brute_force(seed):
    """Vectorised boxes equal np.nonzero per label, including ids without pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 30, (40, 57)).astype(np.int32)
    labels[labels == 7] = 0          # id 7 has no pixels
    labels[0, 0] = 35                # above n: ignored
    n = 31
    boxes = segment_boxes(labels, n)
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        want = ((0, 0, 0, 0) if not len(ys) else
                (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        assert tuple(boxes[k - 1]) == tuple(want), k
