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

from dataclasses import dataclass

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


@dataclass
class Segment:
    """One OoD segment. ``bbox`` = (x0, y0, x1, y1) in frame pixels, end exclusive."""

    id: int  # noqa: A003 - vision_msgs naming; value in FrameResult.instances, 0 = dropped
    bbox: tuple
    area: int               # frame pixels
    score: float            # mean normalised heatmap over the segment
    meta_score: float       # P(true OoD) from the meta classifier (1 - P(false positive))
    kept: bool


def segment_records(labels, n, heat, frame_size, meta_score, keep):
    """
    Build the records of segments 1..n at frame size and the kept-instance ids.

    ``labels`` (h, w) int32 and ``heat`` (the normalised heatmap) at decoder resolution,
    ``frame_size`` (H, W), ``meta_score`` (n,) P(true OoD), ``keep`` (n,) bool. Boxes and
    areas are scaled to the frame; kept segments get ids 1..k in label order (0:
    dropped). Returns (segments in label order, ids (h, w) uint16).
    """
    lh, lw = heat.shape
    fh, fw = frame_size
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)[1:]
    sums = np.bincount(flat, weights=heat.ravel(), minlength=n + 1)[1:]
    new_ids = np.zeros(n + 1, np.uint16)
    new_ids[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    sy, sx = fh / lh, fw / lw
    x0, y0, x1, y1 = segment_boxes(labels, n).T
    columns = zip(new_ids[1:].tolist(), np.floor(x0 * sx).astype(int).tolist(),
                  np.floor(y0 * sy).astype(int).tolist(),
                  np.minimum(fw, np.ceil(x1 * sx)).astype(int).tolist(),
                  np.minimum(fh, np.ceil(y1 * sy)).astype(int).tolist(),
                  np.round(areas * (sx * sy)).astype(int).tolist(),
                  (sums / np.maximum(areas, 1)).tolist(), np.asarray(meta_score).tolist(),
                  np.asarray(keep).tolist())
    segments = [Segment(i, (a, b, c, d), area, score, meta, k)
                for i, a, b, c, d, area, score, meta, k in columns]
    return segments, new_ids[labels]


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
        Row i holds the features of label id i + 1. The groups, in column order: the
        boundary split (sizes), dispersion, region means (class probabilities), the
        neighbourhood's classes, centroids, score-map statistics, drivable overlap.
        """
        labels, n, probs, map_arrays = self._checked(labels, n, probs, maps)
        out = np.zeros((max(n, 0), self.n_features), dtype=np.float64)
        if n <= 0:
            return out
        px = SegmentPixels.of(labels, n)
        if px is None:
            return out
        C = self.n_classes
        p = np.take(probs.reshape(C, -1), px.idx, axis=1)  # (C, n_fg), in the dtype of probs
        if p.dtype not in (np.float32, np.float64):
            p = p.astype(np.float64)
        blocks = [px.size_features(), dispersion_features(px, p), class_means(px, p),
                  neighbour_classes(px, probs), px.centroids()]
        blocks += [px.stats(np.take(m.ravel(), px.idx)) for m in map_arrays]
        if self.region:
            blocks.append(region_overlap(px, region))
        np.concatenate(blocks, axis=1, out=out)
        return out

    def _checked(self, labels, n, probs, maps):
        """Check the shapes; return (labels, n, probs, map arrays in ``map_names`` order)."""
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
        return labels, n, probs, map_arrays


class SegmentPixels:
    """
    The foreground pixels of segments 1..n, split into inner and boundary pixels.

    Built by :meth:`of`. Region ids: inner pixels of segment k -> k, boundary pixels ->
    n + k. Sums over regions go through runs (maximal stretches of equal region id in the
    raster-ordered pixel list): np.add.reduceat per run (float64 accumulation), then
    np.bincount over the run ids; the same result as np.bincount over pixels, about 3x
    cheaper.
    """

    @classmethod
    def of(cls, labels: np.ndarray, n: int):
        """Return the pixels of ``labels`` (H, W) with ids 1..n; None when there are none."""
        flat = labels.ravel()
        idx = np.flatnonzero(flat != 0)  # via bool: faster than on int labels
        if idx.size == 0:
            return None
        lab = flat[idx].astype(np.intp)
        if lab.min() < 1 or lab.max() > n:
            raise OodSegError(f'segment features: labels must lie in 0..{n}, got '
                              f'{int(lab.min())}..{int(lab.max())}')
        return cls(labels, n, idx, lab)

    def __init__(self, labels, n, idx, lab):
        self.shape = labels.shape
        self.flat = labels.ravel()
        self.n, self.idx, self.lab = n, idx, lab
        self.rows, self.cols = np.divmod(idx, self.shape[1])
        self.bd = self._boundary()
        n_g = self.n_g = 2 * n + 1
        g = self.g = lab + n * self.bd
        brk = np.empty(idx.size, dtype=bool)
        brk[0] = True
        np.not_equal(g[1:], g[:-1], out=brk[1:])
        self.starts = np.flatnonzero(brk)
        self.g_run = g[self.starts]
        self.lab_run = lab[self.starts]
        cnt_g = np.bincount(g, minlength=n_g).astype(np.float64)
        self.s_in = cnt_g[1:n + 1]
        self.s_bd = cnt_g[n + 1:]
        self.s_all = self.s_in + self.s_bd
        self.s_bd1 = np.maximum(self.s_bd, 1.0)
        self.inv_in = 1.0 / np.maximum(self.s_in, 1.0)
        self.inv_bd = 1.0 / self.s_bd1
        self.inv_all = 1.0 / np.maximum(self.s_all, 1.0)
        self.frac_cross = self.s_in * self.s_bd * self.inv_all  # segment variance from parts

    def neighbours(self, rows, cols):
        """
        Neighbour offsets of pixels (rows, cols): (row offsets * W, column) per shift.

        Coordinates are clipped into the image: a clipped out-of-image neighbour lands on
        the pixel itself or on another of its in-image 8-neighbours, so "all neighbours
        equal" and the neighbourhood set are exact and out-of-image neighbours count as
        inside.
        """
        H, W = self.shape
        r_of = {-1: np.maximum(rows - 1, 0) * W, 0: rows * W,
                1: np.minimum(rows + 1, H - 1) * W}
        c_of = {-1: np.maximum(cols - 1, 0), 0: cols, 1: np.minimum(cols + 1, W - 1)}
        return r_of, c_of

    def _boundary(self) -> np.ndarray:
        """Return the (n_fg,) bool mask of boundary pixels (a neighbour of another label)."""
        r_of, c_of = self.neighbours(self.rows, self.cols)
        n_fg = self.idx.size
        buf_i = np.empty(n_fg, dtype=np.intp)
        buf_l = np.empty(n_fg, dtype=self.flat.dtype)
        buf_b = np.empty(n_fg, dtype=bool)
        bd = np.zeros(n_fg, dtype=bool)
        lab_t = self.flat[self.idx]
        for dr, dc in _SHIFTS:
            np.add(r_of[dr], c_of[dc], out=buf_i)
            np.take(self.flat, buf_i, out=buf_l)
            np.not_equal(buf_l, lab_t, out=buf_b)
            bd |= buf_b
        return bd

    def region_sums(self, x):
        """Return the (2n + 1,) float64 sums of x (n_fg,) per region id."""
        run = np.add.reduceat(x, self.starts, dtype=np.float64)
        return np.bincount(self.g_run, weights=run, minlength=self.n_g)

    def segment_sums(self, x):
        """Return the (n,) float64 sums of x (n_fg,) per segment."""
        run = np.add.reduceat(x, self.starts, dtype=np.float64)
        return np.bincount(self.lab_run, weights=run, minlength=self.n + 1)[1:]

    def size_features(self) -> np.ndarray:
        """Boundary group (n, 5): ``S, S_in, S_bd, S_rel, S_rel_in``."""
        return np.stack([self.s_all, self.s_in, self.s_bd, self.s_all / self.s_bd1,
                         self.s_in / self.s_bd1], axis=1)

    def stats(self, x) -> np.ndarray:
        """Return the (n, 8) :data:`STAT_NAMES` columns of per-pixel values x (n_fg,)."""
        n = self.n
        sum_g = self.region_sums(x)
        mean_g = np.empty(self.n_g, dtype=np.float64)
        mean_g[0] = 0.0
        mean_in = sum_g[1:n + 1] * self.inv_in
        mean_bd = sum_g[n + 1:] * self.inv_bd
        mean_g[1:n + 1] = mean_in
        mean_g[n + 1:] = mean_bd
        mean = (sum_g[1:n + 1] + sum_g[n + 1:]) * self.inv_all
        dev = x - mean_g[self.g]
        dev *= dev
        m2_g = self.region_sums(dev)
        m2_in = m2_g[1:n + 1]
        m2_bd = m2_g[n + 1:]
        d_mean = mean_in - mean_bd
        block = np.empty((n, 8), dtype=np.float64)
        block[:, 0] = mean
        block[:, 1] = mean_in
        block[:, 2] = mean_bd
        block[:, 3] = mean * self.s_all * self.inv_bd
        block[:, 4] = mean_in * self.s_in * self.inv_bd
        block[:, 5] = (m2_in + m2_bd + self.frac_cross * d_mean * d_mean) * self.inv_all
        block[:, 6] = m2_in * self.inv_in
        block[:, 7] = m2_bd * self.inv_bd
        return block

    def centroids(self) -> np.ndarray:
        """Return (n, 2): mean row / H and mean column / W of each segment."""
        H, W = self.shape
        return np.stack([self.segment_sums(self.rows) * self.inv_all / H,
                         self.segment_sums(self.cols) * self.inv_all / W], axis=1)


def dispersion_features(px: SegmentPixels, p: np.ndarray) -> np.ndarray:
    """
    Dispersion group (n, 24): entropy, margin and variation ratio statistics.

    ``p`` (C, n_fg) are the foreground pixels' probabilities; per-pixel values in their
    precision (float32 normally), accumulated in float64. Top-2 by a running max
    (cheaper than np.partition).
    """
    C = p.shape[0]
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
    return np.concatenate([px.stats(ent), px.stats(1.0 - p1 + p2), px.stats(1.0 - p1)],
                          axis=1)


def class_means(px: SegmentPixels, p: np.ndarray) -> np.ndarray:
    """Region group (n, C): mean softmax probability of each class over the segment."""
    return np.stack([px.segment_sums(p[c]) * px.inv_all for c in range(p.shape[0])], axis=1)


def neighbour_classes(px: SegmentPixels, probs: np.ndarray) -> np.ndarray:
    """
    Neighbours group (n, C): class fractions of each segment's neighbourhood pixels.

    (segment, pixel) pairs with a differing label, deduplicated; only boundary pixels
    have such neighbours. A pixel's class is the argmax of ``probs`` (C, H, W).
    """
    C = probs.shape[0]
    out = np.zeros((px.n, C), dtype=np.float64)
    jb = np.flatnonzero(px.bd)
    if not jb.size:
        return out
    r_of, c_of = px.neighbours(px.rows[jb], px.cols[jb])
    nb = np.stack([r_of[dr] + c_of[dc] for dr, dc in _SHIFTS])  # (8, n_bd)
    lab_b = px.lab[jb]
    sel_s, sel_j = np.nonzero(px.flat[nb] != lab_b)
    hw = px.flat.size
    key = np.unique(lab_b[sel_j] * hw + nb[sel_s, sel_j])
    seg_k, pix = np.divmod(key, hw)
    pix_u, inv = np.unique(pix, return_inverse=True)
    cls = np.take(probs.reshape(C, -1), pix_u, axis=1).argmax(axis=0)[inv]
    hist = np.bincount(seg_k * C + cls, minlength=(px.n + 1) * C).reshape(px.n + 1, C)[1:]
    tot = hist.sum(axis=1, keepdims=True)
    out[:] = hist / np.maximum(tot, 1)
    return out


def region_overlap(px: SegmentPixels, region) -> np.ndarray:
    """Return (n, 1): the fraction of each segment inside ``region`` (None: zeros)."""
    if region is None:
        return np.zeros((px.n, 1), dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if region.shape != px.shape:
        raise OodSegError(f'segment features: region has shape {region.shape}, '
                          f'expected {px.shape}')
    return (px.segment_sums(np.take(region.ravel(), px.idx)) * px.inv_all)[:, None]
