#!/usr/bin/env python3
"""
Before/after heatmap overlays of the same frames for two bundles (outlier exposure).

For each frame and each score, writes one PNG: the frame with the ground-truth outline,
the score of bundle A on the left, of bundle B on the right. Scores are shown as z-scores
of each bundle's own training-split statistics (``sml_stats.scores``, from
``ood-seg sml-stats``; the fused scores are z-scores already), all on one fixed range
(default 0..3 standard deviations), so "glows" means the same in both halves and no
threshold is fitted on the frames shown.

    python tools/oe_overlays.py --bundle-a models/camvid_lite0 --bundle-b out/oe/x/bundle \
        --frame SET_DIR:NAME ... --score energy --score fused_energy_moose_energy \
        --out out/oe/overlays
"""

import argparse
from pathlib import Path
import sys

import cv2
import numpy as np


def zscore_map(pipeline, stats, frame, score):
    """Score ``score`` of ``frame`` at frame size, standardised by the bundle's train stats."""
    from ood_seg_ros.pipeline import upsample_map
    out = pipeline.infer(frame)
    m = upsample_map(out[score], frame.shape[:2])
    if score in stats:
        mean, std = stats[score]
        m = (m - mean) / std
    return m


def main(argv=None) -> int:
    """Write the overlays; return the exit status."""
    from ood_seg_ros.tools.data.ood_sets import OodDataset
    from ood_seg_ros.model.bundle import read_bundle_json
    from ood_seg_ros.model.deeplab import score_stats
    from ood_seg_ros.model.config import ModelConfig
    from ood_seg_ros.pipeline import Pipeline
    from ood_seg_ros.viz import overlay
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--bundle-a', required=True)
    p.add_argument('--bundle-b', required=True)
    p.add_argument('--frame', action='append', required=True, metavar='SET_DIR:NAME')
    p.add_argument('--score', action='append', required=True)
    p.add_argument('--range', default='0,3', help='z-score range shown as cold..hot')
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    lo, hi = (float(v) for v in args.range.split(','))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipes = []
    for b in (args.bundle_a, args.bundle_b):
        cfg = ModelConfig.from_dict(read_bundle_json(b)['config'])
        pipes.append((Pipeline.from_bundle(b, backend='torch', device='cpu',
                                           all_scores=True), score_stats(cfg)))
    for spec in args.frame:
        root, _, name = spec.rpartition(':')
        ds = OodDataset(root)
        if name not in ds.names:
            print(f'error: no frame {name} in {root}', file=sys.stderr)
            return 2
        s = ds[ds.names.index(name)]
        for score in args.score:
            halves = []
            for (pipe, stats), tag in zip(pipes, ('A', 'B')):
                z = zscore_map(pipe, stats, s.rgb, score)
                heat = np.clip((z - lo) / (hi - lo), 0, 1)
                img = overlay(s.rgb, heat, gt=s.ood_label)
                cv2.putText(img, f'{tag}: {score}', (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                            (255, 255, 255), 2)
                halves.append(img)
            path = out_dir / f'{Path(root).name}_{name}_{score}.png'
            cv2.imwrite(str(path), np.concatenate(halves, 1))
            print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
