"""
Offline evaluation: dataset mIoU, SMIYC OoD metrics per score, meta classification.

Calibration (the heatmap score, its scale and the segment threshold written into the
bundle) is :mod:`ood_seg_ros.tools.calibrate`; the segment data for fitting the meta
classifier, :func:`ood_seg_ros.tools.meta_fit.load_meta_dataset`.

The evaluator runs the bundle's network once per frame with every score output, keeps
the score maps at decoder resolution (small) and upsamples them to label resolution for
the metrics (the same bilinear upsampling the pipeline uses). Segments, their features
and the meta classifier come from :class:`ood_seg_ros.pipeline.Pipeline`, so offline
numbers describe exactly what the node publishes.
"""

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch

from . import metrics as M
from .calibrate import calibrate
from .data.datasets import KINDS, open_dataset
from .data.images import read_rgb
from .data.labelled import load_pairs
from .data.ood_sets import OodDataset
from .metric_summary import ScoreHistogram
from .train.loop import evaluate_miou
from ..errors import OodSegError
from ..model import load_bundle
from ..model.bundle import read_bundle_json
from ..model.config import parse_size
from ..pipeline import default_region, Pipeline, runtime_for_size, upsample_map, usable_score
from ..scores import ALL_SCORES
from ..viz import overlay

# Obstacle-mode entries of Pipeline.infer kept per frame (see Pipeline.obstacle_outputs).
OBSTACLE_KEYS = ('drivable', 'region_weight', 'band', 'band_rows', 'mirror')

TORCH = {'backend': 'torch'}    # the backend of the evaluation unless one is given


def _nan_to_none(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _nan_to_none(x.item())
    return x


def to_json(obj) -> str:
    """JSON with NaN/inf written as null (undefined metrics are reported, not faked)."""
    return json.dumps(_nan_to_none(obj), indent=2)


def dataset_miou(bundle_path, dataset, split: str = 'test', device: str = 'cpu',
                 limit: int = 0) -> Dict:
    """
    Compute mIoU and per-class IoU of the global head and each probe on a dataset split.

    ``dataset``: ``KIND:PATH``, an opened dataset or a plain path (default kind); its
    classes must be the bundle's.
    """
    bundle = load_bundle(bundle_path, device=device)
    ds = open_dataset(dataset)
    names = list(bundle.config.class_names)
    if tuple(names) != ds.classes.names:
        raise OodSegError(f'dataset {ds.identity} has classes {list(ds.classes.names)} but '
                          f'bundle {Path(bundle_path).name} has {names}')
    pairs = ds.list_pairs(split)
    imgs, labs, _ = load_pairs(ds, pairs[:limit] if limit else pairs)
    res = evaluate_miou(bundle.model, torch.from_numpy(imgs), torch.from_numpy(labs),
                        bundle.config.n_classes, batch_size=4, probes=True)

    def named(r):
        return {'miou': r['miou'], 'per_class': dict(zip(names, r['per_class']))}

    out = named(res['global'])
    out['split'] = split
    out['frames'] = int(len(imgs))
    out['probes'] = {k: named(v) for k, v in res.items() if k.startswith('probe')}
    return out


def pipeline_miou(pipe: Pipeline, dataset, split: str = 'test', limit: int = 0) -> Dict:
    """
    Return the mIoU of the pipeline's ``semantic`` output (its backend and precision) on a split.

    Frames go through :meth:`Pipeline.infer` (letterbox as the node does) and are
    compared at label size; the protocol of ``ood-seg eval --backend onnxruntime``.
    """
    ds = open_dataset(dataset)
    pairs = ds.list_pairs(split)
    pairs = pairs[:limit] if limit else pairs
    c = len(pipe.class_names)
    conf = np.zeros((c, c), np.int64)
    for img, lab in pairs:
        label = ds.load_label(lab)
        sem = upsample_map(pipe.infer(read_rgb(img))['semantic'].astype(np.uint8),
                           label.shape, linear=False)
        conf += M.confusion_matrix(sem, label, c)
    mi = M.miou(conf)
    return {'miou': mi['miou'], 'per_class': dict(zip(pipe.class_names, mi['iou'])),
            'split': split, 'frames': len(pairs), 'backend': pipe.backend.describe()}


def id_false_detections(bundle_path, dataset, split='test', device='cpu', limit=0,
                        input_size=None, geometry='letterbox', obstacle=None,
                        backend_kw=None) -> Dict:
    """
    Count OoD segments per in-distribution frame, before and after meta filtering.

    The dataset (``KIND:PATH``, opened, or a plain path) holds no anomaly, so every
    segment the node would publish is a false detection. ``obstacle``: Pipeline.from_bundle
    keywords of obstacle mode (region, band, flip); ``backend_kw`` its backend keywords
    (default: torch).
    """
    obstacle = obstacle or {}
    pipe = Pipeline.from_bundle(bundle_path, device=device, **(backend_kw or TORCH),
                                input_size=input_size, geometry=geometry, **obstacle,
                                **score_kw(bundle_path, input_size, obstacle.get('region')))
    pairs = open_dataset(dataset).list_pairs(split)
    if limit:
        pairs = pairs[:limit]
    found = kept = frames_with = 0
    for img_path, _ in pairs:
        res = pipe.process(read_rgb(img_path))
        found += len(res.segments)
        k = sum(s.kept for s in res.segments)
        kept += k
        frames_with += int(k > 0)
    n = max(len(pairs), 1)
    return {'frames': len(pairs), 'heatmap_score': pipe.score_name,
            'heatmap_region': pipe.region, 'segment_threshold': pipe.threshold,
            'segments_per_frame': found / n,
            'kept_per_frame': kept / n, 'frames_with_kept': frames_with / n}


class OodEvaluation:
    """Runs a pipeline (all scores) over an OoD dataset and collects everything once."""

    def __init__(self, pipeline: Pipeline, dataset, limit: int = 0, progress=None):
        self.pipeline = pipeline
        self.dataset = dataset
        self.n = len(dataset) if not limit else min(limit, len(dataset))
        self.low_maps: List[Dict[str, np.ndarray]] = []
        self.labels: List[np.ndarray] = []
        self.semantic_conf = None
        self.names: List[str] = []
        self.frames = []
        c = len(pipeline.class_names)
        for i in (progress or (lambda it, total: it))(range(self.n), self.n):
            s = dataset[i]
            out = pipeline.infer(s.rgb)
            self.low_maps.append({k: out[k] for k in ALL_SCORES + OBSTACLE_KEYS if k in out}
                                 | {'probs': out['probs']})
            self.labels.append(s.ood_label)
            self.names.append(s.name)
            if i < 4:
                self.frames.append(s.rgb)
            if s.semantic is not None:
                sem = upsample_map(out['semantic'].astype(np.uint8), s.semantic.shape,
                                   linear=False)
                cm = M.confusion_matrix(sem, s.semantic, c)
                self.semantic_conf = cm if self.semantic_conf is None else \
                    self.semantic_conf + cm

    def score_map(self, i: int, name: str) -> np.ndarray:
        """
        Score ``name`` of frame ``i`` at its label size, as the pipeline publishes it.

        Upsampled; in obstacle mode weighted by the drivable prior and fused with the
        band pass (:meth:`Pipeline.heat_at`).
        """
        return self.pipeline.heat_at(self.low_maps[i], self.labels[i].shape, name)

    def low_score(self, i: int, name: str) -> np.ndarray:
        """Score ``name`` of frame ``i`` at decoder resolution (:meth:`Pipeline.heat_low`)."""
        return self.pipeline.heat_low(self.low_maps[i], name)

    def pixel_and_component(self, scores=ALL_SCORES, components=True) -> Dict[str, Dict]:
        """
        Per score: AP, FPR95, AUROC and sIoU / PPV / mean F1 of its components.

        ``components``: True (every score), False (none) or a collection of score names
        (the component metrics, the slow part, of those only; the others get pixel metrics).
        """
        table = {}
        for name in scores:
            if name not in self.low_maps[0]:
                continue
            acc = ScoreHistogram(domain=None)   # raw scores: mergeable relative bins
            for i in range(self.n):
                acc.add(self.score_map(i, name), self.labels[i])
            pix = acc.result()
            thr = pix['best_f1_threshold']
            entry = {'ap': pix['ap'], 'fpr95': pix['fpr95'], 'auroc': pix['auroc'],
                     'best_f1_threshold': thr}
            if 'undefined' in pix:
                entry['undefined'] = pix['undefined']
            if components is True or (components and name in components):
                entry.update(self._components(name, thr))
            table[name] = entry
        return table

    def _components(self, name: str, thr: float) -> Dict[str, float]:
        """Component sIoU / PPV / mean F1 of score ``name`` at threshold ``thr`` (NaN: none)."""
        if not np.isfinite(thr):
            return {'siou': float('nan'), 'ppv': float('nan'), 'f1_mean': float('nan')}
        comp = M.component_metrics((self.score_map(i, name) for i in range(self.n)),
                                   iter(self.labels[:self.n]), thr, track='anomaly')
        return {k: comp[k] for k in ('siou', 'ppv', 'f1_mean')}

    def segment_records(self):
        """
        Segments of every frame with features, FP target and IoU with the GT OoD.

        Target (methods §5): a segment is a false positive when it has no pixel of
        ground-truth OoD; its IoU is taken with the union of GT OoD components it touches.
        """
        from scipy import ndimage
        feats, is_fp, iou, groups, per_frame = [], [], [], [], []
        for i in range(self.n):
            out = self.low_maps[i]
            low, seg, n, f = self.pipeline.segment(out)
            gt = upsample_map(self.labels[i], low.shape, linear=False)
            gt_obj, _ = ndimage.label(gt == 1, structure=np.ones((3, 3)))
            fp = np.ones(n, bool)
            ious = np.zeros(n)
            for k in range(1, n + 1):
                m = seg == k
                touched = np.unique(gt_obj[m])
                touched = touched[touched > 0]
                if touched.size:
                    fp[k - 1] = False
                    g = np.isin(gt_obj, touched)
                    ious[k - 1] = (m & g).sum() / max(1, ((m | g) & (gt != 255)).sum())
            feats.append(f)
            is_fp.append(fp)
            iou.append(ious)
            groups.append(np.full(n, i))
            per_frame.append((seg, n))
        if not feats:
            raise OodSegError('no frames to take segments from')
        return (np.concatenate(feats), np.concatenate(is_fp), np.concatenate(iou),
                np.concatenate(groups), per_frame)


def meta_effect(evaluation: OodEvaluation, meta, track: str = 'anomaly') -> Dict:
    """Meta classifier on a test set: AUROC, R², FP removed, TP kept, component F1 ±meta."""
    feats, is_fp, iou, _, per_frame = evaluation.segment_records()
    res = {'n_segments': int(len(is_fp)), 'n_fp': int(is_fp.sum())}
    if len(is_fp) == 0:
        res['undefined'] = 'no segments'
        return res
    p_fp = evaluation.pipeline.meta_fp_proba(feats)
    keep = p_fp <= meta.threshold
    res['auroc'] = M.meta_auroc(is_fp.astype(np.uint8), p_fp) \
        if 0 < is_fp.sum() < len(is_fp) else float('nan')
    cols = evaluation.pipeline.meta_columns
    res['r2'] = M.r2(iou, meta.predict_iou(feats[:, cols])) if iou.std() > 0 else float('nan')
    res['fp_removed'] = float((~keep & is_fp).sum() / max(1, is_fp.sum()))
    res['tp_kept'] = float((keep & ~is_fp).sum() / max(1, (~is_fp).sum()))
    # Component F1 of the segment masks before / after meta classification.
    before, after, offset = [], [], 0
    for i, (seg, n) in enumerate(per_frame):
        k = keep[offset:offset + n]
        offset += n
        lab = evaluation.labels[i]
        mask_b = upsample_map((seg > 0).astype(np.float32), lab.shape, linear=False)
        kept_ids = np.flatnonzero(k) + 1
        mask_a = upsample_map(np.isin(seg, kept_ids).astype(np.float32), lab.shape,
                              linear=False)
        before.append(mask_b)
        after.append(mask_a)
    for tag, masks in (('before', before), ('after', after)):
        comp = M.component_metrics(iter(masks), iter(evaluation.labels[:evaluation.n]),
                                   0.5, track=track)
        res[f'f1_{tag}'] = comp['f1_mean']
    return res


def write_plots(evaluation: OodEvaluation, table: Dict, out_dir: Path, top: int = 6) -> List:
    """Precision-recall curves of the best scores and heatmap overlays; return file names."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    best = sorted((k for k in table if np.isfinite(table[k]['ap'])),
                  key=lambda k: -table[k]['ap'])[:top]
    fig, ax = plt.subplots(figsize=(6, 5))
    for name in best:
        s = np.concatenate([evaluation.score_map(i, name).ravel()
                            for i in range(evaluation.n)])
        y = np.concatenate([lab.ravel() for lab in evaluation.labels[:evaluation.n]])
        valid = y != 255
        s, y = s[valid], y[valid] == 1
        order = np.argsort(-s, kind='stable')[::max(1, len(s) // 200000)]
        ys = y[order]
        tp = np.cumsum(ys)
        prec = tp / np.arange(1, len(ys) + 1)
        rec = tp / max(1, ys.sum())
        ax.plot(rec, prec, label=f'{name} (AP {table[name]["ap"]:.3f})')
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_title('OoD pixel precision-recall')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / 'pr_curve.png', dpi=110)
    plt.close(fig)
    files.append('pr_curve.png')
    name, norm = evaluation.pipeline.score_name, evaluation.pipeline.norm
    for i, rgb in enumerate(evaluation.frames):
        heat = norm.apply(evaluation.pipeline.heat_at(evaluation.low_maps[i], rgb.shape[:2]))
        image = overlay(rgb, heat, gt=evaluation.labels[i], colour_bar=True, scale=norm,
                        label=name)
        cv2.imwrite(str(out_dir / f'overlay_{i}.png'), image)
        files.append(f'overlay_{i}.png')
    return files


def set_name(root) -> str:
    """Name of a dataset in reports: its folder name."""
    return Path(root).name


def precision_record(backend) -> Dict:
    """
    ``precision`` of the evaluated graph and, for int8, its calibration record.

    The int8 graph in the bundle's cache is used whatever frames it was calibrated on
    (unless ``--calib-frames`` asks), so the eval JSON says which calibration it had.
    """
    rec = {'precision': backend.describe().get('precision', 'fp32')}
    if rec['precision'] == 'int8':
        from ..runtime.int8_graph import recorded_calibration
        rec['int8_calibration'] = recorded_calibration(backend.onnx_path)
    return rec


def evaluate_bundle(bundle_path, ood_root=None, dataset=None, split='test',
                    entropy_bundle=None, out_dir=None, device='cpu', limit=0,
                    progress=None, calibrate_only=False, input_size=None,
                    geometry='letterbox', select_roots=(), select_notes=None,
                    obstacle=None, backend_kw=None, component_scores=None) -> Dict:
    """
    Full evaluation; returns the metrics object (see ``ood-seg eval``).

    ``ood_root``: one OoD set or a list of them. With one set the result keeps its
    single-set shape (``scores``, ``heatmap_score``, ``meta``, ...); with several it holds
    one such object per set under ``sets`` (by folder name), and ``heatmap_score``.
    ``calibrate_only``: return ``{'calibration': ...}`` chosen over all the sets, with
    ``select_roots`` joining only the choice of the score (see
    :func:`ood_seg_ros.tools.calibrate.calibrate`).
    ``dataset`` (``KIND:PATH``): mIoU on its ``split``, under the key of its kind.
    ``obstacle``: Pipeline.from_bundle keywords of obstacle mode (``region``, ``band``,
    ``band_rows``, ``band_width``, ``flip``); calibration is then that region's.
    ``backend_kw``: Pipeline.from_bundle backend keywords (default: torch); with another
    backend the dataset mIoU is that of the pipeline's output (:func:`pipeline_miou`).
    ``component_scores``: names whose component metrics (sIoU, PPV, F1) are computed,
    beside the published heatmap score (default: every score).
    """
    obstacle = obstacle or {}
    backend_kw = backend_kw or TORCH
    region = obstacle.get('region')
    result: Dict = {'bundle': str(bundle_path)}
    roots = [] if not ood_root else ([ood_root] if isinstance(ood_root, (str, Path))
                                     else list(ood_root))
    if dataset:
        ds = open_dataset(dataset)
        result[ds.kind] = dataset_miou(bundle_path, ds, split, device, limit) \
            if backend_kw == TORCH else pipeline_miou(
                Pipeline.from_bundle(bundle_path, device=device, input_size=input_size,
                                     geometry=geometry, **backend_kw), ds, split, limit)
        result['miou'] = result[ds.kind]['miou']
        result['per_class'] = result[ds.kind]['per_class']
        if entropy_bundle:
            ent = dataset_miou(entropy_bundle, ds, split, device, limit)
            result[f'entmax_{ds.kind}'] = {'miou': ent['miou'],
                                           'per_class': ent['per_class'],
                                           'miou_change': ent['miou'] - result['miou']}
    if not roots:
        _write_metrics(result, out_dir)
        return result
    names = [set_name(r) for r in roots]
    if len(set(names)) != len(names):
        raise OodSegError(f'OoD sets need distinct folder names, got {names}')
    pipe = Pipeline.from_bundle(bundle_path, device=device, **backend_kw,
                                all_scores=True, input_size=input_size, geometry=geometry,
                                **obstacle, **score_kw(bundle_path, input_size, region))
    evs = {set_name(r): OodEvaluation(pipe, OodDataset(r), limit, progress) for r in roots}
    if calibrate_only:
        sel = {set_name(r): OodEvaluation(pipe, OodDataset(r), limit, progress)
               for r in select_roots}
        return {'calibration': calibrate(evs, select=sel, select_notes=select_notes)}
    epipe = None
    if entropy_bundle:
        epipe = Pipeline.from_bundle(entropy_bundle, backend='torch', device=device,
                                     all_scores=True, input_size=input_size,
                                     geometry=geometry, **obstacle,
                                     **score_kw(entropy_bundle, input_size, region))
    per_set = {}
    for root in roots:
        name = set_name(root)
        sub_dir = Path(out_dir) / name if out_dir and len(roots) > 1 else out_dir
        per_set[name] = _evaluate_set(evs[name], root, pipe, epipe, limit, progress, sub_dir,
                                      component_scores)
    result['input_size'] = list(pipe.input_size)
    result.update(precision_record(pipe.backend))
    result['geometry'] = pipe.geometry
    result['heatmap_region'] = pipe.region
    result['band'] = list(pipe.obstacle.band_rows) if pipe.band else None
    result['flip'] = pipe.flip
    result['contrast'] = {'gain': pipe.obstacle.contrast,
                          'window': pipe.obstacle.contrast_window}
    result['heatmap_score'] = pipe.score_name
    if len(roots) == 1:
        only = per_set[names[0]]
        if 'miou' in result:
            only.pop('miou', None)
            only.pop('per_class', None)
        result.update(only)
    else:
        result['sets'] = per_set
    _write_metrics(result, out_dir)
    return result


def _evaluate_set(ev: OodEvaluation, root, pipe: Pipeline, epipe: Optional[Pipeline],
                  limit, progress, out_dir, component_scores=None) -> Dict:
    """Metrics of one OoD set: every score, meta classification, entmax rows, plots."""
    components = True if component_scores is None else {*component_scores, pipe.score_name}
    table = ev.pixel_and_component(components=components)
    res: Dict = {'scores': dict(table), 'ood_set': set_name(root), 'frames': ev.n}
    if ev.semantic_conf is not None:
        mi = M.miou(ev.semantic_conf)
        res['miou'] = mi['miou']
        res['per_class'] = dict(zip(pipe.class_names, mi['iou']))
    if pipe.meta is not None:
        res['meta'] = meta_effect(ev, pipe.meta)
    else:
        res['meta'] = {'undefined': 'the bundle has no meta classifier (ood-seg train-meta)'}
    res['heatmap_score'] = pipe.score_name
    res['at_segment_threshold'] = threshold_rates(ev)
    if epipe is not None:
        eev = OodEvaluation(epipe, OodDataset(root), limit, progress)
        for k, v in eev.pixel_and_component(components=components).items():
            res['scores'][f'entmax_{k}'] = v
    if out_dir:
        res['plots'] = write_plots(ev, table, Path(out_dir))
    return res


def threshold_rates(ev: OodEvaluation) -> Dict:
    """
    TPR and FPR of the published heatmap at the pipeline's segment threshold.

    Shows whether a calibration holds at the input size it runs at: the same threshold
    should flag a similar share of in-distribution pixels on every set and size.
    """
    pipe = ev.pipeline
    tp = fp = pos = neg = 0
    for i in range(ev.n):
        heat = pipe.norm.apply(ev.score_map(i, pipe.score_name)) > pipe.threshold
        lab = ev.labels[i]
        tp += int((heat & (lab == 1)).sum())
        fp += int((heat & (lab == 0)).sum())
        pos += int((lab == 1).sum())
        neg += int((lab == 0).sum())
    return {'score': pipe.score_name, 'threshold': pipe.threshold,
            'calibrated_here': bool(pipe.calibrated_size),
            'tpr': tp / pos if pos else float('nan'), 'fpr': fp / neg if neg else float('nan')}


def _write_metrics(result: Dict, out_dir) -> None:
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / 'metrics.json').write_text(to_json(result) + '\n')


def score_kw(bundle_path, input_size=None, region: Optional[str] = None) -> Dict:
    """
    Keyword arguments choosing a score the bundle can normalise (see usable_score).

    The bundle's settings for ``input_size`` (default: its own size) and region (default:
    the bundle's, :func:`ood_seg_ros.pipeline.default_region`) are used.
    """
    doc = read_bundle_json(bundle_path)
    runtime = doc.get('runtime', {})
    size = parse_size(input_size) if input_size else doc['config']['input_size']
    return {'score': usable_score(runtime_for_size(runtime, size,
                                                   default_region(runtime, region))[0])}


def table_text(result: Dict) -> str:
    """Format the main figures as a readable table."""
    lines = []
    for kind in (k for k in KINDS if k in result):
        c = result[kind]
        lines.append(f'{kind} {c["split"]} ({c["frames"]} frames): global mIoU '
                     f'{100 * c["miou"]:.2f} %')
        for k, v in c['per_class'].items():
            lines.append(f'  {k:<12} {100 * v:6.2f}' if v == v else f'  {k:<12}    n/a')
        for k, v in c['probes'].items():
            lines.append(f'  {k}: mIoU {100 * v["miou"]:.2f} %')
    sets = result.get('sets') or ({result['ood_set']: result} if 'scores' in result else {})
    for name, res in sets.items():
        lines.append(f'OoD set {name} ({res["frames"]} frames), heatmap score '
                     f'{res.get("heatmap_score", "")}')
        lines.append(f'{"score":<22} {"AP":>6} {"FPR95":>6} {"AUROC":>6} {"sIoU":>6} '
                     f'{"PPV":>6} {"F1":>6}')
        for k, v in sorted(res['scores'].items(), key=lambda kv: -_f(kv[1]['ap'])):
            lines.append(f'{k:<22} ' + ' '.join(
                f'{_f(v.get(m)):6.3f}' for m in ('ap', 'fpr95', 'auroc', 'siou', 'ppv',
                                                 'f1_mean')))
        if 'meta' in res:
            lines.append('meta: ' + ', '.join(f'{k} {v:.3f}' if isinstance(v, float) else
                                              f'{k} {v}' for k, v in res['meta'].items()))
    return '\n'.join(lines)


def _f(v) -> float:
    return float('nan') if v is None else float(v)
