#!/usr/bin/env python3
"""
Screen the weights of the default heatmap score's fusion (issue 18, deliver 2).

Usage: tools/fusion_screen.py --bundle B --ood-set S [--ood-set S ...]
       [--report-set S ...] [--out FILE.json]

The shipped score ``fused_energy_moose_energy`` is the equal-weight mean of ``energy``
and ``moose_energy``, each standardised by the bundle's ``train`` statistics. Every set
runs through the network once (torch, the bundle's input size and region); the
candidates then reweight the cached decoder-resolution maps:

- ``G2``: ``w`` x energy + (1 - ``w``) x moose_energy, ``w`` in 0, 1/8, ..., 1;
- ``G3``: energy, moose_energy and moose_entropy on the simplex in steps of 1/4;
- ``logistic``: a class-balanced logistic regression on five standardised members,
  fitted on pixels of the ``--ood-set`` sets (the same number from each), five folds
  grouped by image; every frame is scored by the fold that did not see it.

Each candidate is weighted by the bundle's drivable prior as the pipeline does, from its
own lower bound (the calibration's: the 1st percentile over the calibration sets,
averaged). Pixel AP from the evaluator's histogram.

The rule (model card, "Fusion weights"), fixed before the figures: eligible = AP at least
the ``all`` mode's MSP on every ``--ood-set``; the winner has the best worst-case AP
relative to the best candidate of each set; it replaces the shipped weights only if the
worst AP over the real sets rises by :data:`GAIN` or more, no real set loses
:data:`GAIN` or more, and no other set (``--report-set`` included) loses :data:`LOSS`
or more. The tool reports; it never writes the bundle.
"""

import argparse
import itertools
import json
from pathlib import Path
import sys

import numpy as np

from ood_seg_ros.errors import OodSegError

GAIN = 0.005
LOSS = 0.01
SHIPPED = 'G2 energy=0.5'
MEMBERS = ('energy', 'max_logit', 'moose_energy', 'moose_entropy', 'moose_max_logit')
KEEP = MEMBERS + ('msp', 'region_weight')
PIXELS_PER_SET = 40000     # per class, logistic candidate


def candidates():
    """Return {key: {member: weight}} of the two grids (the shipped weights included)."""
    grid = {f'G2 energy={i / 8:g}': {'energy': i / 8, 'moose_energy': 1 - i / 8}
            for i in range(9)}
    for a, b in itertools.product(range(5), range(5)):
        if a + b < 4:
            grid[f'G3 energy={a / 4:g} moose_energy={b / 4:g} moose_entropy='
                 f'{(4 - a - b) / 4:g}'] = {'energy': a / 4, 'moose_energy': b / 4,
                                            'moose_entropy': (4 - a - b) / 4}
    return grid


def fused_map(maps, weights, stats):
    """Return sum_k w_k (s_k - mu_k) / sigma_k over the members with a weight."""
    total = 0.0
    for name, w in weights.items():
        if w:
            mu, sigma = stats[name]
            total = total + w * (maps[name] - mu) / sigma
    return np.asarray(total, dtype=np.float32)


def lower_bound(raw_by_set):
    """The calibration's lower bound: the 1st percentile of each set's pixels, averaged."""
    return float(np.mean([np.percentile(np.concatenate([r.ravel() for r in raws]), 1.0)
                          for raws in raw_by_set]))


def pixel_ap(raws, weights, labels, lo):
    """Pixel AP of the region-weighted maps ``raws`` (``weights`` None: raw, no region)."""
    from ood_seg_ros.obstacle import region_score
    from ood_seg_ros.pipeline import upsample_map
    from ood_seg_ros.tools.metric_summary import ScoreHistogram
    acc = ScoreHistogram(domain=None)
    for i, (raw, lab) in enumerate(zip(raws, labels)):
        score = raw if weights is None else region_score(raw, lo, weights[i])
        acc.add(upsample_map(score.astype(np.float32), lab.shape), lab)
    return round(float(acc.result()['ap']), 4)


def measure(bundle, roots):
    """Return ({set: [maps]}, {set: [labels]}, train stats, calibration sets) of the bundle."""
    from ood_seg_ros.model.bundle import read_bundle_json
    from ood_seg_ros.pipeline import Pipeline
    from ood_seg_ros.tools.data.ood_sets import OodDataset
    from ood_seg_ros.tools.evaluate import OodEvaluation, set_name
    meta = read_bundle_json(bundle)
    scores = ((meta['config'].get('sml_stats') or {}).get('scores') or {})
    missing = [m for m in MEMBERS if m not in scores]
    if missing:
        raise OodSegError(f'{bundle}: no train statistics of {missing} (ood-seg sml-stats)')
    stats = {k: (float(v['mean']), float(v['std'])) for k, v in scores.items()}
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True)
    maps, labels = {}, {}
    for root in roots:
        ev = OodEvaluation(pipe, OodDataset(root))
        name = set_name(root)
        maps[name] = [{k: m[k] for k in KEEP if k in m} for m in ev.low_maps]
        labels[name] = ev.labels
        print(f'{name}: {ev.n} frames', file=sys.stderr, flush=True)
    calib = (meta['runtime'].get('calibration') or {}).get('sets') or []
    return maps, labels, stats, [s for s in calib if s in maps] or list(maps)


def logistic_oof(maps, labels, stats, fit_sets, seed=0):
    """Out-of-fold raw maps {set: [map]} of the logistic candidate, and its coefficients."""
    from ood_seg_ros.pipeline import upsample_map
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    rng = np.random.default_rng(seed)

    def zstack(m):
        return np.stack([(m[k] - stats[k][0]) / stats[k][1] for k in MEMBERS], -1)
    xs, ys, groups, frame_ids = [], [], [], {}
    for s in fit_sets:
        totals = {y: sum(int((lab == y).sum()) for lab in labels[s]) for y in (0, 1)}
        for i, (m, lab) in enumerate(zip(maps[s], labels[s])):
            g = frame_ids.setdefault((s, i), len(frame_ids))
            z, flat = zstack(m).astype(np.float32), lab.ravel()
            for y in (0, 1):
                idx = np.flatnonzero(flat == y)
                k = min(len(idx), int(round(PIXELS_PER_SET * len(idx) / max(totals[y], 1))))
                if k:
                    take = np.sort(rng.choice(idx, size=k, replace=False))
                    xs.append(np.stack([upsample_map(z[..., j], lab.shape).ravel()[take]
                                        for j in range(len(MEMBERS))], -1))
                    ys.append(np.full(k, y))
                    groups.append(np.full(k, g))
    x, y, groups = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    fold_of, coefs = {}, []
    for f, (tr, te) in enumerate(GroupKFold(n_splits=5).split(x, y, groups)):
        clf = LogisticRegression(class_weight='balanced', max_iter=1000).fit(x[tr], y[tr])
        coefs.append((clf.coef_[0].astype(np.float32), float(clf.intercept_[0])))
        fold_of.update({int(g): f for g in np.unique(groups[te])})
    raws = {s: [zstack(m) @ coefs[fold_of[frame_ids[(s, i)]]][0]
                + coefs[fold_of[frame_ids[(s, i)]]][1] for i, m in enumerate(maps[s])]
            for s in fit_sets}
    return raws, [(c.tolist(), b) for c, b in coefs]


def choose(rows, chosen_sets, real_sets, report_sets, msp):
    """Apply the rule; return (ranked [(worst relative AP, key, eligible)], winner, ships)."""
    keys = [k for k in rows if all(s in rows[k] for s in chosen_sets)]
    best = {s: max(rows[k][s] for k in keys) for s in chosen_sets}
    ranked = sorted(((min(rows[k][s] / best[s] for s in chosen_sets),
                      float(np.mean([rows[k][s] / best[s] for s in chosen_sets])), k,
                      all(rows[k][s] >= msp[s] for s in chosen_sets)) for k in keys),
                    reverse=True)
    winner = next((k for _, _, k, ok in ranked if ok), SHIPPED)
    new, old = rows[winner], rows[SHIPPED]
    others = [s for s in chosen_sets + report_sets if s not in real_sets and s in new]
    ships = (winner != SHIPPED
             and min(new[s] for s in real_sets) - min(old[s] for s in real_sets) >= GAIN
             and all(new[s] - old[s] > -GAIN for s in real_sets)
             and all(new[s] - old[s] > -LOSS for s in others))
    return [(w, k, ok) for w, _, k, ok in ranked], winner, ships


def main(argv=None):
    """Measure every candidate on every set, apply the rule, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
    ap.add_argument('--bundle', required=True)
    ap.add_argument('--ood-set', action='append', required=True,
                    help='a set the rule chooses on (repeat)')
    ap.add_argument('--report-set', action='append', default=[],
                    help='a set only measured, and guarded against losses (repeat)')
    ap.add_argument('--out', default=None, help='write every figure as JSON')
    args = ap.parse_args(argv)
    from ood_seg_ros.tools.evaluate import set_name
    try:
        maps, labels, stats, calib = measure(args.bundle, args.ood_set + args.report_set)
    except OodSegError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    chosen = [set_name(r) for r in args.ood_set]
    reports = [set_name(r) for r in args.report_set]
    real = [set_name(r) for r in args.ood_set
            if Path(r).resolve().parent.name == 'real_ood'] or chosen
    region = {s: [m['region_weight'] for m in maps[s]] for s in maps}
    msp = {s: pixel_ap([m['msp'] for m in maps[s]], None, labels[s], 0.0) for s in chosen}
    rows, weights = {}, candidates()
    for key, w in weights.items():
        raws = {s: [fused_map(m, w, stats) for m in maps[s]] for s in maps}
        lo = lower_bound([raws[s] for s in calib])
        rows[key] = {s: pixel_ap(raws[s], region[s], labels[s], lo) for s in maps}
        print(key, rows[key], file=sys.stderr, flush=True)
    raws, coefs = logistic_oof(maps, labels, stats, chosen)
    lo = lower_bound([raws[s] for s in calib if s in raws])
    rows['logistic'] = {s: pixel_ap(raws[s], region[s], labels[s], lo) for s in chosen}
    ranked, winner, ships = choose(rows, chosen, real, reports, msp)
    names = chosen + reports
    print('| candidate | eligible | worst relative AP | ' + ' | '.join(names) + ' |')
    print('|---|---|---|' + '---|' * len(names))
    for rel, key, ok in ranked:
        cells = ' | '.join(f'{rows[key][s]:.4f}' if s in rows[key] else '-' for s in names)
        print(f'| {key} | {"yes" if ok else "no"} | {rel:.3f} | {cells} |')
    print(f'\nMSP (`all`): {msp}\nwinner: {winner}; replaces the shipped weights: '
          f'{"yes" if ships else "no"} (pixel AP per set)')
    if args.out:
        Path(args.out).write_text(json.dumps({
            'rows': rows, 'weights': weights, 'msp_all': msp, 'logistic_coefficients': coefs,
            'members': list(MEMBERS), 'winner': winner, 'ships': ships}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
