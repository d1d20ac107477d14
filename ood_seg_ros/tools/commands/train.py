"""``ood-seg train-base | train-probes | train-entropy``: the three training stages."""

import json
import os

from .base import add_json_option, Command


_DEFAULTS = {
    'train-base': {'epochs': 200, 'batch_size': 16, 'lr': 0.02, 'optimizer': 'sgd',
                   'weight_decay': 1e-4},
    'train-probes': {'epochs': 80, 'batch_size': 16, 'lr': 0.01, 'optimizer': 'sgd',
                     'weight_decay': 1e-4, 'patience': 10},
    'train-entropy': {'epochs': 4, 'batch_size': 8, 'lr': 1e-5, 'optimizer': 'adam',
                      'weight_decay': 0.0},
}


class TrainCommand(Command):
    """One training stage: the options and defaults of ``train-<stage>``."""

    def add_arguments(self, parser) -> None:
        """Options of one training stage (defaults differ per stage)."""
        from ..data.datasets import add_dataset_option
        d, name = _DEFAULTS[self.name], self.name
        add_dataset_option(parser)
        parser.add_argument('--out', required=True, help='run folder (checkpoints, bundles)')
        parser.add_argument('--train-splits', default='train',
                            help='comma-separated dataset splits to train on (default: train; '
                                 'val is held out for selection, calibration and meta)')
        parser.add_argument('--val-split', default='val', help='split for per-epoch mIoU')
        if name != 'train-base':
            parser.add_argument('--init-bundle', required=True, help='bundle to start from')
        if name == 'train-entropy':
            parser.add_argument('--ood-proxy', required=True,
                                help='OoD proxy set from make-ood-set (group a)')
            parser.add_argument('--lam', type=float, default=0.9, help='OoD loss weight λ')
            parser.add_argument('--ood-ratio', type=float, default=0.1,
                                help='OoD proxy frames per in-distribution frame (1:10)')
            parser.add_argument('--reference-loss', action='store_true',
                                help="the reference code's all-pixel mean instead of "
                                     'separately normalised in/out means')
            parser.add_argument('--ood-loss', default='entropy', choices=['entropy', 'energy'],
                                help='entropy maximisation (default) or the energy-margin '
                                     'OE loss of Liu et al. 2020 (PEBAL, DenseHybrid)')
            parser.add_argument('--m-in', type=float, default=-12.0,
                                help='energy loss: in-distribution pixels pushed below this '
                                     'energy (default -12)')
            parser.add_argument('--m-out', type=float, default=-6.0,
                                help='energy loss: OoD pixels pushed above this energy '
                                     '(default -6)')
            parser.add_argument('--energy-weight', type=float, default=0.1,
                                help='energy loss: weight of the hinge terms beside CE (0.1)')
            parser.add_argument('--train-part', default='all', choices=['all', 'decoder'],
                                help='all: the whole segmentation network (default); decoder: '
                                     'backbone and ASPP frozen with fixed BN statistics, so '
                                     'the MOoSe probes stay valid')
            parser.add_argument('--photometric', action='store_true',
                                help='style augmentation: gamma, hue, colour of ground and '
                                     'vegetation pixels, blur, noise, JPEG')
        if name == 'train-base':
            # lazy: the registry imports torch, which `ood-seg --help` should not wait for
            from ...model.backbones import backbone_names
            parser.add_argument('--backbone', default='lite0', choices=backbone_names())
            parser.add_argument('--no-imagenet', dest='imagenet', action='store_false',
                                help='start the backbone from random weights (a backbone '
                                     'without installable ImageNet weights needs it)')
            parser.add_argument('--output-stride', type=int, default=16, choices=[8, 16])
            parser.add_argument('--input-size', default='360x480',
                                help="the bundle's network input HxW (default: 360x480)")
            parser.add_argument('--probe-depth', type=int, default=1)
            parser.add_argument('--probe-channels', type=int, default=256)
            parser.add_argument('--probe-separable', action='store_true')
            parser.add_argument('--freeze-stages', type=int, default=0,
                                help='freeze the first N backbone stages (the stem with the '
                                     'first): no gradients, BN statistics fixed (default 0)')
        if name == 'train-probes':
            parser.add_argument('--patience', type=int, default=d['patience'],
                                help='stop after N epochs without probe mIoU gain')
            parser.add_argument('--probe-depth', type=int, default=None,
                                help='rebuild the probes with this depth d')
            parser.add_argument('--probe-channels', type=int, default=None,
                                help='rebuild the probes with this width')
            parser.add_argument('--probe-separable', action='store_true',
                                help='rebuild the probes with depthwise-separable 3x3 convs')
            parser.add_argument('--cache-features', action='store_true',
                                help='compute the frozen base features once per frame and '
                                     'scale and train on them (fast on CPUs)')
            parser.add_argument('--cache-scales', default='0.75,1,1.25',
                                help='input scales cached with --cache-features')
            parser.add_argument('--distill', action='store_true',
                                help='with --cache-features: train fresh probes (of the '
                                     "--probe-* shape) to reproduce the init bundle's probe "
                                     'logits (mean squared difference at decoder '
                                     'resolution, no labels); keeps the epoch closest to '
                                     'them on the val split')
        parser.add_argument('--epochs', type=int, default=d['epochs'])
        parser.add_argument('--batch-size', type=int, default=d['batch_size'])
        parser.add_argument('--lr', type=float, default=d['lr'])
        parser.add_argument('--weight-decay', type=float, default=d['weight_decay'])
        parser.add_argument('--optimizer', default=d['optimizer'],
                            choices=['sgd', 'adam', 'adamw'])
        parser.add_argument('--crop', default='360,480', help='crop H,W')
        parser.add_argument('--class-weights', default='none',
                            choices=['none', 'sqrt_median_freq', 'median_freq'])
        parser.add_argument('--max-steps', type=int, default=0, help='stop after N steps')
        parser.add_argument('--subset', type=int, default=0, help='first N frames per split')
        parser.add_argument('--device', default='auto', help='auto, cpu or cuda')
        parser.add_argument('--no-amp', action='store_true', help='disable mixed precision')
        parser.add_argument('--time-limit', type=float, default=0.0,
                            help='fit the LR schedule into this many minutes (0: no limit)')
        parser.add_argument('--val-every', type=int, default=1, help='validate every N epochs')
        parser.add_argument('--val-limit', type=int, default=0,
                            help='validate on the first N frames of the val split (0: all)')
        parser.add_argument('--seed', type=int, default=0)
        parser.add_argument('--resume', action='store_true', help='continue from checkpoint.pt')
        add_json_option(parser)

    def main(self, args) -> int:
        """Run one training stage."""
        from ..data.datasets import dataset_spec
        from ..train.loop import Trainer, TrainConfig
        stage = self.name.split('-', 1)[1]
        cfg = TrainConfig(
            stage=stage, dataset=dataset_spec(args), out=args.out,
            train_splits=[s for s in args.train_splits.split(',') if s],
            val_split=args.val_split, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer,
            crop=[int(v) for v in args.crop.split(',')], class_weights=args.class_weights,
            max_steps=args.max_steps, subset=args.subset, device=args.device,
            amp=not args.no_amp, seed=args.seed, time_limit_min=args.time_limit,
            val_every=args.val_every, val_limit=args.val_limit,
            init_bundle=getattr(args, 'init_bundle', ''),
            ood_proxy=getattr(args, 'ood_proxy', ''),
            ood_lambda=getattr(args, 'lam', 0.9), ood_ratio=getattr(args, 'ood_ratio', 0.1),
            reference_loss=getattr(args, 'reference_loss', False),
            patience=getattr(args, 'patience', 0), distill=getattr(args, 'distill', False))
        if stage == 'entropy':
            cfg.ood_loss, cfg.m_in, cfg.m_out = args.ood_loss, args.m_in, args.m_out
            cfg.energy_weight, cfg.train_part = args.energy_weight, args.train_part
            cfg.photometric = args.photometric
        if stage == 'base':
            cfg.imagenet = args.imagenet
            cfg.freeze_stages = args.freeze_stages
            from ...model.config import parse_size
            cfg.model = {'backbone': args.backbone, 'output_stride': args.output_stride,
                         'input_size': list(parse_size(args.input_size)),
                         'probe_depth': args.probe_depth, 'probe_channels': args.probe_channels,
                         'probe_separable': args.probe_separable}
        if stage == 'probes' and (args.probe_depth or args.probe_channels or
                                  args.probe_separable):
            from ...model.bundle import read_bundle_json
            base = read_bundle_json(args.init_bundle)['config']
            cfg.model = {'depth': args.probe_depth or base['probe_depth'],
                         'width': args.probe_channels or base['probe_channels'],
                         'separable': args.probe_separable or base['probe_separable']}
        if getattr(args, 'cache_features', False):
            from ..train.probe_cache import train_probes_cached
            result = train_probes_cached(
                cfg, scales=[float(v) for v in args.cache_scales.split(',') if v])
        else:
            result = Trainer(cfg, resume=args.resume).run()
        if int(os.environ.get('RANK', '0')) != 0:
            return 0  # under torchrun only rank 0 validates, saves and reports
        print(json.dumps(result) if args.json else
              f'done: {result["epochs"]} epochs, best val mIoU {result["best_val_miou"]:.4f}, '
              f'bundle {result["bundle"]}')
        return 0


class TrainBaseCommand(TrainCommand):
    """Train DeepLabv3+ on a dataset's train split from ImageNet weights (poly LR)."""


class TrainProbesCommand(TrainCommand):
    """Train the MOoSe probes on a frozen base bundle."""


class TrainEntropyCommand(TrainCommand):
    """Fine-tune a bundle with entropy maximisation on an OoD proxy."""
