"""``ood-seg recipe``: train, calibrate and ship a bundle from a labelled dataset."""

from .base import Command


class RecipeCommand(Command):
    """Train, calibrate and export a bundle from a dataset in one command (resumable)."""

    def add_arguments(self, parser) -> None:
        """Add the recipe's options (see ood_seg_ros.tools.recipe for the stages)."""
        from ..data.datasets import add_dataset_option
        add_dataset_option(parser)
        parser.add_argument('--ood-val', action='append', default=[], metavar='DIR',
                            help='held-out validation anomaly set (images/ + labels/ or '
                                 'RoadAnomaly frames/); repeat; never trained on')
        parser.add_argument('--coco', default='', metavar='DIR',
                            help='coco128-seg root: adds COCO objects pasted into the val '
                                 'split as a validation set (and the --entropy proxy)')
        parser.add_argument('--coco-map', default='', metavar='YAML',
                            help="more {COCO category: [class names]} that are the dataset's "
                                 'classes (never pasted)')
        parser.add_argument('--out', required=True, help='bundle folder to write')
        parser.add_argument('--work', default='',
                            help='folder of the stages (default: <out>.work); reruns skip '
                                 'the stages done for the same inputs')
        parser.add_argument('--init-bundle', default='',
                            help='start from this base bundle instead of train-base (with '
                                 "the dataset's classes)")
        parser.add_argument('--entropy', action='store_true',
                            help='entropy maximisation on a COCO proxy (needs --coco)')
        parser.add_argument('--input-size', action='append', default=[], metavar='HxW',
                            help='network input size; repeat to calibrate and export at '
                                 'several (the first is the bundle size; default 360x480)')
        parser.add_argument('--device', default='auto', help='auto, cpu or cuda')
        parser.add_argument('--train-split', default='train')
        parser.add_argument('--val-split', default='val')
        parser.add_argument('--test-split', default='test',
                            help='split the model card reports (val when absent)')
        from ...model.backbones import backbone_names
        parser.add_argument('--backbone', default='lite0', choices=backbone_names())
        parser.add_argument('--no-imagenet', dest='imagenet', action='store_false',
                            help='start the backbone from random weights')
        parser.add_argument('--base-epochs', type=int, default=200)
        parser.add_argument('--base-minutes', type=float, default=0.0,
                            help='fit the base schedule into this many minutes (0: none)')
        parser.add_argument('--probe-epochs', type=int, default=60)
        parser.add_argument('--entropy-epochs', type=int, default=4)
        parser.add_argument('--batch-size', type=int, default=16)
        parser.add_argument('--crop', default='', help='training crop H,W (default: the '
                                                       'input size)')
        parser.add_argument('--max-steps', type=int, default=0,
                            help='stop every training stage after N steps (smoke runs)')
        parser.add_argument('--subset', type=int, default=0,
                            help='first N frames per training split (smoke runs)')
        parser.add_argument('--limit', type=int, default=0,
                            help='first N frames of every evaluation (smoke runs)')
        parser.add_argument('--meta-threshold', default='balanced',
                            choices=['balanced', 'fp-rate'],
                            help="meta classifier threshold rule: 'balanced' (the largest "
                                 'worst share, over the validation sets, of false segments '
                                 "removed and true ones kept) or 'fp-rate' (the largest "
                                 'threshold within --max-fp-per-frame)')
        parser.add_argument('--max-fp-per-frame', type=float, default=None,
                            help='false detections per frame allowed on every validation set '
                                 '(fp-rate: default 0.5; balanced: a cap, default none)')
        parser.add_argument('--seed', type=int, default=0)

    def main(self, args) -> int:
        """Run the stages not yet done and write the bundle."""
        from ..data.datasets import dataset_spec
        from ..recipe import Recipe, RecipeOptions
        opts = RecipeOptions(
            dataset=dataset_spec(args), ood_val=args.ood_val, out=args.out, work=args.work,
            init_bundle=args.init_bundle, coco=args.coco, coco_map=args.coco_map,
            entropy=args.entropy, input_sizes=args.input_size or ['360x480'],
            device=args.device, train_split=args.train_split, val_split=args.val_split,
            test_split=args.test_split, backbone=args.backbone, imagenet=args.imagenet,
            base_epochs=args.base_epochs, base_minutes=args.base_minutes,
            probe_epochs=args.probe_epochs, entropy_epochs=args.entropy_epochs,
            batch_size=args.batch_size, crop=args.crop, max_steps=args.max_steps,
            subset=args.subset, limit=args.limit, max_fp_per_frame=(
                args.max_fp_per_frame if args.max_fp_per_frame is not None else
                0.5 if args.meta_threshold == 'fp-rate' else 0.0),
            meta_threshold=args.meta_threshold,
            seed=args.seed)
        Recipe(opts).run()
        return 0
