"""``ood-seg train-meta``: fit the segment meta classifier on held-out validation sets."""

import json

from .base import add_bundle_option, add_json_option, add_obstacle_options, \
    check_fit_contrast, Command, obstacle_kw


class TrainMetaCommand(Command):
    """Train the meta classifier (false-positive segments) on held-out validation sets."""

    def add_arguments(self, parser) -> None:
        """Meta classifier training options."""
        add_bundle_option(parser, 'bundle to add meta.json to')
        parser.add_argument('--ood-set', required=True, action='append',
                            help='held-out validation OoD set (repeat for several; never a '
                                 'test set nor frames the bundle trained on)')
        parser.add_argument('--threshold', type=float, default=0.5,
                            help='drop a segment when P(false positive) exceeds this')
        parser.add_argument('--target-tp-kept', type=float, default=0.9,
                            help='instead choose the threshold that keeps this share of true '
                                 'segments in grouped cross-validation (0: use --threshold)')
        parser.add_argument('--max-fp-per-frame', type=float, default=0.0,
                            help='instead choose the largest threshold that keeps at most this '
                                 'many false detections per frame on every set (out-of-fold); '
                                 'overrides --target-tp-kept')
        parser.add_argument('--balanced', action='store_true',
                            help='instead choose the threshold with the largest worst share, '
                                 'over the sets, of false segments removed and true segments '
                                 'kept (out-of-fold); --max-fp-per-frame then caps it')
        parser.add_argument('--cv-repeats', type=int, default=None, metavar='K',
                            help='pool the out-of-fold probabilities of K draws of the folds '
                                 'for the threshold of --balanced / --max-fp-per-frame '
                                 '(default: 10 with --balanced, else 1)')
        parser.add_argument('--features', default='auto', choices=['auto', 'all', 'transfer'],
                            help='feature set: all, transfer (without class / position '
                                 'features) or auto (the better leave-one-set-out AUROC)')
        parser.add_argument('--C', type=float, action='append', default=None,
                            help='L2 inverse regularisation (repeat to let auto choose; '
                                 'default: 1, 0.1, 0.01)')
        parser.add_argument('--folds', type=int, default=5, help='grouped K-fold over images')
        parser.add_argument('--meta-pgn', default=None, metavar='none|NAME[,NAME...]',
                            help='PGN score maps whose statistics feed the segment features '
                                 '("none": no PGN map; the node then does not compute them); '
                                 'stored in the bundle as runtime.meta_pgn_names. Default: '
                                 "the bundle's runtime.meta_pgn_names, bundle.json unchanged")
        parser.add_argument('--input-size', default=None,
                            help='network input HxW (default: the bundle input size)')
        add_obstacle_options(parser)
        parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
        parser.add_argument('--limit', type=int, default=0)
        add_json_option(parser)

    def main(self, args) -> int:
        """Extract segments on the sets, choose features, fit, store meta.json in the bundle."""
        from pathlib import Path
        from ...errors import OodSegError
        from ..evaluate import to_json
        from ..meta_fit import cv_repeats, fit_chosen, load_meta_dataset, parse_meta_pgn, \
            runtime_pgn_names
        from ...model.bundle import meta_file, read_bundle_json, update_bundle_json
        from ...model.config import ModelConfig
        from ..protocol import check_held_out
        repeats = cv_repeats(args.cv_repeats, args.balanced)   # a bad K: before the slow part
        doc = read_bundle_json(args.bundle)
        check_held_out(doc.get('info', {}), args.ood_set, 'fit the meta classifier')
        check_fit_contrast(doc, args, 'fitting the meta classifier')
        pgn = None if args.meta_pgn is None else parse_meta_pgn(
            args.meta_pgn, ModelConfig.from_dict(doc['config']).available_scores())
        pipe, feats, is_fp, iou, groups, sets, frames = load_meta_dataset(
            args.bundle, args.ood_set, device=args.device, limit=args.limit,
            input_size=args.input_size, obstacle=obstacle_kw(args), meta_pgn=pgn)
        if len(is_fp) < 10:
            raise OodSegError(f'only {len(is_fp)} segments on {", ".join(args.ood_set)}: too '
                              f'few to fit a meta classifier')
        names = list(pipe.extractor.feature_names)
        clf, report = fit_chosen(feats, is_fp, iou, groups, sets, frames, names,
                                 features=args.features, cs=args.C or [1.0, 0.1, 0.01],
                                 folds=args.folds, threshold=args.threshold,
                                 target_tp_kept=args.target_tp_kept,
                                 max_fp_per_frame=args.max_fp_per_frame,
                                 balanced=args.balanced,
                                 repeats=repeats)
        report['meta_pgn'] = list(pipe.extractor.pgn_names)
        clf.info['trained_on'] = [Path(s).name for s in args.ood_set]
        clf.info['heatmap_score'] = pipe.score_name
        clf.info['segment_threshold'] = pipe.threshold
        clf.info['input_size'] = list(pipe.input_size)
        clf.info['heatmap_region'] = pipe.region
        runtime_pgn = None if pgn is None else runtime_pgn_names(args.bundle, pgn, pipe.region)
        clf.save(Path(args.bundle) / meta_file(pipe.region))
        if runtime_pgn is not None:     # the node computes only the maps its metas read
            update_bundle_json(args.bundle, lambda d: d.setdefault('runtime', {}).update(
                meta_pgn_names=runtime_pgn))
        print(to_json(report) if args.json else json.dumps(
            {k: report[k] for k in ('n_segments', 'n_fp', 'auroc', 'r2', 'threshold',
                                    'fp_removed', 'tp_kept', 'features', 'C', 'meta_pgn')
             if k in report}))
        return 0
