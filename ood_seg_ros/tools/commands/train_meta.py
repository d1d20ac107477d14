"""``ood-seg train-meta``: fit the segment meta classifier on held-out validation sets."""

import json

from .base import add_bundle_option, add_json_option, add_obstacle_options, Command, \
    obstacle_kw


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
        parser.add_argument('--features', default='auto', choices=['auto', 'all', 'transfer'],
                            help='feature set: all, transfer (without class / position '
                                 'features) or auto (the better leave-one-set-out AUROC)')
        parser.add_argument('--C', type=float, action='append', default=None,
                            help='L2 inverse regularisation (repeat to let auto choose; '
                                 'default: 1, 0.1, 0.01)')
        parser.add_argument('--folds', type=int, default=5, help='grouped K-fold over images')
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
        from ..meta_fit import (choose_config, fit_meta, fp_rate_threshold, load_meta_dataset,
                                select_features)
        from ...model.bundle import meta_file, read_bundle_json
        from ..protocol import check_held_out
        check_held_out(read_bundle_json(args.bundle).get('info', {}), args.ood_set,
                       'fit the meta classifier')
        pipe, feats, is_fp, iou, groups, sets, frames = load_meta_dataset(
            args.bundle, args.ood_set, device=args.device, limit=args.limit,
            input_size=args.input_size, obstacle=obstacle_kw(args))
        if len(is_fp) < 10:
            raise OodSegError(f'only {len(is_fp)} segments on {", ".join(args.ood_set)}: too '
                              f'few to fit a meta classifier')
        names = list(pipe.extractor.feature_names)
        cs = args.C or [1.0, 0.1, 0.01]
        feature_sets = ['all', 'transfer'] if args.features == 'auto' else [args.features]
        choice, table = (choose_config(feats, is_fp, sets, names, feature_sets, cs)
                         if len(set(sets.tolist())) > 1 else
                         ({'features': feature_sets[-1], 'C': cs[0]}, []))
        idx, used = select_features(names, choice['features'])
        clf, report = fit_meta(feats[:, idx], is_fp, iou, used, groups, n_splits=args.folds,
                               threshold=args.threshold,
                               target_tp_kept=args.target_tp_kept or None, C=choice['C'],
                               return_oof=True)
        p_oof = report.pop('p_oof')
        if args.max_fp_per_frame and p_oof is not None:
            thr = fp_rate_threshold(p_oof, is_fp, sets, frames, args.max_fp_per_frame)
            clf.threshold = report['threshold'] = thr
            report['threshold_rule'] = (f'<= {args.max_fp_per_frame:g} false detections per '
                                        f'frame on every set')
            drop = p_oof > thr
            report['fp_removed'] = float(drop[is_fp].mean()) if is_fp.any() else None
            report['tp_kept'] = float((~drop[~is_fp]).mean()) if (~is_fp).any() else None
        per_set = {}
        for name in sorted(set(sets.tolist())):
            m = sets == name
            entry = {'n_segments': int(m.sum()), 'n_fp': int(is_fp[m].sum())}
            if p_oof is not None:   # out-of-fold: each segment scored by a model not fit on it
                drop = p_oof[m] > report['threshold']
                fp = is_fp[m]
                entry['fp_removed'] = float(drop[fp].mean()) if fp.any() else None
                entry['tp_kept'] = float((~drop[~fp]).mean()) if (~fp).any() else None
                entry['false_detections_per_frame'] = float((~drop[fp]).sum() / frames[name])
            entry['frames'] = frames[name]
            per_set[name] = entry
        report.update({'features': choice['features'], 'selection': table, 'per_set': per_set})
        clf.info['cv'] = report
        clf.info['trained_on'] = [Path(s).name for s in args.ood_set]
        clf.info['heatmap_score'] = pipe.score_name
        clf.info['segment_threshold'] = pipe.threshold
        clf.info['input_size'] = list(pipe.input_size)
        clf.info['heatmap_region'] = pipe.region
        clf.save(Path(args.bundle) / meta_file(pipe.region))
        print(to_json(report) if args.json else json.dumps(
            {k: report[k] for k in ('n_segments', 'n_fp', 'auroc', 'r2', 'threshold',
                                    'fp_removed', 'tp_kept', 'features', 'C') if k in report}))
        return 0
