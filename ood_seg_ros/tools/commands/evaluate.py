"""``ood-seg eval``: dataset mIoU and SMIYC OoD metrics of a bundle, one table per set."""

import sys

from .base import add_bundle_option, add_json_option, add_obstacle_options, \
    check_fit_contrast, check_out_dir, Command, obstacle_kw

PRECISION_OPTIONS = (
    ('--backend', {'default': None, 'choices': ['torch', 'onnxruntime'],
                   'help': 'run the network with this backend (default torch, onnxruntime '
                           'for int8); onnxruntime: mIoU of the pipeline output at label '
                           'size'}),
    ('--precision', {'default': 'fp32', 'choices': ['fp32', 'int8'],
                     'help': 'int8: the quantised graph on onnxruntime (made from '
                             '--calib-frames train frames of --camvid/--dataset when '
                             'missing)'}),
    ('--threads', {'type': int, 'default': 0,
                   'help': 'onnxruntime intra-op threads (0: its default)'}),
    ('--calib-frames', {'type': int, 'default': 0,
                        'help': 'int8: calibrate on this many train frames (0: the cached '
                                'graph, or 20 when it must be made)'}),
)


def add_precision_options(parser) -> None:
    """``--backend``, ``--precision``, ``--threads``, ``--calib-frames`` (int8 graph)."""
    for flag, options in PRECISION_OPTIONS:
        parser.add_argument(flag, **options)


def precision_kw(args, spec):
    """Pipeline.from_bundle backend keywords of the options (None: torch, as before)."""
    from ...errors import OodSegError
    int8 = args.precision == 'int8'
    backend = args.backend or ('onnxruntime' if int8 else 'torch')
    if int8 and backend == 'torch':
        raise OodSegError('--precision int8 runs on --backend onnxruntime, not torch')
    if backend == 'torch':
        return None
    kw = {'backend': backend, 'threads': args.threads}
    if int8:
        from ..quantize import int8_maker
        kw.update(int8=True, make_int8=int8_maker(spec, args.calib_frames) if spec else None)
    return kw


class EvalCommand(Command):
    """Evaluate a bundle: dataset mIoU, OoD scores (AP, FPR95, sIoU, ...), meta classifier."""

    def add_arguments(self, parser) -> None:
        """Declare the evaluation options."""
        from ..data.datasets import add_dataset_option
        add_bundle_option(parser)
        add_dataset_option(parser, required=False)
        parser.add_argument('--split', default='test',
                            help='dataset split: mIoU of global head + probes and the kept '
                                 'detections per (in-distribution) frame (default: test)')
        parser.add_argument('--ood-set', default=None, action='append',
                            help='OoD dataset (images/+labels/ or RoadAnomaly frames/); repeat '
                                 'for several sets (one table each)')
        parser.add_argument('--entropy-bundle', default=None,
                            help='also score the entropy-maximisation bundle (entmax_*)')
        parser.add_argument('--calibrate', action='store_true',
                            help='choose heatmap score, normalisation and segment threshold on '
                                 'these held-out validation sets and write them into the bundle')
        parser.add_argument('--select-set', default=[], action='append',
                            help='with --calibrate: a set that joins only the choice of the '
                                 'heatmap score (worst-case AP over all sets), never the '
                                 'fitted normalisation and threshold; repeatable. A set built '
                                 'from frames the bundle trained on is allowed here and '
                                 'recorded as such')
        parser.add_argument('--input-size', default=None,
                            help='network input HxW, e.g. 480x960 (default: the bundle size); '
                                 'calibration is stored per input size')
        parser.add_argument('--geometry', default='letterbox', choices=['letterbox', 'stretch'],
                            help='fit frames keeping their aspect (default) or stretch them')
        add_obstacle_options(parser)
        parser.add_argument('--out', default=None, help='folder for metrics.json and plots')
        parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
        parser.add_argument('--limit', type=int, default=0, help='first N frames only')
        parser.add_argument('--component-scores', default=None,
                            help='comma-separated scores whose component metrics (sIoU, PPV, '
                                 'F1; the slow part) are computed, beside the heatmap score '
                                 '(default: every score; the others get pixel metrics); '
                                 'the --entropy-bundle rows follow the same names')
        add_precision_options(parser)
        add_json_option(parser, 'the metrics')

    def main(self, args) -> int:
        """Evaluate and print a table or JSON."""
        from tqdm import tqdm
        from ...errors import OodSegError
        from ..calibrate import calibration_update, update_bundle_runtime
        from ..evaluate import evaluate_bundle, id_false_detections, table_text, to_json
        from ..data.datasets import dataset_spec, open_dataset
        from ...model.bundle import default_bundle_path, read_bundle_json
        from ...model.config import parse_size
        from ..protocol import check_held_out, selection_notes
        bundle = args.bundle or default_bundle_path()
        if bundle is None:
            raise OodSegError('no bundle given and no default bundle installed (--bundle DIR)')
        if args.select_set and not args.calibrate:
            raise OodSegError('--select-set is for --calibrate only')
        spec = dataset_spec(args)
        if not spec and not args.ood_set:
            raise OodSegError('nothing to evaluate: give --dataset (or --camvid) and/or '
                              '--ood-set')
        if args.out:
            check_out_dir(args.out, [bundle, spec.split(':', 1)[-1] if spec else None,
                                     args.entropy_bundle, *(args.ood_set or [])])
        size = parse_size(args.input_size) if args.input_size else None
        obstacle = obstacle_kw(args)
        backend_kw = precision_kw(args, spec)
        components = None
        if args.component_scores is not None:
            from ...scores import SCORES
            components = [n.strip() for n in args.component_scores.split(',') if n.strip()]
            unknown = [n for n in components if n not in SCORES]
            if unknown:
                raise OodSegError(f'--component-scores: unknown score(s) {unknown}; known: '
                                  f'{", ".join(sorted(SCORES))}')

        def progress(it, total):
            return tqdm(it, total=total, desc='eval', file=sys.stderr, disable=None)

        if args.calibrate:
            if not args.ood_set:
                raise OodSegError('--calibrate needs --ood-set (held-out validation sets)')
            doc = read_bundle_json(bundle)
            check_held_out(doc.get('info', {}), args.ood_set, 'calibrate')
            check_fit_contrast(doc, args, 'calibrating')
            notes = selection_notes(doc.get('info', {}), args.select_set)
            for name, note in notes.items():
                if note:
                    print(f'warning: {name} joins only the choice of the score: {note}',
                          file=sys.stderr)
            res = evaluate_bundle(bundle, ood_root=args.ood_set, device=args.device,
                                  limit=args.limit, progress=progress, calibrate_only=True,
                                  input_size=size, geometry=args.geometry,
                                  select_roots=args.select_set, select_notes=notes,
                                  obstacle=obstacle)
            cal = res['calibration']
            update_bundle_runtime(bundle, calibration_update(doc.get('runtime', {}), cal,
                                                             doc['config']['input_size']))
            c = cal['calibration']
            print(to_json(cal | {'normalisation': '(written to the bundle)'}) if args.json else
                  f'calibrated {bundle} at {c["input_size"]} ({c["heatmap_region"]}): heatmap '
                  f'score {cal["heatmap_score"]} (AP ' + ', '.join(
                      f'{k} {v:.3f}' for k, v in c['ap'].items()) + '; MSP ' + ', '.join(
                      f'{k} {v:.3f}' for k, v in c['reference_ap'].items()) +
                  f'), segment threshold {cal["segment_threshold"]:.3f}')
            return 0
        read_bundle_json(bundle)     # a bad bundle is named before the dataset is read
        ds = open_dataset(spec) if spec else None
        res = evaluate_bundle(bundle, ood_root=args.ood_set, dataset=ds,
                              split=args.split, entropy_bundle=args.entropy_bundle,
                              out_dir=args.out, device=args.device, limit=args.limit,
                              progress=progress, input_size=size, geometry=args.geometry,
                              obstacle=obstacle, backend_kw=backend_kw,
                              component_scores=components)
        if ds is not None:
            res[ds.kind]['detections'] = id_false_detections(
                bundle, ds, args.split, device=args.device, limit=args.limit,
                input_size=size, geometry=args.geometry, obstacle=obstacle,
                backend_kw=backend_kw)
        if backend_kw:
            res['backend'] = {k: v for k, v in dict(backend_kw, precision=args.precision).items()
                              if k != 'make_int8'}
        print(to_json(res) if args.json else table_text(res))
        return 0
