"""``ood-seg eval``: CamVid mIoU and SMIYC OoD metrics of a bundle, one table per set."""

import sys

from .base import add_bundle_option, add_json_option, check_out_dir, Command


class EvalCommand(Command):
    """Evaluate a bundle: CamVid mIoU, OoD scores (AP, FPR95, sIoU, ...), meta classifier."""

    def add_arguments(self, parser) -> None:
        """Declare the evaluation options."""
        add_bundle_option(parser)
        parser.add_argument('--camvid', default=None,
                            help='CamVid root: mIoU of global head + probes, and the kept '
                                 'detections per (in-distribution) frame')
        parser.add_argument('--split', default='test', help='CamVid split (default: test)')
        parser.add_argument('--ood-set', default=None, action='append',
                            help='OoD dataset (images/+labels/ or RoadAnomaly frames/); repeat '
                                 'for several sets (one table each)')
        parser.add_argument('--entropy-bundle', default=None,
                            help='also score the entropy-maximisation bundle (entmax_*)')
        parser.add_argument('--calibrate', action='store_true',
                            help='choose heatmap score, normalisation and segment threshold on '
                                 'these held-out validation sets and write them into the bundle')
        parser.add_argument('--input-size', default=None,
                            help='network input HxW, e.g. 480x960 (default: the bundle size); '
                                 'calibration is stored per input size')
        parser.add_argument('--geometry', default='letterbox', choices=['letterbox', 'stretch'],
                            help='fit frames keeping their aspect (default) or stretch them')
        parser.add_argument('--out', default=None, help='folder for metrics.json and plots')
        parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
        parser.add_argument('--limit', type=int, default=0, help='first N frames only')
        add_json_option(parser, 'the metrics')

    def main(self, args) -> int:
        """Evaluate and print a table or JSON."""
        from tqdm import tqdm
        from ..errors import OodSegError
        from ..evaluate import (calibration_update, evaluate_bundle, id_false_detections,
                                table_text, to_json, update_bundle_runtime)
        from ..model.bundle import default_bundle_path, read_bundle_json
        from ..model.config import parse_size
        from ..protocol import check_held_out
        bundle = args.bundle or default_bundle_path()
        if bundle is None:
            raise OodSegError('no bundle given and no default bundle installed (--bundle DIR)')
        if not args.camvid and not args.ood_set:
            raise OodSegError('nothing to evaluate: give --camvid and/or --ood-set')
        if args.out:
            check_out_dir(args.out, [bundle, args.camvid, args.entropy_bundle,
                                     *(args.ood_set or [])])
        size = parse_size(args.input_size) if args.input_size else None

        def progress(it, total):
            return tqdm(it, total=total, desc='eval', file=sys.stderr, disable=None)

        if args.calibrate:
            if not args.ood_set:
                raise OodSegError('--calibrate needs --ood-set (held-out validation sets)')
            doc = read_bundle_json(bundle)
            check_held_out(doc.get('info', {}), args.ood_set, 'calibrate')
            res = evaluate_bundle(bundle, ood_root=args.ood_set, device=args.device,
                                  limit=args.limit, progress=progress, calibrate_only=True,
                                  input_size=size, geometry=args.geometry)
            cal = res['calibration']
            update_bundle_runtime(bundle, calibration_update(doc.get('runtime', {}), cal,
                                                             doc['config']['input_size']))
            c = cal['calibration']
            print(to_json(cal | {'normalisation': '(written to the bundle)'}) if args.json else
                  f'calibrated {bundle} at {c["input_size"]}: heatmap score '
                  f'{cal["heatmap_score"]} (AP ' + ', '.join(
                      f'{k} {v:.3f}' for k, v in c['ap'].items()) + '; MSP ' + ', '.join(
                      f'{k} {v:.3f}' for k, v in c['reference_ap'].items()) +
                  f'), segment threshold {cal["segment_threshold"]:.3f}')
            return 0
        res = evaluate_bundle(bundle, ood_root=args.ood_set, camvid_root=args.camvid,
                              split=args.split, entropy_bundle=args.entropy_bundle,
                              out_dir=args.out, device=args.device, limit=args.limit,
                              progress=progress, input_size=size, geometry=args.geometry)
        if args.camvid:
            res['camvid']['detections'] = id_false_detections(
                bundle, args.camvid, args.split, device=args.device, limit=args.limit,
                input_size=size, geometry=args.geometry)
        print(to_json(res) if args.json else table_text(res))
        return 0
