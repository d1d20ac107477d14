"""
Calibration: the heatmap score, its scale and the segment threshold of a bundle.

Chosen on held-out validation sets (:class:`ood_seg_ros.tools.evaluate.OodEvaluation`
per set) and written into ``bundle.json`` per input size and region mode, through the
bundle's one writer (:func:`ood_seg_ros.model.bundle.update_bundle_json`).
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import OodSegError
from ..heatmap_scale import HeatmapScale
from ..model.bundle import update_bundle_json
from ..model.config import size_key


def choose_score(tables: Dict[str, Dict[str, Dict]], reference: str = 'msp',
                 candidates: Optional[Sequence[str]] = None) -> Dict:
    """
    Choose the default heatmap score by the product's rule, over several validation sets.

    ``tables``: set name -> score -> metrics with ``ap``. A score is eligible when its AP
    is at least the ``reference`` score's (MSP of the same network) on every set. Among
    the eligible, the best worst-case *relative* AP wins: on each set a score's AP is
    divided by the best AP any candidate reaches there, and the score whose smallest
    ratio is largest is chosen (ties: the best mean ratio). Relative AP puts sets of
    different difficulty on one scale, so the hardest set (tiny obstacles, AP ~0.02)
    does not decide alone, and a score that fails one anomaly type (a MOoSe score on
    road obstacles, a global one on objects in the scene) loses. Returns the choice with
    per-score worst / mean AP and ratios and the eligible list.
    """
    sets = list(tables)
    if not sets:
        raise OodSegError('score selection needs at least one validation set')
    names = [n for n in (candidates or tables[sets[0]]) if all(n in tables[s] for s in sets)]

    def ap(s, n):
        v = tables[s][n]['ap']
        return float(v) if v is not None and np.isfinite(v) else float('nan')

    if any(not np.isfinite(ap(s, reference)) for s in sets):
        raise OodSegError('calibration needs OoD and in-distribution pixels in every set')
    best_ap = {s: max([ap(s, n) for n in names if np.isfinite(ap(s, n))] or [0.0])
               for s in sets}

    def ratio(s, n):
        return ap(s, n) / best_ap[s] if best_ap[s] > 0 else 0.0

    summary = {n: {'worst_ap': min(ap(s, n) for s in sets),
                   'mean_ap': float(np.mean([ap(s, n) for s in sets])),
                   'worst_ratio': min(ratio(s, n) for s in sets),
                   'mean_ratio': float(np.mean([ratio(s, n) for s in sets])),
                   'per_set_ap': {s: ap(s, n) for s in sets}} for n in names}
    eligible = [n for n in names if all(ap(s, n) >= ap(s, reference) for s in sets)]
    pool = eligible or [reference]
    best = max(pool, key=lambda n: (summary[n]['worst_ratio'], summary[n]['mean_ratio']))
    return {'heatmap_score': best, 'reference': reference, 'eligible': eligible,
            'best_ap_per_set': best_ap, 'summary': summary}


def score_normalisation(evaluations: Sequence, name: str,
                        percentiles=(1.0, 99.9)) -> List[float]:
    """(lo, hi) of a score: the percentiles per evaluated set (valid pixels), averaged."""
    los, his = [], []
    for ev in evaluations:
        vals = np.concatenate([ev.low_score(i, name).ravel() for i in range(ev.n)])
        lo, hi = np.percentile(vals, percentiles)
        los.append(lo)
        his.append(hi)
    lo, hi = float(np.mean(los)), float(np.mean(his))
    return HeatmapScale(lo, hi if hi > lo else lo + 1e-6).to_json()


def calibrate(evaluations, percentiles=(1.0, 99.9), reference: str = 'msp',
              select: Optional[Dict] = None,
              select_notes: Optional[Dict[str, str]] = None) -> Dict:
    """
    Choose the heatmap score, its normalisation and the segment threshold.

    ``evaluations``: one :class:`OodEvaluation` or a dict name -> evaluation, all at the
    same network input size and on held-out validation data. ``select``: more sets that
    join only the choice of the score (e.g. a synthetic anomaly type the held-out sets
    lack), never the fitted constants; ``select_notes`` says per set why it is
    selection-only. The score follows :func:`choose_score` over all the sets;
    normalisation per score: (lo, hi) = the given percentiles of its values, averaged
    over the ``evaluations`` sets; segment threshold: the chosen score's best pixel-F1
    threshold per ``evaluations`` set, in normalised units, averaged.
    """
    if not isinstance(evaluations, dict):     # one OodEvaluation
        evaluations = {'validation': evaluations}
    evs = dict(evaluations)
    select = dict(select or {})
    clash = sorted(set(evs) & set(select))
    if clash:
        raise OodSegError(f'sets given both for fitting and for selection only: {clash}')
    tables = {k: ev.pixel_and_component(components=False) for k, ev in evs.items()}
    sel_tables = {k: ev.pixel_and_component(components=False) for k, ev in select.items()}
    choice = choose_score(tables | sel_tables, reference)
    best = choice['heatmap_score']
    first = next(iter(evs.values()))
    names = [n for n in tables[next(iter(tables))] if n in first.low_maps[0]]
    norms = {n: score_normalisation(list(evs.values()), n, percentiles) for n in names}
    scale = HeatmapScale.of(norms[best])
    thr = [tables[k][best]['best_f1_threshold'] for k in tables]
    seg = [float(np.clip(scale.unit(t), 0.05, 0.95)) for t in thr if np.isfinite(t)]
    seg_thr = float(np.mean(seg)) if seg else 0.5
    size = size_key(first.pipeline.input_size)
    return {'heatmap_score': best, 'normalisation': norms, 'segment_threshold': seg_thr,
            'calibrated_size': size, 'region': first.pipeline.region,
            'calibration': {'sets': list(evs), 'input_size': size,
                            'heatmap_region': first.pipeline.region,
                            'band': first.pipeline.band, 'flip': first.pipeline.flip,
                            'contrast': first.pipeline.obstacle.contrast,
                            'geometry': first.pipeline.geometry,
                            'percentiles': list(percentiles), 'rule': (
                                f'AP >= {reference} on every set, then the best worst-case '
                                f'AP relative to the best score of each set'),
                            'eligible': choice['eligible'],
                            'selection_only_sets': {k: (select_notes or {}).get(k, '')
                                                    for k in select},
                            'ap': {k: t[best]['ap'] for k, t in (tables | sel_tables).items()},
                            'reference_ap': {k: t[reference]['ap']
                                             for k, t in (tables | sel_tables).items()},
                            'worst_ap': choice['summary'][best]['worst_ap'],
                            'ranking': _ranking(choice)}}


def _ranking(choice: Dict, top: int = 8) -> List[Dict]:
    """Return the best ``top`` scores by (worst-case, mean) relative AP, with per-set AP."""
    summ = choice['summary']
    names = sorted(summ, key=lambda n: (-summ[n]['worst_ratio'], -summ[n]['mean_ratio']))[:top]
    return [{'score': n, 'eligible': n in choice['eligible'], **summ[n]} for n in names]


def calibration_update(runtime: dict, cal: Dict, bundle_size) -> Dict:
    """
    Runtime updates for ``bundle.json`` from a :func:`calibrate` result.

    Heatmap score, normalisation and segment threshold are stored per input size under
    ``sizes`` (a score chosen at 480x960 need not be the best at 360x480); at the
    bundle's own input size they are also the top-level settings. A region mode other
    than ``all`` is stored under ``sizes[size].regions[region]`` only, leaving the
    ``all`` settings as they are.
    """
    size = cal['calibrated_size']
    sizes = dict((runtime or {}).get('sizes') or {})
    entry = {'heatmap_score': cal['heatmap_score'],
             'normalisation': cal['normalisation'],
             'segment_threshold': cal['segment_threshold'],
             'calibration': cal['calibration']}
    region = cal.get('region', 'all')
    if region != 'all':
        old = dict(sizes.get(size) or {})
        old['regions'] = {**(old.get('regions') or {}), region: entry}
        sizes[size] = old
        return {'sizes': sizes}
    sizes[size] = {**entry, **({'regions': sizes[size]['regions']}
                               if (sizes.get(size) or {}).get('regions') else {})}
    upd = {'sizes': sizes}
    if size == size_key(bundle_size):
        upd.update({k: cal[k] for k in ('heatmap_score', 'normalisation',
                                        'segment_threshold', 'calibrated_size',
                                        'calibration')})
    return upd


def update_bundle_runtime(bundle_path, updates: Dict) -> None:
    """Merge ``updates`` into the bundle's runtime settings (bundle.json, atomic)."""
    update_bundle_json(bundle_path, lambda doc: doc.setdefault('runtime', {}).update(updates))
