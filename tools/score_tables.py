#!/usr/bin/env python3
"""
Markdown tables of an ``ood-seg eval --json`` result: every score per set, best AP first.

Usage: tools/score_tables.py EVAL.json [EVAL.json ...]  (writes Markdown to stdout).
The model card's per-set tables are made this way, so they are copies of eval output,
never typed by hand.
"""

import json
import sys


def _f(v):
    return 'n/a' if v is None else f'{v:.3f}'


def tables(result: dict) -> str:
    """One table per OoD set of ``result`` (the single-set or the multi-set shape)."""
    sets = result.get('sets') or {result.get('ood_set', 'set'): result}
    out = []
    for name, res in sets.items():
        if 'scores' not in res:
            continue
        chosen = res.get('heatmap_score', '')
        out.append(f'**{name}** ({res.get("frames")} frames; published heatmap `{chosen}`)\n')
        out.append('| score | AP | FPR95 | AUROC | sIoU | PPV | F1 |')
        out.append('|---|---|---|---|---|---|---|')
        rows = sorted(res['scores'].items(), key=lambda kv: -(kv[1].get('ap') or 0.0))
        for k, v in rows:
            label = f'**{k}**' if k == chosen else k
            out.append(f'| {label} | ' + ' | '.join(
                _f(v.get(m)) for m in ('ap', 'fpr95', 'auroc', 'siou', 'ppv', 'f1_mean')) + ' |')
        meta = res.get('meta') or {}
        if 'fp_removed' in meta:
            out.append(f'\nMeta classifier here: {meta.get("n_segments")} segments '
                       f'({meta.get("n_fp")} false), removes {100 * meta["fp_removed"]:.1f} % '
                       f'of false positives, keeps {100 * meta["tp_kept"]:.1f} % of true ones.')
        out.append('')
    return '\n'.join(out)


def main(argv) -> int:
    """Print the tables of every JSON file named in ``argv``."""
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in argv:
        with open(path) as f:
            print(tables(json.load(f)))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
