"""``ood-seg make-ood-set``: paste COCO objects into a dataset's frames: an OoD set."""

import json

from .base import add_json_option, Command


def _pair(text: str) -> tuple:
    import argparse
    try:
        lo, hi = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected MIN,MAX (two integers), got {text!r}')
    return lo, hi


class MakeOodSetCommand(Command):
    """Build a synthetic OoD set: COCO objects pasted into a dataset's frames."""

    def add_arguments(self, parser) -> None:
        """Add the make-ood-set options to ``parser``."""
        from ..data.datasets import add_dataset_option
        add_dataset_option(parser)
        parser.add_argument('--coco', required=True, help='coco128-seg root (images/, labels/)')
        parser.add_argument('--coco-map', default=None, metavar='YAML',
                            help='more {COCO category: [class names]}: categories that are '
                                 "one of the dataset's classes are never pasted")
        parser.add_argument('--split', default='val', help='dataset split (default: val)')
        parser.add_argument('--group', default='b', choices=('a', 'b', 'c'),
                            help='COCO object group: a training proxy, b validation, c test')
        parser.add_argument('--out', required=True, help='output folder')
        parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
        parser.add_argument('--limit', type=int, default=None, help='only the first N frames')
        parser.add_argument('--objects', type=_pair, default=(1, 3), metavar='MIN,MAX',
                            help='objects per frame, inclusive (default: 1,3)')
        parser.add_argument('--placement', default='scene', choices=('scene', 'road', 'mixed'),
                            help='scene: objects anywhere (default); road: road obstacles at '
                                 'a perspective-consistent size, COCO and procedural objects; '
                                 'mixed: road for --road-fraction of the frames, else scene')
        parser.add_argument('--road-fraction', type=float, default=0.5,
                            help='mixed placement: share of road-placement frames (0.5)')
        parser.add_argument('--ignore-band', type=int, default=0, metavar='PX',
                            help='training proxies: leave a PX-wide band around each object '
                                 'out of the losses (255 in both labels; default 0, e.g. 4)')
        parser.add_argument('--jpeg-quality', type=_pair, default=None, metavar='MIN,MAX',
                            help='re-encode each composed frame as JPEG at a random quality '
                                 'in MIN..MAX before writing (default: none, e.g. 60,95)')
        parser.add_argument('--procedural-fraction', type=float, default=0.5,
                            help='road placement: share of procedural objects (boxes, tyres, '
                                 'rocks, bags) among the placed ones (default: 0.5)')
        parser.add_argument('--overwrite', action='store_true',
                            help='replace the files of an existing output folder')
        add_json_option(parser, 'the summary')

    def main(self, args) -> int:
        """Build the set and print a summary; return the exit status."""
        from tqdm import tqdm

        from ..data.coco_objects import read_coco_map
        from ..data.datasets import dataset_spec
        from ..data.ood_sets import make_ood_set

        def progress(iterable, total):
            return tqdm(iterable, total=total, desc='make-ood-set', unit='frame',
                        disable=args.json)

        summary = make_ood_set(dataset_spec(args), args.coco, args.split, args.group, args.out,
                               args.seed, objects_per_frame=args.objects, limit=args.limit,
                               overwrite=args.overwrite, progress=progress,
                               coco_map=read_coco_map(args.coco_map) if args.coco_map else None,
                               placement=args.placement,
                               procedural_fraction=args.procedural_fraction,
                               ignore_band_px=args.ignore_band,
                               jpeg_quality=args.jpeg_quality,
                               road_fraction=args.road_fraction)
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            print(f'wrote {summary["n_frames"]} frames to {summary["out_dir"]} '
                  f'(split {summary["split"]}, group {summary["group"]}, seed {summary["seed"]})')
            print(f'objects pasted: {summary["n_objects_pasted"]} from '
                  f'{summary["n_source_objects"]} source objects; OoD pixels: '
                  f'{100 * summary["ood_pixel_fraction"]:.2f} %')
        return 0
