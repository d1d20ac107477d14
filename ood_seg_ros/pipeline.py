"""
Per-frame processing, ROS-free: numpy frame in, :class:`FrameResult` out.

Steps (one implementation, shared by the node, the evaluator and bag replay):

1. preprocess: fit the RGB frame into the model input size keeping its aspect
   (:class:`Letterbox`: scaled, placed top-left, the rest filled by mirroring the frame);
   ``geometry='stretch'`` resizes to the input size instead;
2. backend: the network graph returns ``semantic`` at input size and ``probs`` plus the
   score maps at decoder resolution (stride 4); every output is cropped to the frame's
   content before use;
3. heatmap: the chosen score, normalised to [0, 1] with the bundle's constants for this
   input size (:class:`ood_seg_ros.heatmap_scale.HeatmapScale`), upsampled bilinearly to
   frame size;
4. segments: threshold the normalised decoder-resolution heatmap, 8-connected
   components, minimum size; per-segment features (:mod:`ood_seg_ros.segments`);
5. meta classifier: P(false positive) per segment; segments above its threshold are
   dropped; kept segments get consecutive ids in the frame-size instance mask.

Obstacle mode (:mod:`ood_seg_ros.obstacle`): ``region='drivable'`` weighs the score by the
drivable-area prior before normalising it (normalisation, threshold and meta classifier
of that mode: ``runtime.sizes[size].regions.drivable``, ``meta_drivable.json``) and keeps
only segments that touch the drivable region; ``band`` fuses a second, high-resolution
pass over the road band; ``flip`` averages the region-weighted score of the frame with
that of its mirror image (each pass weighed by its own prior).
:meth:`Pipeline.set_region` switches the mode of a running pipeline (no rebuild).
"""

from dataclasses import dataclass, field, replace
import logging
from pathlib import Path
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .errors import OodSegError
from .heatmap_scale import HeatmapScale
from .imagecodec import MAX_FRAME_PIXELS
from .meta import MetaClassifier
from .model.budget import check_memory
from .model.bundle import Bundle, meta_file, read_bundle_json
from .model.config import ModelConfig, parse_size, size_key
from .obstacle import (band_input_size, band_rows, drivable_ids, drivable_mask, fuse_band,
                       local_contrast, mirrored_back, ObstacleSettings, region_distance,
                       region_score, region_weight, REGIONS)
from .runtime import auto_backend, make_backend
from .runtime.int8_graph import PRECISIONS
from .scores import ALL_SCORES, natural_range, SCORES
from .segments import DEFAULT_PGN_NAMES, find_segments, MOOSE_NAMES, Segment, \
    segment_records, SegmentFeatureExtractor

LOG = logging.getLogger(__name__)

DECODER_STRIDE = 4     # score maps are at 1/4 of the network input (DeepLabv3+ decoder)
GEOMETRIES = ('letterbox', 'stretch')
DEFAULT_RUNTIME = {
    'heatmap_score': 'moose_max_logit',
    'normalisation': {},
    'segment_threshold': 0.5,
    'min_segment_px': 64,
    'meta_threshold': 0.5,
    'meta_pgn_names': list(DEFAULT_PGN_NAMES),
}


@dataclass
class FrameResult:
    """Everything the node publishes for one frame (frame resolution)."""

    heatmap: np.ndarray         # (H, W) float32 in [0, 1]
    semantic: np.ndarray        # (H, W) uint8 class ids
    instances: np.ndarray       # (H, W) uint16, kept segment ids, 0 = none
    segments: List[Segment]
    timings: Dict[str, float] = field(default_factory=dict)   # milliseconds
    score_name: str = ''


@dataclass(frozen=True)
class Letterbox:
    """
    Where a frame sits inside the network input: scaled to ``content`` (H, W) at (0, 0).

    ``frame`` and ``network`` are the frame and network input sizes (H, W); the scale
    min(network_h / frame_h, network_w / frame_w) keeps the aspect; the content box is
    cropped back out of every output (:meth:`crop`).
    """

    frame: Tuple[int, int]
    network: Tuple[int, int]
    content: Tuple[int, int]

    @classmethod
    def fit(cls, frame_size, input_size, geometry: str = 'letterbox') -> 'Letterbox':
        """Fit a frame of ``frame_size`` (H, W) into ``input_size``."""
        fh, fw = (int(v) for v in frame_size)
        ih, iw = (int(v) for v in input_size)
        if geometry == 'stretch':
            return cls((fh, fw), (ih, iw), (ih, iw))
        s = min(ih / fh, iw / fw)
        ch = min(ih, max(1, int(round(fh * s))))
        cw = min(iw, max(1, int(round(fw * s))))
        return cls((fh, fw), (ih, iw), (ch, cw))

    @property
    def padded(self) -> bool:
        """Tell whether the content leaves part of the input unused."""
        return self.content != self.network

    def place(self, frame: np.ndarray) -> np.ndarray:
        """Resize ``frame`` to the content size and pad it to the input size (mirrored)."""
        ch, cw = self.content
        if frame.shape[:2] != (ch, cw):
            frame = cv2.resize(frame, (cw, ch), interpolation=cv2.INTER_LINEAR)
        if self.padded:
            ih, iw = self.network
            bottom, right = ih - ch, iw - cw
            mode = (cv2.BORDER_REFLECT_101 if bottom < ch and right < cw
                    else cv2.BORDER_REPLICATE)
            frame = cv2.copyMakeBorder(frame, 0, bottom, 0, right, mode)
        return np.ascontiguousarray(frame)

    def crop(self, out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Cut the content region out of every network output (input or decoder res)."""
        if not self.padded:
            return out
        ih, iw = self.network
        ch, cw = self.content
        res = {}
        for k, v in out.items():
            h, w = v.shape[-2:]
            res[k] = v[..., :max(1, int(round(ch * h / ih))), :max(1, int(round(cw * w / iw)))]
        return res


def upsample_map(m: np.ndarray, size, linear: bool = True) -> np.ndarray:
    """Resize a (h, w) map to ``size`` = (H, W): bilinear (half-pixel centres) or nearest."""
    h, w = size
    if m.shape == (h, w):
        return m
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR if linear else
                      cv2.INTER_NEAREST)


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


def runtime_for_size(runtime: dict, input_size, region: str = 'all') -> Tuple[dict, bool]:
    """
    Runtime settings for a network input size and region mode, and whether calibrated.

    ``runtime.sizes['HxW']`` (heatmap score, normalisation, segment threshold) overrides
    the top-level settings, which hold for the bundle's own input size
    (``runtime.calibrated_size``; bundles without it count as calibrated at any size).
    A region mode other than ``all`` takes ``runtime.sizes['HxW'].regions[region]`` over
    that and keeps the ``all`` normalisation as ``base_normalisation`` (the lower bounds
    of the region score); uncalibrated, each score's normalisation becomes (0, hi - lo).
    """
    rt = {**DEFAULT_RUNTIME, **(runtime or {})}
    entry = ((runtime or {}).get('sizes') or {}).get(size_key(input_size)) or {}
    own = {k: v for k, v in entry.items() if k != 'regions'}
    if own:
        rt = {**rt, **own}
    calibrated = bool(own) or rt.get('calibrated_size') in (None, size_key(input_size))
    if region == 'all':
        return rt, calibrated
    base = dict(rt.get('normalisation') or {})
    rt['base_normalisation'] = base
    mode = (entry.get('regions') or {}).get(region)
    if mode:
        return {**rt, **mode}, True
    rt['normalisation'] = {k: [0.0, float(hi) - float(lo)] for k, (lo, hi) in base.items()}
    return rt, False


def default_region(runtime: dict, region: Optional[str] = None) -> str:
    """
    Return ``region``, or where it is None or empty the bundle's: ``runtime.heatmap_region``.

    Bundles without the key run the ``all`` mode. The shipped bundle names the mode its
    measurements chose (model card, "Obstacle mode").
    """
    return region or (runtime or {}).get('heatmap_region') or 'all'


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


@dataclass(frozen=True)
class PipelineSettings:
    """
    How to build a Pipeline: bundle, backend and its options, score, threshold, geometry.

    The node's parameters and the tools' flags map onto these fields; ``None`` score or
    threshold means the bundle's value for the input size; ``input_size`` is 'HxW' or an
    (H, W) pair, ``None`` the bundle's own. ``threads`` applies to the CPU backends
    (torch threads, ONNX Runtime intra-op threads), ``cuda_graphs`` and
    ``compile_scores`` to the torch backend, ``engine_path`` and
    ``force_engine_update`` to TensorRT. ``precision`` fp32, fp16 or int8 ('': fp16 if
    ``fp16`` else fp32); int8 runs on ONNX Runtime (the quantised graph) and TensorRT.
    """

    bundle: str
    backend: str = 'auto'
    device: str = 'auto'
    fp16: bool = False
    score: Optional[str] = None
    threshold: Optional[float] = None
    all_scores: bool = False
    input_size: Optional[Union[str, Tuple[int, int]]] = None
    geometry: str = 'letterbox'
    cuda_graphs: bool = False
    threads: int = 0
    compile_scores: bool = False
    engine_path: str = ''
    force_engine_update: bool = False
    max_pixels: int = MAX_FRAME_PIXELS
    region: str = ''            # '': the bundle's (runtime.heatmap_region, else all)
    band: bool = False
    band_rows: Optional[str] = None
    band_width: Optional[int] = None
    flip: bool = False
    precision: str = ''
    contrast: Optional[float] = None          # None: the bundle's (default 0, off)
    contrast_window: Optional[int] = None

    def precision_name(self) -> str:
        """fp32, fp16 or int8: ``precision``, else what ``fp16`` says."""
        name = self.precision or ('fp16' if self.fp16 else 'fp32')
        if name not in PRECISIONS:
            raise OodSegError(f'precision {name!r} is not one of {", ".join(PRECISIONS)}')
        if self.fp16 and name != 'fp16':
            raise OodSegError(f'fp16 is true but precision is {name}: set one of them')
        return name

    def backend_name(self) -> str:
        """Return the backend to build: ``auto`` resolved for this machine and device."""
        return auto_backend(self.device) if self.backend == 'auto' else self.backend

    def backend_options(self) -> dict:
        """Keyword options of :func:`ood_seg_ros.runtime.make_backend` for that backend."""
        name = self.backend_name()
        int8 = self.precision_name() == 'int8'
        if int8 and name == 'torch':
            raise OodSegError('precision int8 runs on the onnxruntime or tensorrt backend, '
                              'not torch')
        if name == 'torch':
            options = {'cuda_graphs': self.cuda_graphs, 'threads': self.threads}
            if self.compile_scores:
                options['compile_scores'] = True
            return options
        if name == 'tensorrt':
            options = {'engine_path': self.engine_path} if self.engine_path else {}
            if self.force_engine_update:
                options['force_engine_update'] = True
            return dict(options, int8=True) if int8 else options
        return dict({'threads': self.threads}, **({'int8': True} if int8 else {}))

    def resolved(self) -> 'PipelineSettings':
        """
        Return these settings with backend, score and threshold as the pipeline picks them.

        Reads only ``bundle.json`` (no model is loaded): the bundle's heatmap score and
        segment threshold for the input size where none is given.
        """
        doc = read_bundle_json(self.bundle)
        size = parse_size(self.input_size) if self.input_size else \
            doc['config']['input_size']
        region = default_region(doc.get('runtime', {}), self.region)
        runtime, _ = runtime_for_size(doc.get('runtime', {}), size, region)
        return replace(self, backend=self.backend_name(), region=region,
                       score=self.score or runtime['heatmap_score'],
                       threshold=float(runtime['segment_threshold'] if self.threshold is None
                                       else self.threshold))


def touching_segments(labels: np.ndarray, n: int, region: np.ndarray):
    """Keep the segments with at least one pixel in ``region`` (bool), renumbered 1..k."""
    touch = np.bincount(labels[region], minlength=n + 1)[1:n + 1] > 0
    if touch.all():
        return labels, n
    lut = np.zeros(n + 1, np.int32)
    lut[1:][touch] = np.arange(1, int(touch.sum()) + 1, dtype=np.int32)
    return lut[labels], int(touch.sum())


def load_region_metas(bundle_path) -> Dict[str, Optional[MetaClassifier]]:
    """Meta classifiers of the bundle by region mode (``all``: None without meta.json)."""
    metas: Dict[str, Optional[MetaClassifier]] = {}
    for region in REGIONS:
        path = Path(bundle_path) / meta_file(region)
        if path.exists():
            metas[region] = MetaClassifier.load(path)
    metas.setdefault('all', None)
    return metas


class NonFiniteOutput(OodSegError):
    """The network returned NaN/inf in the heatmap score: the frame gives no result."""

    kind = 'nonfinite'


class Pipeline:
    """Frame -> FrameResult with one backend, one heatmap score and one meta classifier."""

    def __init__(self, backend, class_names: Sequence[str], runtime: dict,
                 meta: Optional[MetaClassifier] = None, score: Optional[str] = None,
                 threshold: Optional[float] = None, max_pixels: int = MAX_FRAME_PIXELS,
                 geometry: str = 'letterbox', region: Optional[str] = None,
                 region_metas: Optional[Dict[str, MetaClassifier]] = None,
                 obstacle: Optional[ObstacleSettings] = None, band: bool = False,
                 flip: bool = False, band_factory=None):
        if geometry not in GEOMETRIES:
            raise OodSegError(f'geometry must be one of {", ".join(GEOMETRIES)}, '
                              f'got {geometry!r}')
        self.backend = backend
        self.geometry = geometry
        self.class_names = list(class_names)
        self.input_size = tuple(backend.input_size)
        self.runtimes = {r: runtime_for_size(runtime, self.input_size, r) for r in REGIONS}
        self.runtime, self.calibrated_size = self.runtimes['all']
        self.max_pixels = max_pixels
        self.obstacle = obstacle or ObstacleSettings.from_runtime(runtime)
        self.drivable_ids = drivable_ids(self.class_names, self.obstacle.drivable_classes)
        self.band = bool(band)
        self.flip = bool(flip)
        self.band_factory = band_factory
        self._band_backends: Dict[Tuple[int, int], object] = {}
        self.extractor = SegmentFeatureExtractor(
            len(self.class_names), pgn_names=tuple(self.runtime['meta_pgn_names']),
            moose=True, region=True)
        self.metas = {'all': meta, **{r: meta for r in REGIONS}, **(region_metas or {})}
        self.columns = {r: self._meta_columns(m) for r, m in self.metas.items()}
        self.region = 'all'
        self.default_region = default_region(runtime)
        self.meta, self.meta_columns = meta, self.columns['all']
        self.score_name = ''
        self.set_region(region, score, threshold)

    def _meta_columns(self, meta: Optional[MetaClassifier]):
        if meta is None:
            return None
        names = list(self.extractor.feature_names)
        missing = [n for n in meta.feature_names if n not in names]
        if missing:
            raise OodSegError(f'meta classifier features {missing[:3]} are not computed '
                              f'by this pipeline (retrain it with ood-seg train-meta)')
        return np.array([names.index(n) for n in meta.feature_names])

    def set_region(self, region: Optional[str], score: Optional[str] = None,
                   threshold: Optional[float] = None) -> None:
        """
        Switch the heatmap region (``all`` / ``drivable``): attribute swaps, no rebuild.

        None or empty: the bundle's mode (:attr:`default_region`).
        Score, normalisation, segment threshold and meta classifier become the mode's
        (``score`` / ``threshold`` override them); the mode's score is kept only when the
        backend computes it, else the current score stays. All checks run before any
        attribute changes: a refused switch leaves the pipeline as it was.
        """
        region = region or self.default_region
        state = self.region_state(region, score, threshold)
        self.region, self.runtime, self.calibrated_size = region, state[0], state[1]
        self.meta, self.meta_columns = self.metas[region], self.columns[region]
        self.norm, self.score_name, self.threshold = state[2:]

    def region_state(self, region: Optional[str], score: Optional[str] = None,
                     threshold: Optional[float] = None):
        """
        Check a region switch; return (runtime, calibrated, norm, score, threshold).

        OodSegError where :meth:`set_region` would refuse it; nothing changes here.
        """
        region = region or self.default_region
        if region not in REGIONS:
            raise OodSegError(f'heatmap region must be one of {", ".join(REGIONS)}, '
                              f'got {region!r}')
        if region != 'all' and not self.drivable_ids.size:
            raise OodSegError(
                f'heatmap region {region}: none of the drivable classes '
                f'{list(self.obstacle.drivable_classes)} is in the class list '
                f'{self.class_names} (set runtime.obstacle.drivable_classes)')
        runtime, calibrated = self.runtimes[region]
        if not score:
            score = runtime['heatmap_score']
            if score not in self.backend.output_names and self.score_name:
                score = self.score_name
        norm = self.score_normalisation(score, runtime)
        value = float(runtime['segment_threshold'] if threshold is None else threshold)
        if not 0.0 < value < 1.0:
            raise OodSegError(f'segment threshold must be in (0, 1), got {value}')
        return runtime, calibrated, norm, score, value

    # -- construction ----------------------------------------------------------------
    @staticmethod
    def required_outputs(runtime: dict, score: Optional[str] = None,
                         all_scores: bool = False,
                         available: Optional[Sequence[str]] = None,
                         input_size=None) -> List[str]:
        """
        Network outputs the pipeline needs: probs, heatmap score, feature maps.

        ``all_scores``: every score in ``available`` (default: all), so that the heatmap
        score can change at run time and the evaluator sees every score. With
        ``input_size`` the heatmap score of every region mode there is computed too, so
        that :meth:`set_region` never needs another graph.
        """
        rt = {**DEFAULT_RUNTIME, **(runtime or {})}
        if all_scores:
            return ['probs'] + list(ALL_SCORES if available is None else available)
        names = {score or rt['heatmap_score'], *MOOSE_NAMES, *rt['meta_pgn_names']}
        if input_size is not None:
            names |= {runtime_for_size(runtime, input_size, r)[0]['heatmap_score']
                      for r in REGIONS}
        return ['probs'] + [n for n in SCORES if n in names]

    @classmethod
    def from_bundle(cls, bundle_path, backend: str = 'auto', device: str = 'auto',
                    fp16: bool = False, score: Optional[str] = None,
                    threshold: Optional[float] = None, all_scores: bool = False,
                    input_size=None, geometry: str = 'letterbox',
                    region: Optional[str] = None, band: bool = False, band_rows=None,
                    band_width: Optional[int] = None,
                    flip: bool = False, meta_pgn: Optional[Sequence[str]] = None,
                    contrast: Optional[float] = None, contrast_window: Optional[int] = None,
                    **backend_options) -> 'Pipeline':
        """
        Load bundle, meta classifier and backend; ``all_scores`` lets the score change.

        ``input_size`` (H, W) runs the network at another size than the bundle's (e.g.
        480x960 for a 2:1 camera); the bundle's settings for that size are used when it
        has them (``runtime.sizes``, written by ``ood-seg eval --calibrate --input-size``).
        ``region``, ``band`` (``band_rows`` 'T:B' or 'auto', ``band_width``), ``flip`` and
        ``contrast`` (``contrast_window``; None: the bundle's ``runtime.obstacle``):
        obstacle mode (see the module docstring); ``meta_<region>.json`` is that mode's
        meta classifier where the bundle has one. ``meta_pgn``: the PGN maps of the
        segment features instead of ``runtime.meta_pgn_names``, for fitting a new meta
        classifier (``ood-seg train-meta``): the bundle's own are then not loaded.
        """
        bundle = Bundle.of(bundle_path)     # bundle.json read once, passed down
        doc = bundle.doc
        runtime = bundle.runtime
        if meta_pgn is not None:
            runtime = {**runtime, 'meta_pgn_names': list(meta_pgn)}
        config = ModelConfig.from_dict(doc['config'])
        size = parse_size(input_size) if input_size is not None else \
            tuple(doc['config']['input_size'])
        outputs = cls.required_outputs(runtime, score, all_scores,
                                       available=config.available_scores(), input_size=size)
        if input_size is not None:
            backend_options['input_size'] = size
            check_memory(config, size, f'{bundle_path}')
        be = make_backend(backend, bundle, outputs, device=device, fp16=fp16,
                          **backend_options)
        metas = load_region_metas(bundle) if meta_pgn is None else {}
        if metas.get('all') is None and meta_pgn is None:
            LOG.error(
                'bundle %s has no meta.json: meta classifier OFF, every segment is kept '
                '(train one with ood-seg train-meta)', bundle_path)

        def band_factory(band_size):
            opts = dict(backend_options, input_size=band_size)
            if getattr(be, 'name', '') == 'torch':
                opts['bundle'] = be.bundle      # share the loaded (folded) network
            return make_backend(backend, bundle, outputs, device=device, fp16=fp16,
                                **opts)

        rows = None if band_rows is None else band_rows
        obstacle = ObstacleSettings.from_runtime(runtime, band_rows=rows,
                                                 band_width=band_width, contrast=contrast,
                                                 contrast_window=contrast_window)
        own = ObstacleSettings.from_runtime(runtime)
        if obstacle.contrast_spec != own.contrast_spec:
            LOG.warning(
                "small-object contrast %g (window %d) differs from the bundle's %g (window "
                '%d): its segment threshold and meta classifier were fitted without it, '
                'so more segments reach the meta classifier (README, "Small-object '
                'contrast")', obstacle.contrast, obstacle.contrast_window, own.contrast,
                own.contrast_window)
        return cls(be, doc['config']['class_names'], runtime, metas.get('all'), score,
                   threshold, geometry=geometry, region=region, region_metas=metas,
                   obstacle=obstacle, band=band, flip=flip, band_factory=band_factory)

    @classmethod
    def from_settings(cls, settings: PipelineSettings) -> 'Pipeline':
        """Build the pipeline that ``settings`` describe (see :meth:`from_bundle`)."""
        s = settings
        pipe = cls.from_bundle(s.bundle, backend=s.backend_name(), device=s.device,
                               fp16=s.precision_name() == 'fp16', score=s.score,
                               threshold=s.threshold,
                               all_scores=s.all_scores, input_size=s.input_size,
                               geometry=s.geometry, region=s.region, band=s.band,
                               band_rows=s.band_rows, band_width=s.band_width, flip=s.flip,
                               contrast=s.contrast, contrast_window=s.contrast_window,
                               **s.backend_options())
        pipe.max_pixels = s.max_pixels
        return pipe

    # -- settings --------------------------------------------------------------------
    def set_score(self, name: str) -> None:
        """Choose the heatmap score; it must be a backend output with normalisation."""
        self.norm = self.score_normalisation(name)
        self.score_name = name

    def score_normalisation(self, name: str, runtime: Optional[dict] = None,
                            computed: bool = True) -> HeatmapScale:
        """
        Return the scale (lo, hi) of ``name``; OodSegError where set_score would refuse it.

        ``computed`` False: do not require the running backend to compute ``name`` (the
        check before rebuilding the pipeline for it).
        """
        if name not in ALL_SCORES:
            raise OodSegError(f'unknown heatmap score {name!r}')
        if computed and name not in self.backend.output_names:
            raise OodSegError(f'heatmap score {name!r} is not computed by this backend '
                              f'(outputs: {", ".join(self.backend.output_names)})')
        return self._normalisation(name, runtime)

    def _normalisation(self, name: str, runtime: Optional[dict] = None) -> HeatmapScale:
        runtime = self.runtime if runtime is None else runtime
        table = runtime.get('normalisation', {})
        if name in table:
            return HeatmapScale.of(table[name])
        natural = natural_range(name, len(self.class_names))
        if natural is not None:
            if 'base_normalisation' in runtime:     # region score: max(s - lo, 0) * w
                return HeatmapScale(0.0, natural[1] - natural[0])
            return HeatmapScale(*natural)
        raise OodSegError(f'the bundle has no normalisation for score {name!r}; '
                          f'calibrate it with ood-seg eval --calibrate')

    def base_lo(self, name: str) -> Optional[float]:
        """
        Lower bound of score ``name`` in the ``all`` mode (the region score's origin).

        None for a score without normalisation (an uncalibrated bundle): the region score
        then starts at the map's own minimum.
        """
        try:
            return self._normalisation(name, self.runtimes['all'][0])[0]
        except OodSegError:
            return None

    def set_threshold(self, value: float) -> None:
        """Segment threshold on the normalised heatmap, in (0, 1)."""
        value = float(value)
        if not 0.0 < value < 1.0:
            raise OodSegError(f'segment threshold must be in (0, 1), got {value}')
        self.threshold = value

    # -- processing ------------------------------------------------------------------
    def letterbox(self, frame_size) -> Letterbox:
        """Placement of a frame of ``frame_size`` (H, W) in the network input."""
        return Letterbox.fit(frame_size, self.input_size, self.geometry)

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """Check the frame and fit it into the model input size (see :class:`Letterbox`)."""
        check_frame(frame, self.max_pixels)
        return self.letterbox(frame.shape[:2]).place(frame)

    def infer(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        """
        Preprocess and run the backend; outputs cropped to the frame's content.

        Adds the obstacle-mode entries (:meth:`obstacle_outputs`): ``drivable``,
        ``region_weight`` and, with the band, ``band`` and ``band_rows``.
        """
        out = self._run(self.backend, self.preprocess(frame), self.letterbox(frame.shape[:2]))
        return self.obstacle_outputs(out, frame)

    def _run(self, backend, image: np.ndarray, box: 'Letterbox') -> Dict[str, np.ndarray]:
        """
        Run ``backend`` on a prepared input; outputs cropped by ``box``.

        With ``flip``, ``mirror`` holds the score maps and ``probs`` of the mirrored input,
        mirrored back and cropped the same way (the padding is at the bottom and right of
        the input, so the mirrored-back maps line up with the frame's).
        """
        out = dict(box.crop(backend.infer(image)))
        if self.flip:
            flipped = backend.infer(np.ascontiguousarray(image[:, ::-1]))
            out['mirror'] = box.crop(mirrored_back(flipped, ALL_SCORES + ('probs',)))
        return out

    def _region(self, probs: np.ndarray):
        """Widened drivable region and soft weight of a probs map; (None, None) without."""
        if not self.drivable_ids.size:
            return None, None
        mask = drivable_mask(probs, self.drivable_ids, self.obstacle)
        return region_weight(region_distance(mask), self.obstacle)

    def band_backend(self, frame_size, rows):
        """Return the road band's backend for frames of ``frame_size`` (built once per size)."""
        size = band_input_size(frame_size, rows, self.obstacle.band_width)
        be = self._band_backends.get(size)
        if be is None:
            if self.band_factory is None:
                raise OodSegError('the road band needs a backend factory '
                                  '(build the pipeline with Pipeline.from_bundle)')
            be = self._band_backends[size] = self.band_factory(size)
        return be

    def band_pass(self, frame: np.ndarray, rows) -> Dict[str, np.ndarray]:
        """Network outputs of the frame's rows ``rows`` (fractions) at the band resolution."""
        fh = frame.shape[0]
        r0 = int(round(rows[0] * fh))
        r1 = max(r0 + 1, int(round(rows[1] * fh)))
        crop = np.ascontiguousarray(frame[r0:r1])
        be = self.band_backend(frame.shape[:2], rows)
        box = Letterbox.fit(crop.shape[:2], be.input_size, 'letterbox')
        return self._run(be, box.place(crop), box)

    def obstacle_outputs(self, out: Dict[str, np.ndarray], frame: np.ndarray
                         ) -> Dict[str, np.ndarray]:
        """
        Add the drivable mask and weight (decoder grid) and, with ``band``, the band pass.

        ``band`` holds the band's score maps and its own ``region_weight``; ``band_rows``
        its (top, bottom) rows as fractions of the frame height. With ``flip``, ``mirror``
        (of the frame and of the band) keeps its score maps and gets its own
        ``region_weight``.
        """
        out = dict(out)
        mask, weight = self._region(out['probs'])
        if mask is not None:
            out['drivable'], out['region_weight'] = mask, weight
        if 'mirror' in out:
            out['mirror'] = self._scored_pass(out['mirror'])
        if self.band:
            rows = band_rows(self.obstacle, mask)
            out['band'], out['band_rows'] = self._scored_pass(self.band_pass(frame, rows)), rows
        return out

    def _scored_pass(self, out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Score maps of one pass with its own ``region_weight`` (and its ``mirror``'s)."""
        _, weight = self._region(out['probs'])
        res = {k: v for k, v in out.items() if k in ALL_SCORES}
        if weight is not None:
            res['region_weight'] = weight
        if 'mirror' in out:
            res['mirror'] = self._scored_pass(out['mirror'])
        return res

    def region_raw(self, out: Dict[str, np.ndarray], name: str) -> np.ndarray:
        """
        Score ``name`` weighted by the drivable prior (``drivable`` mode), then contrast.

        With ``flip`` the weighted score is the mean of the frame's and its mirror's, each
        weighed by its own prior.
        """
        raw = self._weighted(out, name)
        if 'mirror' in out:
            raw = 0.5 * (raw + self._weighted(out['mirror'], name))
        return local_contrast(raw, self.obstacle.contrast, self.obstacle.contrast_window)

    def _weighted(self, out: Dict[str, np.ndarray], name: str) -> np.ndarray:
        """Score ``name`` of one pass, weighted by its prior in the ``drivable`` mode."""
        weight = out.get('region_weight') if self.region != 'all' else None
        if weight is None:
            return out[name]
        lo = self.base_lo(name)
        return region_score(out[name], float(out[name].min()) if lo is None else lo, weight)

    def heat_low(self, out: Dict[str, np.ndarray], name: Optional[str] = None) -> np.ndarray:
        """Raw heatmap score at decoder resolution: region prior, then the band fused."""
        name = name or self.score_name
        raw = self.region_raw(out, name)
        if 'band' in out:
            raw = fuse_band(raw, self.region_raw(out['band'], name), out['band_rows'],
                            self.obstacle.band_fusion)
        return raw

    def heat_at(self, out: Dict[str, np.ndarray], size, name: Optional[str] = None
                ) -> np.ndarray:
        """Raw heatmap score at ``size`` (H, W): upsampled, band fused at that size."""
        name = name or self.score_name
        if 'band' not in out:
            return upsample_map(self.region_raw(out, name), size)
        base = upsample_map(self.region_raw(out, name), size)
        return fuse_band(base, self.region_raw(out['band'], name), out['band_rows'],
                         self.obstacle.band_fusion)

    def process(self, frame: np.ndarray) -> FrameResult:
        """Run the whole per-frame path on an RGB uint8 (H, W, 3) frame."""
        t0 = time.perf_counter()
        img = self.preprocess(frame)
        t1 = time.perf_counter()
        out = self._run(self.backend, img, self.letterbox(frame.shape[:2]))
        t2 = time.perf_counter()
        out = self.obstacle_outputs(out, frame)
        t3 = time.perf_counter()
        result = self.postprocess(out, frame.shape[:2])
        t4 = time.perf_counter()
        result.timings.update({'preprocess_ms': (t1 - t0) * 1e3,
                               'inference_ms': (t2 - t1) * 1e3,
                               'obstacle_ms': (t3 - t2) * 1e3,
                               'postprocess_ms': (t4 - t3) * 1e3,
                               'total_ms': (t4 - t0) * 1e3})
        return result

    def segment(self, out: Dict[str, np.ndarray]):
        """
        Normalised decoder-resolution heatmap, segment labels, count and features.

        The one segment path shared by :meth:`postprocess`, the evaluator and meta
        classifier training. Returns (heatmap_low, labels_low int32, n, features (n, F)).
        In the ``drivable`` mode only segments touching the drivable region are kept.
        """
        for view in (out, out['mirror']) if 'mirror' in out else (out,):
            raw = view[self.score_name]
            if not np.isfinite(raw).all():   # cheap: decoder resolution, one pass per view
                bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
                raise NonFiniteOutput(f'heatmap score {self.score_name}: {bad} of {raw.size} '
                                      f'values are NaN/inf (broken weights or backend)')
        low = self.norm.apply(self.heat_low(out))
        # min_segment_px is given at model input resolution; convert to decoder pixels.
        min_low = max(1, int(round(self.runtime['min_segment_px'] / DECODER_STRIDE ** 2)))
        labels, n = find_segments(low, self.threshold, min_low)
        region = out.get('drivable')
        if n and region is not None and self.region != 'all':
            labels, n = touching_segments(labels, n, region)
        feats = np.zeros((0, len(self.extractor.feature_names)))
        if n:
            maps = {k: out[k] for k in self.extractor.map_names}
            feats = self.extractor.extract(labels, n, out['probs'], maps, region=region)
        return low, labels, n, feats

    def meta_fp_proba(self, feats: np.ndarray) -> np.ndarray:
        """P(false positive) of segments from the full feature rows (n, F)."""
        return self.meta.predict_fp_proba(feats[:, self.meta_columns])

    def classify_segments(self, labels: np.ndarray, n: int, low: np.ndarray,
                          feats: np.ndarray, frame_size):
        """
        Meta classification of the n segments, then their records (:func:`segment_records`).

        ``labels`` (h, w) int32 at decoder resolution, ``low`` the normalised heatmap
        there, ``feats`` (n, F). Returns (segments in label order, kept-instance ids
        (h, w) uint16 with kept segments renumbered 1..k).
        """
        if not n:
            return [], np.zeros(low.shape, np.uint16)
        if self.meta is not None:
            p_fp = self.meta_fp_proba(feats)
            keep = p_fp <= self.meta.threshold
        else:
            p_fp = np.zeros(n)
            keep = np.ones(n, bool)
        return segment_records(labels, n, low, frame_size, 1.0 - p_fp, keep)

    def postprocess(self, out: Dict[str, np.ndarray], frame_size) -> FrameResult:
        """Heatmap, semantic, segments and meta classification from network outputs."""
        fh, fw = frame_size
        t0 = time.perf_counter()
        low, labels, n, feats = self.segment(out)
        t1 = time.perf_counter()
        if 'band' in out:   # the band keeps its own resolution in the published heatmap
            heatmap = self.norm.apply(self.heat_at(out, (fh, fw)))
        else:
            heatmap = upsample_map(low, (fh, fw))
        semantic = upsample_map(out['semantic'].astype(np.uint8), (fh, fw), linear=False)
        t2 = time.perf_counter()
        segments, instances_low = self.classify_segments(labels, n, low, feats, (fh, fw))
        t3 = time.perf_counter()
        instances = upsample_map(instances_low, (fh, fw), linear=False)
        t4 = time.perf_counter()
        timings = {'segments_ms': (t1 - t0) * 1e3, 'heatmap_ms': (t2 - t1) * 1e3,
                   'meta_ms': (t3 - t2) * 1e3, 'instances_ms': (t4 - t3) * 1e3}
        return FrameResult(heatmap, semantic, instances, segments, timings, self.score_name)
