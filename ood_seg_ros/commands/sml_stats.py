"""``ood-seg sml-stats``: per-class max-logit statistics for the SML scores."""

from .base import add_bundle_option, add_json_option, Command


class SmlStatsCommand(Command):
    """Gather per-class max-logit statistics (SML scores) on the training split."""

    def add_arguments(self, parser) -> None:
        """SML statistics options."""
        add_bundle_option(parser, 'bundle to store the statistics in')
        parser.add_argument('--camvid', required=True, help='CamVid root')
        parser.add_argument('--split', default='train',
                            help='split to gather on (default: train, as the SML paper)')
        parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
        parser.add_argument('--limit', type=int, default=0, help='first N frames only')
        add_json_option(parser)

    def main(self, args) -> int:
        """Gather the statistics and write them into the bundle's config."""
        import json
        from pathlib import Path
        from ..data.camvid import list_pairs, read_rgb
        from ..model import load_bundle
        from ..model.config import ModelConfig
        from ..sml import gather_sml_stats
        bundle = load_bundle(args.bundle, outputs=['probs'], device=args.device)
        pairs = list_pairs(args.camvid, args.split)
        if args.limit:
            pairs = pairs[:args.limit]
        stats = gather_sml_stats(bundle.model, (read_rgb(p) for p, _ in pairs))
        stats = {'split': args.split, 'camvid': Path(args.camvid).name, **stats}
        path = Path(args.bundle) / 'bundle.json'
        doc = json.loads(path.read_text())
        doc['config']['sml_stats'] = stats
        ModelConfig.from_dict(doc['config'], source=str(path))  # validate before writing
        path.write_text(json.dumps(doc, indent=2) + '\n')
        g = stats['members']['global']
        summary = {'bundle': str(args.bundle), 'split': args.split, 'frames': stats['frames'],
                   'global_mean': [round(v, 3) for v in g['mean']],
                   'global_std': [round(v, 3) for v in g['std']]}
        print(json.dumps(summary if not args.json else stats, indent=None if not args.json
                         else 1))
        return 0
