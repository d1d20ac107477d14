"""``ood-seg sml-stats``: per-class max-logit statistics for the SML scores."""

from .base import add_bundle_option, add_json_option, Command


class SmlStatsCommand(Command):
    """Gather per-class max-logit statistics (SML scores) on the training split."""

    def add_arguments(self, parser) -> None:
        """SML statistics options."""
        add_bundle_option(parser, 'bundle to store the statistics in')
        from ..data.datasets import add_dataset_option
        add_dataset_option(parser)
        parser.add_argument('--split', default='train',
                            help='split to gather on (default: train, as the SML paper)')
        parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
        parser.add_argument('--limit', type=int, default=0, help='first N frames only')
        parser.add_argument('--every', type=int, default=1, metavar='K',
                            help='every K-th frame of the split only (spread over all its '
                                 'sequences; default 1: all), applied before --limit')
        add_json_option(parser)

    def main(self, args) -> int:
        """Gather the statistics and write them into the bundle's config."""
        import json
        from ..data.datasets import dataset_spec, open_dataset
        from ..data.images import read_rgb
        from ...model import load_bundle
        from ...model.bundle import update_bundle_json
        from ..sml import gather_sml_stats
        bundle = load_bundle(args.bundle, outputs=['probs'], device=args.device)
        ds = open_dataset(dataset_spec(args))
        if tuple(bundle.config.class_names) != ds.classes.names:
            from ...errors import OodSegError
            raise OodSegError(f'dataset {ds.identity} has classes {list(ds.classes.names)} '
                              f'but the bundle has {list(bundle.config.class_names)}')
        pairs = ds.list_pairs(args.split)
        if args.every < 1:
            from ...errors import OodSegError
            raise OodSegError(f'--every must be >= 1, got {args.every}')
        pairs = pairs[::args.every]
        if args.limit:
            pairs = pairs[:args.limit]
        stats = gather_sml_stats(bundle.model, (read_rgb(p) for p, _ in pairs))
        stats = {'split': args.split, 'dataset': ds.identity, **stats}
        # checked against the schema and the config, then written atomically
        update_bundle_json(args.bundle, lambda doc: doc['config'].update(sml_stats=stats))
        g = stats['members']['global']
        summary = {'bundle': str(args.bundle), 'split': args.split, 'frames': stats['frames'],
                   'global_mean': [round(v, 3) for v in g['mean']],
                   'global_std': [round(v, 3) for v in g['std']]}
        print(json.dumps(summary if not args.json else stats, indent=None if not args.json
                         else 1))
        return 0
