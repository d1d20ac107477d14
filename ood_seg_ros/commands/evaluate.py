"""``ood-seg eval``: CamVid mIoU and SMIYC OoD metrics of a bundle."""

import sys

HELP = 'evaluate a bundle: CamVid mIoU, OoD scores (AP, FPR95, sIoU, ...), meta classifier'


def add_arguments(parser):
    """Declare the evaluation options."""
    parser.add_argument('--bundle', default=None, help='model bundle (default: package bundle)')
    parser.add_argument('--camvid', default=None, help='CamVid root: mIoU of global head + probes')
    parser.add_argument('--split', default='test', help='CamVid split (default: test)')
    parser.add_argument('--ood-set', default=None,
                        help='OoD dataset (images/+labels/ or RoadAnomaly frames/)')
    parser.add_argument('--entropy-bundle', default=None,
                        help='also score the entropy-maximisation bundle (entmax_*)')
    parser.add_argument('--calibrate', action='store_true',
                        help='choose heatmap score, normalisation and segment threshold on '
                             'this (validation) set and write them into the bundle')
    parser.add_argument('--out', default=None, help='folder for metrics.json and plots')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--limit', type=int, default=0, help='first N frames only')
    parser.add_argument('--json', action='store_true', help='print the metrics as JSON')


def run(args) -> int:
    """Evaluate and print a table or JSON."""
    from tqdm import tqdm
    from ..errors import OodSegError
    from ..evaluate import evaluate_bundle, table_text, to_json, update_bundle_runtime
    from ..model.bundle import default_bundle_path
    bundle = args.bundle or default_bundle_path()
    if bundle is None:
        raise OodSegError('no bundle given and no default bundle installed (--bundle DIR)')
    if not args.camvid and not args.ood_set:
        raise OodSegError('nothing to evaluate: give --camvid and/or --ood-set')

    def progress(it, total):
        return tqdm(it, total=total, desc='eval', file=sys.stderr, disable=None)

    if args.calibrate:
        if not args.ood_set:
            raise OodSegError('--calibrate needs --ood-set (the validation OoD set)')
        res = evaluate_bundle(bundle, ood_root=args.ood_set, device=args.device,
                              limit=args.limit, progress=progress, calibrate_only=True)
        cal = res['calibration']
        update_bundle_runtime(bundle, cal)
        print(to_json(cal) if args.json else
              f'calibrated {bundle}: heatmap score {cal["heatmap_score"]} '
              f'(val AP {cal["calibration"]["ap"]:.3f}), segment threshold '
              f'{cal["segment_threshold"]:.3f}')
        return 0
    res = evaluate_bundle(bundle, ood_root=args.ood_set, camvid_root=args.camvid,
                          split=args.split, entropy_bundle=args.entropy_bundle,
                          out_dir=args.out, device=args.device, limit=args.limit,
                          progress=progress)
    print(to_json(res) if args.json else table_text(res))
    return 0
