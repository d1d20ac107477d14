#!/usr/bin/env python3
"""
Choose the obstacle-mode prior of a bundle: ``all`` against a grid of drivable priors.

Usage: tools/obstacle_sweep.py --bundle B --ood-set S [--ood-set S ...]
       [--report-set S ...] [--score NAME] [--contrast GAINS] [--out FILE.json] [--apply]

Every set runs through the network once (torch, the bundle's input size, every score);
the grid then reweights the cached decoder-resolution maps: ``margin`` x ``falloff`` x
``floor`` of :mod:`ood_seg_ros.obstacle` (the drivable region is the same for all of
them, only its widening and the weight outside change), plus the ``all`` mode; with
``--contrast G1,G2,...`` all of that again at each small-object contrast gain (0, off,
is always in; keys end in ``contrast=G``). Pixel AP,
FPR95 and AUROC come from the evaluator's own code path
(:meth:`ood_seg_ros.tools.evaluate.OodEvaluation.pixel_and_component`), so the ``all``
row equals ``ood-seg eval``'s figures.

The rule, fixed before the grid is looked at (model card, "Obstacle mode"):

1. the score is the bundle's heatmap score (``--score``);
2. a candidate is eligible when its AP is at least the ``all`` mode's MSP on every
   ``--ood-set``;
3. the winner has the best worst-case relative AP over the ``--ood-set`` sets (AP over
   the best AP any candidate reaches on that set);
4. a winner other than plain ``all`` becomes the bundle's default (``--apply``:
   ``runtime.heatmap_region`` and ``runtime.obstacle``) only when it also raises the worst
   AP over the real sets (folders under ``real_ood``; all ``--ood-set`` sets when none is).

``--report-set`` sets are measured and printed, never used by the rule.
"""

import argparse
import dataclasses
import itertools
import json
from pathlib import Path
import sys

from ood_seg_ros.errors import OodSegError

MARGINS = (0.01, 0.05)
FALLOFFS = (0.04, 0.1, 0.25)
FLOORS = (0.0, 0.2, 0.5)


def grid_key(region, gain, margin=None, falloff=None, floor=None):
    """Candidate key: 'all', 'drivable margin=.. falloff=.. floor=..', ' contrast=G' added."""
    key = region if margin is None else \
        f'{region} margin={margin} falloff={falloff} floor={floor}'
    return key + (f' contrast={gain}' if gain else '')


def measure(bundle, roots, score, contrasts=(0.0,)):
    """Return {candidate: {set: {score: {ap, fpr95, auroc}}}} for ``all`` and the grid."""
    from ood_seg_ros.obstacle import region_distance, region_weight
    from ood_seg_ros.pipeline import Pipeline
    from ood_seg_ros.tools.data.ood_sets import OodDataset
    from ood_seg_ros.tools.evaluate import OodEvaluation, set_name
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True,
                                region='all', score=score)
    base = pipe.obstacle
    # margin 0: the stored 'drivable' mask is the filled region itself; its distance map
    # gives every widening and fall-off of the grid
    pipe.obstacle = dataclasses.replace(base, margin=0.0)
    evs, dists = {}, {}
    for root in roots:
        ev = OodEvaluation(pipe, OodDataset(root))
        evs[set_name(root)] = ev
        dists[set_name(root)] = [region_distance(m['drivable']) for m in ev.low_maps]
        print(f'{set_name(root)}: {ev.n} frames', file=sys.stderr, flush=True)

    def run(region, settings, names):
        pipe.set_region(region, score=score)
        row = {}
        for name, ev in evs.items():
            if settings is not None:
                for m, d in zip(ev.low_maps, dists[name]):
                    m['region_weight'] = region_weight(d, settings)[1]
            tab = ev.pixel_and_component(names, components=False)
            row[name] = {s: {k: tab[s][k] for k in ('ap', 'fpr95', 'auroc')} for s in tab}
        return row

    rows = {}
    for gain in sorted({0.0, *contrasts}):
        pipe.obstacle = dataclasses.replace(pipe.obstacle, contrast=gain)
        rows[grid_key('all', gain)] = run('all', None, (score, 'msp') if not gain else
                                          (score,))
        for margin, falloff, floor in itertools.product(MARGINS, FALLOFFS, FLOORS):
            st = dataclasses.replace(base, margin=margin, falloff=falloff, floor=floor)
            rows[grid_key('drivable', gain, margin, falloff, floor)] = \
                run('drivable', st, (score,))
    return rows


def choose(rows, chosen_sets, real_sets, score):
    """Apply the rule; return (ranked [(worst relative AP, key, eligible)], winner, ships)."""
    msp = {s: rows['all'][s]['msp']['ap'] for s in chosen_sets}
    best = {s: max(r[s][score]['ap'] for r in rows.values()) for s in chosen_sets}
    ranked = []
    for key, r in rows.items():
        eligible = all(r[s][score]['ap'] >= msp[s] for s in chosen_sets)
        ranked.append((min(r[s][score]['ap'] / best[s] for s in chosen_sets), key, eligible))
    ranked.sort(reverse=True)
    winner = next((key for _, key, ok in ranked if ok), 'all')

    def real_worst(key):
        return min(rows[key][s][score]['ap'] for s in real_sets)
    ships = winner != 'all' and real_worst(winner) > real_worst('all')
    return ranked, winner, ships


def settings_of(key):
    """Return the runtime.obstacle settings of a grid key ('drivable margin=.. falloff=..')."""
    return {k: float(v) for k, v in (p.split('=') for p in key.split()[1:])}


def parse_gains(text):
    """'0.5,1' -> (0.5, 1.0); OodSegError unless every gain is a number >= 0."""
    from ood_seg_ros.obstacle import check_contrast_gain
    try:
        gains = tuple(float(g) for g in text.split(',') if g.strip())
    except ValueError:
        raise OodSegError(f'--contrast: comma-separated numbers >= 0, got {text!r}') from None
    for g in gains:
        check_contrast_gain(g)
    return gains


def main(argv=None):
    """Run the sweep and the rule; print the ranking; optionally write the bundle."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
    ap.add_argument('--bundle', required=True)
    ap.add_argument('--ood-set', action='append', required=True,
                    help='a set the rule chooses on (repeat)')
    ap.add_argument('--report-set', action='append', default=[],
                    help='a set only measured and printed (repeat)')
    ap.add_argument('--score', default=None, help="default: the bundle's heatmap score")
    ap.add_argument('--contrast', default='0', help='small-object contrast gains to '
                    'cross with the grid, comma-separated (default 0: off only)')
    ap.add_argument('--out', default=None, help='write every figure as JSON')
    ap.add_argument('--apply', action='store_true',
                    help='write the winner into the bundle when the rule ships it')
    args = ap.parse_args(argv)
    from ood_seg_ros.model.bundle import read_bundle_json, update_bundle_json
    from ood_seg_ros.tools.evaluate import set_name
    try:
        score = args.score or read_bundle_json(args.bundle)['runtime']['heatmap_score']
        gains = parse_gains(args.contrast)
        rows = measure(args.bundle, args.ood_set + args.report_set, score, gains)
    except OodSegError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    chosen = [set_name(r) for r in args.ood_set]
    real = [set_name(r) for r in args.ood_set if Path(r).resolve().parent.name == 'real_ood']
    ranked, winner, ships = choose(rows, chosen, real or chosen, score)
    names = chosen + [set_name(r) for r in args.report_set]
    print('| candidate | eligible | worst relative AP | ' + ' | '.join(names) + ' |')
    print('|---|---|---|' + '---|' * len(names))
    for rel, key, ok in ranked:
        cells = ' | '.join('{ap:.3f} / {fpr95:.3f}'.format(**rows[key][s][score])
                           for s in names)
        print(f'| {key} | {"yes" if ok else "no"} | {rel:.3f} | {cells} |')
    print(f'\nwinner: {winner}; becomes the default: {"yes" if ships else "no"} '
          f'(score {score}; AP / FPR95 per set)')
    if args.out:
        Path(args.out).write_text(json.dumps({'score': score, 'rows': rows, 'winner': winner,
                                              'ships': ships}, indent=1))
    if args.apply and ships:
        region, chosen = winner.split()[0], {'contrast': 0.0, **settings_of(winner)}
        update_bundle_json(args.bundle, lambda d: d['runtime'].update(
            heatmap_region=region, obstacle={**(d['runtime'].get('obstacle') or {}),
                                             **chosen}))
        print(f'{args.bundle}: runtime.heatmap_region {region}, obstacle {chosen}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
