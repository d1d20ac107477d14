"""
Per-frame processing, ROS-free: numpy frame in, :class:`FrameResult` out.

Steps (one implementation, shared by the node, the evaluator and bag replay):

1. preprocess: resize the RGB frame to the model input size (bilinear, aspect ratio
   not kept: the network was trained on full frames of the same camera);
2. backend: the network graph returns ``semantic`` at input size and ``probs`` plus the
   score maps at decoder resolution (stride 4);
3. heatmap: the chosen score, normalised to [0, 1] with the bundle's constants
   (``(s - lo) / (hi - lo)``, clipped), upsampled bilinearly to frame size;
4. segments: threshold the normalised decoder-resolution heatmap, 8-connected
   components, minimum size; per-segment features (:mod:`ood_seg_ros.segments`);
5. meta classifier: P(false positive) per segment; segments above its threshold are
   dropped; kept segments get consecutive ids in the frame-size instance mask.
"""

from dataclasses import dataclass, field
import time
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from .errors import OodSegError
from .meta import MetaClassifier
from .scores import ALL_SCORES
from .segments import find_segments, segment_boxes, SegmentFeatureExtractor

MAX_FRAME_PIXELS = 4096 * 4096
DEFAULT_RUNTIME = {
    'heatmap_score': 'moose_max_logit',
    'normalisation': {},
    'segment_threshold': 0.5,
    'min_segment_px': 64,
    'meta_threshold': 0.5,
    'meta_pgn_names': ['pgn_uni_p0.5', 'pgn_oh_p1', 'pgn_uni_p1', 'pgn_uni_p2'],
}


@dataclass
class Segment:
    """One OoD segment. ``bbox`` = (x0, y0, x1, y1) in frame pixels, end exclusive."""

    id: int  # noqa: A003 - vision_msgs naming; value in FrameResult.instances, 0 = dropped
    bbox: tuple
    area: int               # frame pixels
    score: float            # mean normalised heatmap over the segment
    meta_score: float       # P(true OoD) from the meta classifier (1 - P(false positive))
    kept: bool


@dataclass
class FrameResult:
    """Everything the node publishes for one frame (frame resolution)."""

    heatmap: np.ndarray         # (H, W) float32 in [0, 1]
    semantic: np.ndarray        # (H, W) uint8 class ids
    instances: np.ndarray       # (H, W) uint16, kept segment ids, 0 = none
    segments: List[Segment]
    timings: Dict[str, float] = field(default_factory=dict)   # milliseconds
    score_name: str = ''


def upsample_map(m: np.ndarray, size, linear: bool = True) -> np.ndarray:
    """Resize a (h, w) map to ``size`` = (H, W): bilinear (half-pixel centres) or nearest."""
    h, w = size
    if m.shape == (h, w):
        return m
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR if linear else
                      cv2.INTER_NEAREST)


def normalise(score: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map a raw score to [0, 1]: (s - lo) / (hi - lo), clipped."""
    scale = 1.0 / max(hi - lo, 1e-12)
    return np.clip((score - lo) * scale, 0.0, 1.0).astype(np.float32, copy=False)


def check_frame(frame, max_pixels: int = MAX_FRAME_PIXELS) -> None:
    """Raise OodSegError unless ``frame`` is a non-empty uint8 (H, W, 3) array."""
    if not isinstance(frame, np.ndarray):
        raise OodSegError(f'frame must be a numpy array, got {type(frame).__name__}')
    if frame.dtype != np.uint8:
        raise OodSegError(f'frame must be uint8, got {frame.dtype}')
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise OodSegError(f'frame must be (H, W, 3) RGB, got shape {frame.shape}')
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise OodSegError(f'frame is empty: shape {frame.shape}')
    if frame.shape[0] * frame.shape[1] > max_pixels:
        raise OodSegError(f'frame of {frame.shape[1]}x{frame.shape[0]} exceeds the '
                          f'{max_pixels} pixel limit')


def usable_score(runtime: dict) -> str:
    """
    Return the bundle's heatmap score if it has normalisation constants, else moose_entropy.

    An uncalibrated bundle (no ``ood-seg eval --calibrate`` yet) can still run with a
    score whose bounds are natural ([0, log C]).
    """
    score = (runtime or {}).get('heatmap_score')
    if score and score in (runtime or {}).get('normalisation', {}):
        return score
    return 'moose_entropy'


class NonFiniteOutput(OodSegError):
    """The network returned NaN/inf in the heatmap score: the frame gives no result."""

    kind = 'nonfinite'


class Pipeline:
    """Frame -> FrameResult with one backend, one heatmap score and one meta classifier."""

    def __init__(self, backend, class_names: Sequence[str], runtime: dict,
                 meta: Optional[MetaClassifier] = None, score: Optional[str] = None,
                 threshold: Optional[float] = None, max_pixels: int = MAX_FRAME_PIXELS):
        self.backend = backend
        self.class_names = list(class_names)
        self.runtime = {**DEFAULT_RUNTIME, **(runtime or {})}
        self.meta = meta
        self.max_pixels = max_pixels
        self.extractor = SegmentFeatureExtractor(
            len(self.class_names), pgn_names=tuple(self.runtime['meta_pgn_names']),
            moose=True)
        if meta is not None and list(meta.feature_names) != list(self.extractor.feature_names):
            raise OodSegError('meta classifier features do not match this pipeline '
                              '(retrain it with ood-seg train-meta)')
        self.input_size = tuple(backend.input_size)
        self.set_score(score or self.runtime['heatmap_score'])
        self.set_threshold(self.runtime['segment_threshold'] if threshold is None
                           else threshold)

    # -- construction ----------------------------------------------------------------
    @staticmethod
    def required_outputs(runtime: dict, score: Optional[str] = None,
                         all_scores: bool = False) -> List[str]:
        """Network outputs the pipeline needs: probs, heatmap score, feature maps."""
        rt = {**DEFAULT_RUNTIME, **(runtime or {})}
        if all_scores:
            return ['probs'] + list(ALL_SCORES)
        names = {'probs', score or rt['heatmap_score'], 'moose_mi', 'moose_entropy'}
        names.update(rt['meta_pgn_names'])
        return ['probs'] + [n for n in ALL_SCORES if n in names]

    @classmethod
    def from_bundle(cls, bundle_path, backend: str = 'auto', device: str = 'auto',
                    fp16: bool = False, score: Optional[str] = None,
                    threshold: Optional[float] = None, all_scores: bool = False,
                    **backend_options) -> 'Pipeline':
        """Load bundle, meta classifier and backend; ``all_scores`` lets the score change."""
        from .model.bundle import read_bundle_json
        from .runtime import make_backend
        from pathlib import Path
        doc = read_bundle_json(bundle_path)
        runtime = doc.get('runtime', {})
        outputs = cls.required_outputs(runtime, score, all_scores)
        be = make_backend(backend, bundle_path, outputs, device=device, fp16=fp16,
                          **backend_options)
        meta = None
        meta_path = Path(bundle_path) / 'meta.json'
        if meta_path.exists():
            meta = MetaClassifier.load(meta_path)
        else:
            import logging
            logging.getLogger(__name__).error(
                'bundle %s has no meta.json: meta classifier OFF, every segment is kept '
                '(train one with ood-seg train-meta)', bundle_path)
        return cls(be, doc['config']['class_names'], runtime, meta, score, threshold)

    # -- settings --------------------------------------------------------------------
    def set_score(self, name: str) -> None:
        """Choose the heatmap score; it must be a backend output with normalisation."""
        if name not in ALL_SCORES:
            raise OodSegError(f'unknown heatmap score {name!r}')
        if name not in self.backend.output_names:
            raise OodSegError(f'heatmap score {name!r} is not computed by this backend '
                              f'(outputs: {", ".join(self.backend.output_names)})')
        self.norm = self._normalisation(name)
        self.score_name = name

    def _normalisation(self, name: str):
        table = self.runtime.get('normalisation', {})
        if name in table:
            lo, hi = table[name]
            return float(lo), float(hi)
        c = len(self.class_names)
        natural = {'msp': (0.0, 1.0 - 1.0 / c), 'moose_msp': (0.0, 1.0 - 1.0 / c),
                   'entropy': (0.0, float(np.log(c))),
                   'moose_entropy': (0.0, float(np.log(c))),
                   'moose_mi': (0.0, float(np.log(c)))}
        if name in natural:
            return natural[name]
        raise OodSegError(f'the bundle has no normalisation for score {name!r}; '
                          f'calibrate it with ood-seg eval --calibrate')

    def set_threshold(self, value: float) -> None:
        """Segment threshold on the normalised heatmap, in (0, 1)."""
        value = float(value)
        if not 0.0 < value < 1.0:
            raise OodSegError(f'segment threshold must be in (0, 1), got {value}')
        self.threshold = value

    # -- processing ------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """Check the frame and resize it to the model input size (bilinear)."""
        check_frame(frame, self.max_pixels)
        h, w = self.input_size
        if frame.shape[:2] != (h, w):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(frame)

    def infer(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        """Preprocess and run the backend; raw outputs at network resolution."""
        return self.backend.infer(self.preprocess(frame))

    def process(self, frame: np.ndarray) -> FrameResult:
        """Run the whole per-frame path on an RGB uint8 (H, W, 3) frame."""
        t0 = time.perf_counter()
        img = self.preprocess(frame)
        t1 = time.perf_counter()
        out = self.backend.infer(img)
        t2 = time.perf_counter()
        result = self.postprocess(out, frame.shape[:2])
        t3 = time.perf_counter()
        result.timings.update({'preprocess_ms': (t1 - t0) * 1e3,
                               'inference_ms': (t2 - t1) * 1e3,
                               'postprocess_ms': (t3 - t2) * 1e3,
                               'total_ms': (t3 - t0) * 1e3})
        return result

    def segment(self, out: Dict[str, np.ndarray]):
        """
        Normalised decoder-resolution heatmap, segment labels, count and features.

        The one segment path shared by :meth:`postprocess`, the evaluator and meta
        classifier training. Returns (heatmap_low, labels_low int32, n, features (n, F)).
        """
        raw = out[self.score_name]
        if not np.isfinite(raw).all():   # cheap: decoder resolution, one pass
            bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
            raise NonFiniteOutput(f'heatmap score {self.score_name}: {bad} of {raw.size} '
                                  f'values are NaN/inf (broken weights or backend)')
        low = normalise(raw, *self.norm)
        lh, lw = low.shape
        # min_segment_px is given at model input resolution; convert to decoder pixels.
        ih, iw = self.input_size
        min_low = max(1, int(round(self.runtime['min_segment_px'] * lh * lw / (ih * iw))))
        labels, n = find_segments(low, self.threshold, min_low)
        feats = np.zeros((0, len(self.extractor.feature_names)))
        if n:
            maps = {k: out[k] for k in self.extractor.map_names}
            feats = self.extractor.extract(labels, n, out['probs'], maps)
        return low, labels, n, feats

    def postprocess(self, out: Dict[str, np.ndarray], frame_size) -> FrameResult:
        """Heatmap, semantic, segments and meta classification from network outputs."""
        fh, fw = frame_size
        t0 = time.perf_counter()
        low, labels, n, feats = self.segment(out)
        t1 = time.perf_counter()
        heatmap = upsample_map(low, (fh, fw))
        semantic = upsample_map(out['semantic'].astype(np.uint8), (fh, fw), linear=False)
        t2 = time.perf_counter()
        lh, lw = low.shape
        segments: List[Segment] = []
        instances_low = np.zeros((lh, lw), np.uint16)
        if n:
            if self.meta is not None:
                p_fp = self.meta.predict_fp_proba(feats)
                keep = p_fp <= self.meta.threshold
            else:
                p_fp = np.zeros(n)
                keep = np.ones(n, bool)
            boxes = segment_boxes(labels, n)
            areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            sums = np.bincount(labels.ravel(), weights=low.ravel(), minlength=n + 1)[1:]
            new_ids = np.zeros(n + 1, np.uint16)
            new_ids[1:][keep] = np.arange(1, int(keep.sum()) + 1)
            instances_low = new_ids[labels]
            sy, sx = fh / lh, fw / lw
            for i in range(n):
                x0, y0, x1, y1 = boxes[i]
                segments.append(Segment(
                    id=int(new_ids[i + 1]),
                    bbox=(int(np.floor(x0 * sx)), int(np.floor(y0 * sy)),
                          min(fw, int(np.ceil(x1 * sx))), min(fh, int(np.ceil(y1 * sy)))),
                    area=int(round(areas[i] * sx * sy)),
                    score=float(sums[i] / max(areas[i], 1)),
                    meta_score=float(1.0 - p_fp[i]), kept=bool(keep[i])))
        t3 = time.perf_counter()
        instances = upsample_map(instances_low, (fh, fw), linear=False)
        t4 = time.perf_counter()
        timings = {'segments_ms': (t1 - t0) * 1e3, 'heatmap_ms': (t2 - t1) * 1e3,
                   'meta_ms': (t3 - t2) * 1e3, 'instances_ms': (t4 - t3) * 1e3}
        return FrameResult(heatmap, semantic, instances, segments, timings, self.score_name)
