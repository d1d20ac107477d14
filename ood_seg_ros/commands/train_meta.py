"""``ood-seg train-meta``: fit the segment meta classifier on a validation OoD set."""

import json

HELP = 'train the meta classifier (false-positive segments) on a validation OoD set'


def add_arguments(parser):
    """Meta classifier training options."""
    parser.add_argument('--bundle', required=True, help='bundle to add meta.json to')
    parser.add_argument('--ood-set', required=True,
                        help='validation OoD set (COCO group b); never the test set')
    parser.add_argument('--threshold', type=float, default=0.5,
                        help='drop a segment when P(false positive) exceeds this')
    parser.add_argument('--target-tp-kept', type=float, default=0.9,
                        help='instead choose the threshold that keeps this share of true '
                             'segments in grouped cross-validation (0: use --threshold)')
    parser.add_argument('--folds', type=int, default=5, help='grouped K-fold over images')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--limit', type=int, default=0)
    parser.add_argument('--json', action='store_true')


def run(args) -> int:
    """Extract segments on the set, fit, store meta.json in the bundle."""
    from pathlib import Path
    from ..errors import OodSegError
    from ..evaluate import load_meta_dataset, to_json
    from ..meta import fit_meta
    pipe, feats, is_fp, iou, groups = load_meta_dataset(
        args.bundle, args.ood_set, device=args.device, limit=args.limit)
    if len(is_fp) < 10:
        raise OodSegError(f'only {len(is_fp)} segments on {args.ood_set}: too few to fit a '
                          f'meta classifier')
    clf, report = fit_meta(feats, is_fp, iou, pipe.extractor.feature_names, groups,
                           n_splits=args.folds, threshold=args.threshold,
                           target_tp_kept=args.target_tp_kept or None)
    clf.info['trained_on'] = str(Path(args.ood_set).name)
    clf.info['heatmap_score'] = pipe.score_name
    clf.info['segment_threshold'] = pipe.threshold
    clf.save(Path(args.bundle) / 'meta.json')
    print(to_json(report) if args.json else json.dumps(
        {k: report[k] for k in ('n_segments', 'n_fp', 'auroc', 'r2', 'threshold',
                                'fp_removed', 'tp_kept') if k in report}))
    return 0
