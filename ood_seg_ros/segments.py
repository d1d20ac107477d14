"""
OoD segments: connected components of a heatmap and MetaSeg-style segment features.

Conventions (methods §5):

- A segment is an 8-connected component of ``heatmap >= threshold``. ``labels`` is an
  int32 (H, W) array with 0 for background and 1..n for the segments.
- A pixel of segment k is *inner* when all of its 8 neighbours have label k; neighbours
  outside the image count as label k (binary erosion with a 3x3 structure and
  ``border_value=1``, done per segment id). The other pixels of the segment are its
  *boundary*. A segment has no boundary only when it covers the whole image.
- The *neighbourhood* of segment k is the set of pixels with label != k (background or
  another segment) lying in the 8-neighbourhood of at least one pixel of k (the 3x3
  dilation of k minus k), each pixel counted once per segment.

Everything is vectorised over the foreground pixels (``np.add.reduceat`` over runs of
equal region id, then ``np.bincount`` over label ids; no per-segment or per-pixel
Python loops). The only full-frame pass in :meth:`SegmentFeatureExtractor.extract` is
finding the non-zero labels; the rest is exact and costs O(number of segment pixels *
(C + number of maps)), so the time grows with the area of the segments, not of the frame
(measured in the README, ``ood-seg bench --postprocess``). ``probs`` and the maps should
be C-contiguous (otherwise numpy copies them).
"""

import numpy as np
from scipy import ndimage

from .errors import OodSegError
from .scores import ALL_PGN_SCORES, PGN_MODES, pgn_name, PGN_PS as PGN_P_VALUES  # noqa: F401

MOOSE_NAMES = ('moose_mi', 'moose_entropy')
DISPERSION_NAMES = ('entropy', 'margin', 'variation_ratio')
# Per-map statistics, in stored order: mean over segment / inner / boundary, relative
# means mean*S/S_bd and mean_in*S_in/S_bd, (population) variances over segment / inner /
# boundary.
STAT_NAMES = ('mean', 'mean_in', 'mean_bd', 'rel', 'rel_in', 'var', 'var_in', 'var_bd')
SIZE_NAMES = ('S', 'S_in', 'S_bd', 'S_rel', 'S_rel_in')
REGION_FEATURE = 'drivable_overlap'    # fraction of the segment in the drivable region

# The 8 neighbour offsets (drow, dcol).
_SHIFTS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_STRUCTURE = np.ones((3, 3), dtype=bool)


def pgn_map_name(mode, p):
    """
    Return the score-map name of PGN with label mode ``'oh'``/``'uni'`` and norm ``p``.

    The one naming rule is :func:`ood_seg_ros.scores.pgn_name` (``p`` written with
    ``%g``): ``pgn_map_name('uni', 0.5) == 'pgn_uni_p0.5'``.
    """
    try:
        return pgn_name(mode, p)
    except ValueError as exc:
        raise OodSegError(str(exc)) from None


ALL_PGN_NAMES = ALL_PGN_SCORES
# Default PGN maps for meta classification: the paper finds p = 1-2 best for error
# detection / meta classification and p = 0.3-0.5 best for OoD; one of each family.
DEFAULT_PGN_NAMES = ('pgn_uni_p0.5', 'pgn_oh_p1', 'pgn_uni_p1', 'pgn_uni_p2')


def find_segments(heatmap, threshold, min_size=1):
    """
    Label the 8-connected components of ``heatmap >= threshold``.

    heatmap: (H, W) float anomaly score (NaN counts as below threshold).
    threshold: pixels with score >= threshold are foreground.
    min_size: components with fewer pixels are removed; the rest are relabelled
    consecutively in the order of :func:`scipy.ndimage.label` (raster order of their
    first pixel).
    Returns ``(labels, n)``: int32 (H, W) labels, 0 = background, 1..n = segments.
    """
    h = np.asarray(heatmap)
    if h.ndim != 2:
        raise OodSegError(f'find_segments: heatmap must be (H, W), got shape {h.shape}')
    labels, n = ndimage.label(h >= threshold, structure=_STRUCTURE)
    labels = labels.astype(np.int32, copy=False)
    if n == 0 or min_size <= 1:
        return labels, int(n)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    n_keep = int(keep.sum())
    if n_keep == n:
        return labels, n_keep
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, n_keep + 1, dtype=np.int32)
    return lut[labels], n_keep


def segment_boxes(labels, n):
    """
    Return the bounding boxes of segments 1..n as an (n, 4) int64 array.

    Columns are ``(x0, y0, x1, y1)`` in pixels with x = column, y = row; x0/y0 are
    inclusive and x1/y1 exclusive (``labels[y0:y1, x0:x1]`` holds the segment). A label
    id without pixels gets ``(0, 0, 0, 0)``.
    """
    labels = np.asarray(labels)
    n = int(n)
    boxes = np.zeros((max(n, 0), 4), dtype=np.int64)
    if n <= 0 or labels.ndim != 2:
        if n > 0:
            raise OodSegError(f'segment_boxes: labels must be (H, W), got {labels.shape}')
        return boxes
    # Vectorised over the labelled pixels: sort them by label (stable: raster order kept
    # inside a label), then min / max of rows and columns per run of equal label.
    flat = labels.ravel()
    idx = np.flatnonzero((flat > 0) & (flat <= n))
    if idx.size == 0:
        return boxes
    lab = flat[idx]
    order = np.argsort(lab, kind='stable')
    lab, idx = lab[order], idx[order]
    rows, cols = np.divmod(idx, labels.shape[1])
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    ends = np.r_[starts[1:], lab.size] - 1
    ids = lab[starts].astype(np.intp) - 1
    boxes[ids, 0] = np.minimum.reduceat(cols, starts)
    boxes[ids, 1] = rows[starts]
    boxes[ids, 2] = np.maximum.reduceat(cols, starts) + 1
    boxes[ids, 3] = rows[ends] + 1
    return boxes


def segment_areas(labels, n):
    """Return the pixel counts of segments 1..n as an (n,) int64 array."""
    labels = np.asarray(labels)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(labels.ravel(), minlength=int(n) + 1)
    return counts[1:int(n) + 1].astype(np.int64)


class SegmentFeatureExtractor:
    """
    MetaSeg-style per-segment features (methods §5) in a fixed, named order.

    Feature order (``feature_names``), F = 5 + 3*8 + 2*C + 2 + 8*M (+ 1) columns:

    1. ``S, S_in, S_bd, S_rel, S_rel_in``: pixel counts of the segment, its inner and
       boundary pixels, ``S/S_bd`` and ``S_in/S_bd``.
    2. For each dispersion map ``entropy`` (H/log C, with 0 log 0 = 0), ``margin``
       (1 - p1 + p2) and ``variation_ratio`` (1 - p1), computed from ``probs`` as given
       (not renormalised): ``<name>_<stat>`` for stat in :data:`STAT_NAMES`.
    3. ``prob_c{c}``: mean softmax probability of class c over the segment.
    4. ``nbr_c{c}``: fraction of the segment's neighbourhood pixels whose argmax class
       (ties: lowest index) is c; all zero when the neighbourhood is empty.
    5. ``centroid_row, centroid_col``: mean row / H and mean column / W (pixel indices).
    6. For each map in ``pgn_names`` and then (if ``moose``) ``moose_mi``,
       ``moose_entropy``: ``<map>_<stat>`` for stat in :data:`STAT_NAMES`.
    7. (if ``region``) ``drivable_overlap``: the fraction of the segment's pixels inside
       the (filled, widened) drivable region given to :meth:`extract` (0 without one).

    Guards: every division by S_bd uses ``max(S_bd, 1)``; means and variances over an
    empty region (no inner or no boundary pixels) are 0. Variances are population
    variances (ddof = 0). A label id in 1..n with no pixels gets an all-zero row.
    Non-finite input values propagate into the features. Per-pixel dispersion values are
    computed in the dtype of ``probs`` (float32: ~1e-7 relative), all sums in float64.
    """

    def __init__(self, n_classes, pgn_names=DEFAULT_PGN_NAMES, moose=True, region=False):
        """Set up for ``n_classes`` (>= 2) softmax classes and the named extra maps."""
        n_classes = int(n_classes)
        if n_classes < 2:
            raise OodSegError(f'SegmentFeatureExtractor: n_classes must be >= 2, '
                              f'got {n_classes}')
        self.n_classes = n_classes
        self.pgn_names = tuple(str(p) for p in pgn_names)
        self.moose = bool(moose)
        self.region = bool(region)
        self.map_names = self.pgn_names + (MOOSE_NAMES if self.moose else ())
        if len(set(self.map_names)) != len(self.map_names):
            raise OodSegError(f'SegmentFeatureExtractor: duplicate map names in '
                              f'{self.map_names}')
        names = list(SIZE_NAMES)
        for d in DISPERSION_NAMES:
            names += [f'{d}_{s}' for s in STAT_NAMES]
        names += [f'prob_c{c}' for c in range(n_classes)]
        names += [f'nbr_c{c}' for c in range(n_classes)]
        names += ['centroid_row', 'centroid_col']
        for m in self.map_names:
            names += [f'{m}_{s}' for s in STAT_NAMES]
        if self.region:
            names.append(REGION_FEATURE)
        self.feature_names = tuple(names)

    @property
    def n_features(self):
        """Return the number of feature columns F."""
        return len(self.feature_names)

    def extract(self, labels, n, probs, maps=None, region=None):
        """
        Compute the (n, F) float64 feature matrix of segments 1..n.

        labels: (H, W) int labels, 0 = background, values in 0..n.
        probs: (C, H, W) softmax probabilities of the global head.
        maps: dict name -> (H, W) score map; must hold every name in ``map_names``
        (other entries are ignored).
        region: (H, W) bool drivable region (``drivable_overlap``; None: overlap 0).
        Row i holds the features of label id i + 1.
        """
        labels = np.asarray(labels)
        n = int(n)
        if labels.ndim != 2:
            raise OodSegError(f'segment features: labels must be (H, W), got {labels.shape}')
        H, W = labels.shape
        C = self.n_classes
        probs = np.asarray(probs)
        if probs.shape != (C, H, W):
            raise OodSegError(f'segment features: probs must have shape {(C, H, W)}, '
                              f'got {probs.shape}')
        maps = {} if maps is None else maps
        map_arrays = []
        for name in self.map_names:
            if name not in maps:
                raise OodSegError(f'segment features: score map {name!r} is missing '
                                  f'(have {sorted(maps)})')
            m = np.asarray(maps[name])
            if m.shape != (H, W):
                raise OodSegError(f'segment features: score map {name!r} has shape '
                                  f'{m.shape}, expected {(H, W)}')
            map_arrays.append(m)
        F = self.n_features
        out = np.zeros((max(n, 0), F), dtype=np.float64)
        if n <= 0:
            return out

        flat = labels.ravel()
        idx = np.flatnonzero(flat != 0)  # via bool: faster than on int labels
        if idx.size == 0:
            return out
        lab = flat[idx].astype(np.intp)
        if lab.min() < 1 or lab.max() > n:
            raise OodSegError(f'segment features: labels must lie in 0..{n}, got '
                              f'{int(lab.min())}..{int(lab.max())}')
        rows, cols = np.divmod(idx, W)

        # Neighbour indices with coordinates clipped into the image: a clipped
        # out-of-image neighbour lands on the pixel itself or on another of its in-image
        # 8-neighbours, so "all neighbours equal" and the neighbourhood set are exact and
        # out-of-image neighbours count as inside.
        def neighbour_rows_cols(r, c):
            r_of = {-1: np.maximum(r - 1, 0) * W, 0: r * W, 1: np.minimum(r + 1, H - 1) * W}
            c_of = {-1: np.maximum(c - 1, 0), 0: c, 1: np.minimum(c + 1, W - 1)}
            return r_of, c_of

        r_of, c_of = neighbour_rows_cols(rows, cols)
        n_fg = idx.size
        buf_i = np.empty(n_fg, dtype=np.intp)
        buf_l = np.empty(n_fg, dtype=flat.dtype)
        buf_b = np.empty(n_fg, dtype=bool)
        bd = np.zeros(n_fg, dtype=bool)
        lab_t = flat[idx]
        for dr, dc in _SHIFTS:
            np.add(r_of[dr], c_of[dc], out=buf_i)
            np.take(flat, buf_i, out=buf_l)
            np.not_equal(buf_l, lab_t, out=buf_b)
            bd |= buf_b
        del buf_i, buf_l, buf_b, r_of, c_of

        # Region ids: inner pixels -> k, boundary pixels -> n + k. Sums over regions go
        # through runs (maximal stretches of equal region id in the raster-ordered pixel
        # list): np.add.reduceat per run (float64 accumulation), then np.bincount over
        # the run ids. Same result as np.bincount over pixels, about 3x cheaper.
        g = lab + n * bd
        n_g = 2 * n + 1
        brk = np.empty(n_fg, dtype=bool)
        brk[0] = True
        np.not_equal(g[1:], g[:-1], out=brk[1:])
        starts = np.flatnonzero(brk)
        g_run = g[starts]
        lab_run = lab[starts]
        del brk

        def region_sums(x):
            """Return the (2n + 1,) float64 sums of x (n_fg,) per region id."""
            run = np.add.reduceat(x, starts, dtype=np.float64)
            return np.bincount(g_run, weights=run, minlength=n_g)

        def segment_sums(x):
            """Return the (n,) float64 sums of x (n_fg,) per segment."""
            run = np.add.reduceat(x, starts, dtype=np.float64)
            return np.bincount(lab_run, weights=run, minlength=n + 1)[1:]

        cnt_g = np.bincount(g, minlength=n_g).astype(np.float64)
        s_in = cnt_g[1:n + 1]
        s_bd = cnt_g[n + 1:]
        s_all = s_in + s_bd
        s_bd1 = np.maximum(s_bd, 1.0)
        inv_in = 1.0 / np.maximum(s_in, 1.0)
        inv_bd = 1.0 / s_bd1
        inv_all = 1.0 / np.maximum(s_all, 1.0)
        frac_cross = s_in * s_bd * inv_all  # for the segment variance from the parts

        out[:, 0] = s_all
        out[:, 1] = s_in
        out[:, 2] = s_bd
        out[:, 3] = s_all / s_bd1
        out[:, 4] = s_in / s_bd1
        col = 5

        def stats(x):
            """Fill the 8 STAT_NAMES columns for the per-pixel values x (n_fg,)."""
            nonlocal col
            sum_g = region_sums(x)
            mean_g = np.empty(n_g, dtype=np.float64)
            mean_g[0] = 0.0
            mean_in = sum_g[1:n + 1] * inv_in
            mean_bd = sum_g[n + 1:] * inv_bd
            mean_g[1:n + 1] = mean_in
            mean_g[n + 1:] = mean_bd
            mean = (sum_g[1:n + 1] + sum_g[n + 1:]) * inv_all
            dev = x - mean_g[g]
            dev *= dev
            m2_g = region_sums(dev)
            m2_in = m2_g[1:n + 1]
            m2_bd = m2_g[n + 1:]
            d_mean = mean_in - mean_bd
            block = out[:, col:col + 8]
            block[:, 0] = mean
            block[:, 1] = mean_in
            block[:, 2] = mean_bd
            block[:, 3] = mean * s_all * inv_bd
            block[:, 4] = mean_in * s_in * inv_bd
            block[:, 5] = (m2_in + m2_bd + frac_cross * d_mean * d_mean) * inv_all
            block[:, 6] = m2_in * inv_in
            block[:, 7] = m2_bd * inv_bd
            col += 8

        pflat = probs.reshape(C, H * W)
        p = np.take(pflat, idx, axis=1)  # (C, n_fg), in the dtype of probs
        if p.dtype not in (np.float32, np.float64):
            p = p.astype(np.float64)
        # Dispersion maps in the precision of probs (float32 normally), accumulated in
        # float64. Top-2 by a running max (cheaper than np.partition).
        tiny = np.finfo(p.dtype).tiny
        p1 = p[0].copy()
        p2 = np.full_like(p1, -np.inf)
        ent = p[0] * np.log(np.maximum(p[0], tiny))
        tmp = np.empty_like(p1)
        for c in range(1, C):
            pc = p[c]
            np.minimum(p1, pc, out=tmp)
            np.maximum(p2, tmp, out=p2)
            np.maximum(p1, pc, out=p1)
            np.maximum(pc, tiny, out=tmp)
            np.log(tmp, out=tmp)
            tmp *= pc
            ent += tmp
        ent *= -1.0 / np.log(C)
        stats(ent)
        stats(1.0 - p1 + p2)
        stats(1.0 - p1)

        for c in range(C):
            out[:, col + c] = segment_sums(p[c]) * inv_all
        col += C

        # Neighbourhood: (segment, pixel) pairs with a differing label, deduplicated;
        # only boundary pixels have such neighbours.
        jb = np.flatnonzero(bd)
        if jb.size:
            r_of, c_of = neighbour_rows_cols(rows[jb], cols[jb])
            nb = np.stack([r_of[dr] + c_of[dc] for dr, dc in _SHIFTS])  # (8, n_bd)
            lab_b = lab[jb]
            sel_s, sel_j = np.nonzero(flat[nb] != lab_b)
            hw = H * W
            key = np.unique(lab_b[sel_j] * hw + nb[sel_s, sel_j])
            seg_k, pix = np.divmod(key, hw)
            pix_u, inv = np.unique(pix, return_inverse=True)
            cls = np.take(pflat, pix_u, axis=1).argmax(axis=0)[inv]
            hist = np.bincount(seg_k * C + cls, minlength=(n + 1) * C).reshape(n + 1, C)[1:]
            tot = hist.sum(axis=1, keepdims=True)
            out[:, col:col + C] = hist / np.maximum(tot, 1)
        col += C

        out[:, col] = segment_sums(rows) * inv_all / H
        out[:, col + 1] = segment_sums(cols) * inv_all / W
        col += 2

        for m in map_arrays:
            stats(np.take(m.ravel(), idx))
        if self.region and region is not None:
            region = np.asarray(region, dtype=bool)
            if region.shape != (H, W):
                raise OodSegError(f'segment features: region has shape {region.shape}, '
                                  f'expected {(H, W)}')
            out[:, col] = segment_sums(np.take(region.ravel(), idx)) * inv_all
        return out
