#!/usr/bin/env python3
"""
Which score-map families the meta classifier needs: ``train-meta``'s fit without each one.

Usage: tools/meta_ablation.py --bundle B --ood-set S [--ood-set S ...]
       [--segments FILE.npz] [--max-fp-per-frame 0.5] [--balanced] [--seeds K] [--json]

The segments of the sets are extracted once (the slow part; ``--segments`` caches them,
a later run with the same file reads them back), then every variant is fitted from the
same rows with ``train-meta``'s own procedure (:func:`ood_seg_ros.tools.meta_fit.fit_chosen`:
feature set and C by the worst leave-one-set-out AUROC, grouped 5-fold, threshold by false
detections per frame). Variants drop the statistics of one family of maps: the PGN maps
the features were extracted with, the MOoSe maps, the dispersion maps (entropy, margin,
variation ratio), and every PGN map but one. ``--seeds K`` refits each variant with K
fold assignments (seeds 0..K-1): the spread shows how much of a difference the folds
alone make. Prints Markdown tables (out-of-fold figures per set), or JSON.
"""

import argparse
import json
from pathlib import Path
import sys

import numpy as np

from ood_seg_ros.errors import OodSegError
from ood_seg_ros.segments import DISPERSION_NAMES, MOOSE_NAMES
from ood_seg_ros.tools.meta_fit import columns_without, fit_chosen, load_meta_dataset


def segments(args):
    """(features, is_fp, iou, groups, sets, frames, names, pgn maps), cached in --segments."""
    cache = Path(args.segments) if args.segments else None
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        return (z['feats'], z['is_fp'], z['iou'], z['groups'], z['sets'].astype(object),
                json.loads(str(z['frames'])), [str(n) for n in z['names']],
                [str(n) for n in z['pgn']])
    from ood_seg_ros.model.bundle import read_bundle_json
    from ood_seg_ros.tools.protocol import check_held_out
    check_held_out(read_bundle_json(args.bundle).get('info', {}), args.ood_set,
                   'fit the meta classifier')
    pipe, feats, is_fp, iou, groups, sets, frames = load_meta_dataset(
        args.bundle, args.ood_set, device='cpu', input_size=args.input_size)
    names = list(pipe.extractor.feature_names)
    pgn = list(pipe.extractor.pgn_names)
    if cache is not None:
        np.savez(cache, feats=feats, is_fp=is_fp, iou=iou, groups=groups,
                 sets=sets.astype(str), frames=json.dumps(frames), names=np.array(names),
                 pgn=np.array(pgn, dtype=str))
    return feats, is_fp, iou, groups, sets, frames, names, pgn


def variants(pgn):
    """(label, maps dropped) of every variant; the first is the reference."""
    rows = [('all maps', []), ('without PGN', pgn), ('without MOoSe', list(MOOSE_NAMES)),
            ('without entropy/margin/variation ratio', list(DISPERSION_NAMES)),
            ('without PGN and MOoSe', pgn + list(MOOSE_NAMES))]
    if len(pgn) > 1:
        rows += [(f'PGN {m} only', [p for p in pgn if p != m]) for m in pgn]
    return rows


def ablation(feats, is_fp, iou, groups, sets, frames, names, pgn, max_fp_per_frame,
             seeds=1, balanced=False):
    """
    Fit every variant; one row each: chosen config, out-of-fold AUROC, per-set figures.

    The figures are those of fold seed 0; with ``seeds`` > 1 the row also has ``seeds``:
    those figures for every fold seed. ``balanced``: ``train-meta --balanced``'s threshold
    (``max_fp_per_frame`` then caps it).
    """
    rows = []
    for label, maps in variants(pgn):
        idx = columns_without(names, maps)
        reps = [fit_chosen(feats[:, idx], is_fp, iou, groups, sets, frames,
                           [names[i] for i in idx], max_fp_per_frame=max_fp_per_frame,
                           seed=seed, balanced=balanced)[1] for seed in range(max(1, seeds))]
        rep = reps[0]
        chosen = [t for t in rep['selection']
                  if t['features'] == rep['features'] and t['C'] == rep['C']]
        rows.append({'variant': label, 'dropped_maps': maps, 'n_columns': len(idx),
                     'features': rep['features'], 'C': rep['C'], 'auroc': rep['auroc'],
                     'worst_transfer_auroc': chosen[0]['worst'] if chosen else None,
                     'threshold': rep['threshold'], 'per_set': rep['per_set']})
        if seeds > 1:
            rows[-1]['seeds'] = [{'auroc': r['auroc'], 'per_set': r['per_set']} for r in reps]
    return rows


def _pct(v):
    return 'n/a' if v is None else f'{100 * v:.1f}'


def markdown(rows):
    """Return the Markdown tables of :func:`ablation` rows."""
    sets = list(rows[0]['per_set'])
    head = '| variant | features, C | OOF AUROC | worst transfer AUROC | ' + ' | '.join(
        f'{s} FP removed / TP kept %' for s in sets) + ' |'
    out = [head, '|' + '---|' * (4 + len(sets))]
    for r in rows:
        per = ' | '.join(f'{_pct(r["per_set"][s]["fp_removed"])} / '
                         f'{_pct(r["per_set"][s]["tp_kept"])}' for s in sets)
        out.append(f'| {r["variant"]} | {r["features"]}, {r["C"]:g} | {r["auroc"]:.3f} | '
                   f'{r["worst_transfer_auroc"]:.3f} | {per} |')
    if 'seeds' in rows[0]:
        out += ['', f'Over fold seeds 0..{len(rows[0]["seeds"]) - 1}: mean [min, max].', '',
                head.replace('| worst transfer AUROC ', ''), '|' + '---|' * (3 + len(sets))]
        for r in rows:
            cells = [_spread([x['auroc'] for x in r['seeds']], 1, '.3f')]
            cells += [_spread([x['per_set'][s][k] for x in r['seeds']], 100, '.1f')
                      for s in sets for k in ('fp_removed', 'tp_kept')]
            cells = [cells[0]] + [f'{a} / {b}' for a, b in zip(cells[1::2], cells[2::2])]
            out.append(f'| {r["variant"]} | {r["features"]}, {r["C"]:g} | '
                       + ' | '.join(cells) + ' |')
    return '\n'.join(out)


def _spread(values, scale, fmt):
    v = [scale * x for x in values if x is not None]
    if not v:
        return 'n/a'
    return f'{np.mean(v):{fmt}} [{min(v):{fmt}}, {max(v):{fmt}}]'


def main(argv=None):
    """Parse arguments, extract (or read) the segments, fit every variant, print."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bundle', required=True)
    parser.add_argument('--ood-set', required=True, action='append')
    parser.add_argument('--input-size', default=None)
    parser.add_argument('--segments', default=None, help='cache of the extracted segments')
    parser.add_argument('--max-fp-per-frame', type=float, default=0.5,
                        help='threshold rule: false detections per frame (with --balanced: '
                             'a cap, 0 for none)')
    parser.add_argument('--balanced', action='store_true',
                        help="train-meta --balanced's threshold rule")
    parser.add_argument('--seeds', type=int, default=1, help='fold seeds 0..K-1')
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    try:
        data = segments(args)
        rows = ablation(*data, max_fp_per_frame=args.max_fp_per_frame, seeds=args.seeds,
                        balanced=args.balanced)
    except OodSegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
