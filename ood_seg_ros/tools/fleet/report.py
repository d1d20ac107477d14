"""
The fleet report: merged summaries, per-bag table, ``fleet.json``, ``report.md``, plots.

Per bundle (label ``A``, ``B``) the summaries of a bag's chunks are merged into the bag's,
and the bags' into the pooled figures. With two bundles the pooled figures use only the
bags both evaluated (the same frames); the per-bag table is sorted by the change of AP
(B - A, most worsened first) and marks a bag ``worse`` when B's AP is lower by more than
``margin`` or its FPR95 higher by more than ``margin``. Files written into ``out``:
``fleet.json`` (machines), ``report.md`` (people), ``pr_curves.png`` and
``worst_<label>_<i>.png`` (copies of the worst frames' overlays).
"""

import json
import math
from pathlib import Path
import shutil
from typing import Dict, List, Optional

from .driver import ResultStore
from .jobs import Job
from ..bagtools.report import _clean
from ..metric_summary import EvalSummary

KEYS = ('ap', 'fpr95', 'auroc', 'siou', 'ppv', 'f1_mean', 'detections_per_frame',
        'latency_p50_ms', 'frames')


def _row(summary: EvalSummary, frames: int) -> dict:
    """Return the flat figures of one merged summary."""
    res = summary.result()
    px, comp = res['pixel'] or {}, res['component'] or {}
    return {'ap': px.get('ap'), 'fpr95': px.get('fpr95'), 'auroc': px.get('auroc'),
            'siou': comp.get('siou'), 'ppv': comp.get('ppv'), 'f1_mean': comp.get('f1_mean'),
            'detections_per_frame': res['detections']['per_frame'],
            'latency_p50_ms': res['latency_ms']['p50'],
            'latency_p95_ms': res['latency_ms']['p95'], 'frames': frames}


def _merge_bags(jobs: List[Job], outcomes: Dict[str, dict], store: ResultStore):
    """Return {bag: {label: {'status', 'reason', 'summary', 'docs'}}} from the job outcomes."""
    bags: Dict[str, Dict[str, dict]] = {}
    for job in jobs:
        entry = bags.setdefault(job.bag, {}).setdefault(
            job.label, {'status': 'ok', 'reason': None, 'summary': None, 'docs': []})
        out = outcomes.get(job.key, {'status': 'not run', 'reason': 'interrupted'})
        if out['status'] in ('failed', 'not run'):
            if entry['status'] == 'ok':
                entry.update(status=out['status'], reason=f'{job.name}: {out["reason"]}')
            continue
        doc, summary = store.load(job.key)
        entry['docs'].append(doc)
        entry['summary'] = summary if entry['summary'] is None \
            else entry['summary'].merge(summary)
    return bags


def build(jobs: List[Job], outcomes: Dict[str, dict], store: ResultStore,
          bundles: Dict[str, str], bad_bags: List[dict], margin: float = 0.01) -> dict:
    """Return the report document (see the module docstring) and the merged summaries."""
    labels = list(bundles)
    bags = _merge_bags(jobs, outcomes, store)
    paired = [b for b, per in bags.items() if all(per[lb]['status'] == 'ok' for lb in labels)]
    pooled, merged = {}, {}
    for lb in labels:
        total, frames = None, 0
        for b in paired:
            e = bags[b][lb]
            frames += sum(d['frames_out'] for d in e['docs'])
            total = EvalSummary.from_state(e['summary'].state()) if total is None \
                else total.merge(e['summary'])
        merged[lb] = total
        pooled[lb] = _row(total, frames) if total is not None else None
    rows = []
    for b, per in bags.items():
        row = {'bag': b, 'status': {lb: per[lb]['status'] for lb in labels}}
        reasons = [per[lb]['reason'] for lb in labels if per[lb]['reason']]
        if reasons:
            row['reason'] = '; '.join(reasons)
        for lb in labels:
            e = per[lb]
            if e['status'] == 'ok':
                row[lb] = _row(e['summary'], sum(d['frames_out'] for d in e['docs']))
                row[lb]['bad_messages'] = sum(d['bad_messages'] for d in e['docs'])
        rows.append(row)
    for r in bad_bags:
        rows.append({'bag': r['bag'], 'status': dict.fromkeys(labels, 'failed'),
                     'reason': r['reason']})
    if len(labels) == 2:
        a, b = labels
        for row in rows:
            row['delta'] = _delta(row.get(a), row.get(b))
            d = row['delta']
            row['worse'] = bool(d and ((d['ap'] is not None and d['ap'] < -margin) or
                                       (d['fpr95'] is not None and d['fpr95'] > margin)))
        rows.sort(key=lambda r: _sort_key(r['delta'], 'ap'))
        delta = _delta(pooled[a], pooled[b])
    else:
        rows.sort(key=lambda r: _sort_key(r.get(labels[0]), 'ap'))
        delta = None
    failed = [{'bag': r['bag'], 'reason': r['reason']} for r in rows
              if 'failed' in r['status'].values()]
    not_run = [r['bag'] for r in rows if 'failed' not in r['status'].values()
               and 'not run' in r['status'].values()]
    doc = {'bundles': [{'label': lb, 'path': p} for lb, p in bundles.items()],
           'pooled': pooled, 'delta': delta, 'margin': margin,
           'bags_total': len(rows), 'bags_paired': len(paired), 'bags_failed': len(failed),
           'failed': failed, 'bags_not_run': len(not_run), 'not_run': not_run, 'bags': rows,
           'jobs': {s: [o['status'] for o in outcomes.values()].count(s)
                    for s in ('done', 'cached', 'failed', 'not run')}}
    return doc, merged, bags


def _delta(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    """Return B - A of each figure (None where either is missing)."""
    if not a or not b:
        return None
    return {k: (b[k] - a[k] if a.get(k) is not None and b.get(k) is not None
                and not (isinstance(a[k], float) and math.isnan(a[k])) else None)
            for k in KEYS}


def _sort_key(d: Optional[dict], key: str):
    """Sort rows with a figure first, ascending; missing ones last."""
    v = (d or {}).get(key)
    return (v is None or (isinstance(v, float) and math.isnan(v)), v if v is not None else 0)


def _fmt(v, spec='.3f') -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return 'n/a'
    return format(v, spec) if isinstance(v, float) else str(v)


def pr_curves(merged: Dict[str, Optional[EvalSummary]], path: Path) -> Optional[str]:
    """Plot the pooled precision-recall curve of each bundle; return the file name."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    curves = {lb: s.pixel.pr_curve() for lb, s in merged.items()
              if s is not None and s.pixel.n_frames}
    curves = {lb: c for lb, c in curves.items() if c[0].size}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for lb, (recall, precision) in curves.items():
        ap = merged[lb].pixel.result()['ap']
        ax.plot(recall, precision, label=f'{lb} (AP {ap:.3f})')
    ax.set(xlabel='recall', ylabel='precision', xlim=(0, 1), ylim=(0, 1.02),
           title='pooled pixel precision-recall')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def worst_frames(bags: dict, labels, store: ResultStore, out: Path, count: int) -> dict:
    """Copy the ``count`` worst frames of each bundle (pixel error at threshold) to ``out``."""
    picked = {}
    for lb in labels:
        cands = [(w['error'], b, w) for b, per in bags.items() if per[lb]['status'] == 'ok'
                 for d in per[lb]['docs'] for w in d['worst']]
        cands.sort(key=lambda c: -c[0])
        picked[lb] = []
        for i, (err, bag, w) in enumerate(cands[:count]):
            name = f'worst_{lb}_{i}.png'
            shutil.copyfile(store.folder / w['file'], out / name)
            picked[lb].append({'bag': bag, 'stamp_ns': w['stamp_ns'], 'error': err,
                               'file': name})
    return picked


def markdown(doc: dict) -> str:
    """Return the report page (Markdown)."""
    labels = [b['label'] for b in doc['bundles']]
    lines = ['# Fleet evaluation', '']
    lines += [f'- bundle {b["label"]}: `{b["path"]}`' for b in doc['bundles']]
    j = doc['jobs']
    lines += [f'- bags: {doc["bags_total"]}, pooled over {doc["bags_paired"]}'
              + (' (evaluated by both bundles)' if len(labels) == 2 else '')
              + f', failed {doc["bags_failed"]}, not run {doc["bags_not_run"]}; jobs run '
              f'{j["done"]}, reused '
              f'{j["cached"]}, failed {j["failed"]}, not run {j["not run"]}'
              + ('; **interrupted**' if doc.get('interrupted') else ''), '']
    heads = ['AP', 'FPR95', 'AUROC', 'sIoU', 'PPV', 'F1', 'det/frame', 'p50 ms', 'frames']
    lines += ['## Pooled', '', '| bundle | ' + ' | '.join(heads) + ' |',
              '|---' * (len(heads) + 1) + '|']
    rows = [(lb, doc['pooled'][lb]) for lb in labels]
    if doc.get('delta'):
        rows.append((f'{labels[1]} - {labels[0]}', doc['delta']))
    for name, r in rows:
        cells = [_fmt((r or {}).get(k)) for k in KEYS]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines += ['', '## Per bag' + (f' (sorted by the change of AP, {labels[1]} - {labels[0]};'
                                  f' worse: AP down or FPR95 up by more than {doc["margin"]})'
                                  if len(labels) == 2 else ' (lowest AP first)'), '']
    if len(labels) == 2:
        lines += [f'| bag | AP {labels[0]} | AP {labels[1]} | ΔAP | ΔFPR95 | ΔF1 | frames | '
                  'status |', '|---|---|---|---|---|---|---|---|']
    else:
        lines += ['| bag | AP | FPR95 | AUROC | F1 | det/frame | frames | status |',
                  '|---|---|---|---|---|---|---|---|']
    for r in doc['bags']:
        states = set(r['status'].values())
        status = ('ok' if states == {'ok'} else f'**failed**: {r.get("reason", "")}'
                  if 'failed' in states else 'not run (interrupted)')
        if len(labels) == 2:
            if r.get('worse'):
                status = '**worse**'
            a, b, d = r.get(labels[0]) or {}, r.get(labels[1]) or {}, r.get('delta') or {}
            cells = [_fmt(a.get('ap')), _fmt(b.get('ap')), _fmt(d.get('ap'), '+.3f'),
                     _fmt(d.get('fpr95'), '+.3f'), _fmt(d.get('f1_mean'), '+.3f'),
                     _fmt(a.get('frames'))]
        else:
            a = r.get(labels[0]) or {}
            cells = [_fmt(a.get(k)) for k in
                     ('ap', 'fpr95', 'auroc', 'f1_mean', 'detections_per_frame', 'frames')]
        lines.append(f'| {Path(r["bag"]).name} | ' + ' | '.join(cells) + f' | {status} |')
    if doc.get('pr_curves'):
        lines += ['', '## Precision-recall (pooled pixels)', '',
                  f'![PR curves]({doc["pr_curves"]})']
    for lb, frames in (doc.get('worst_frames') or {}).items():
        if frames:
            lines += ['', f'## Worst frames, bundle {lb} (pixel error at the threshold)', '']
            lines += [f'- {Path(f["bag"]).name} stamp {f["stamp_ns"]}: error '
                      f'{f["error"]:.3f}  \n  ![{f["file"]}]({f["file"]})' for f in frames]
    return '\n'.join(lines) + '\n'


def write(jobs, outcomes, store, bundles, bad_bags, out: Path, margin: float = 0.01,
          worst: int = 6, extra: Optional[dict] = None) -> dict:
    """Build the report and write fleet.json, report.md and the images; return the doc."""
    doc, merged, bags = build(jobs, outcomes, store, bundles, bad_bags, margin)
    doc.update(extra or {})
    doc['pr_curves'] = pr_curves(merged, out / 'pr_curves.png')
    doc['worst_frames'] = worst_frames(bags, list(bundles), store, out, worst)
    doc = _clean(doc)
    (out / 'fleet.json').write_text(json.dumps(doc, indent=1) + '\n')
    (out / 'report.md').write_text(markdown(doc))
    return doc
