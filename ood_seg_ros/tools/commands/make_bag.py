"""``ood-seg make-bag``: write an image folder, a dataset split or an OoD set as a bag."""

import json

from .base import add_json_option, Command


def _target_size(shape, width, height) -> tuple:
    """Return the output (H, W) for a frame of ``shape`` and the requested size."""
    h, w = shape[:2]
    if width is None and height is None:
        return h, w
    if width is None:
        return height, max(1, int(round(w * height / h)))
    if height is None:
        return max(1, int(round(h * width / w))), width
    return height, width


def _frames(folder, with_gt: bool, limit, width, height):
    """Return (list of names, frame iterator, GT iterator or None)."""
    from pathlib import Path

    from ..data.images import read_rgb
    from ..data.ood_sets import image_files, OodDataset
    from ...errors import OodSegError

    folder = Path(folder)
    if not folder.is_dir():
        raise OodSegError(f'image folder {folder} does not exist')
    is_ood_set = (folder / 'images').is_dir() and (folder / 'labels').is_dir()
    if with_gt and not is_ood_set:
        raise OodSegError(f'--with-gt needs an OoD set (images/ + labels/) but {folder} has '
                          f'no images/ and labels/ folders')
    dataset = None
    if is_ood_set and with_gt:
        dataset = OodDataset(folder)
        names = list(dataset.names)
        files = None
    else:
        img_dir = folder / 'images' if (folder / 'images').is_dir() else folder
        files = image_files(img_dir)
        names = sorted(files)
        if not names:
            raise OodSegError(f'image folder {img_dir} holds no images (.jpg, .png, .webp)')
    if limit is not None:
        names = names[:limit]
    gt_list = []
    resize = _resizer(width, height)

    def frames():
        for i, name in enumerate(names):
            if dataset is not None:
                sample = dataset[i]
                gt_list.append(resize(sample.ood_label, linear=False))
                yield name, resize(sample.rgb, linear=True)
            else:
                yield name, resize(read_rgb(files[name]), linear=True)

    def gts():
        while gt_list:
            yield gt_list.pop(0)

    return names, frames(), (gts() if dataset is not None else None)


def _dataset_frames(args, limit, width, height):
    """(names, frame iterator, None) of a dataset split (frames sorted by name)."""
    from ..data.datasets import dataset_spec, open_dataset
    from ..data.images import read_rgb
    ds = open_dataset(dataset_spec(args))
    pairs = ds.list_pairs(args.split)[:limit]
    names = [ds.frame_name(img) for img, _ in pairs]
    resize = _resizer(width, height)

    def frames():
        for name, (img, _) in zip(names, pairs):
            yield name, resize(read_rgb(img), linear=True)

    return names, frames(), None


def _resizer(width, height):
    """resize(img, linear) -> img at the requested size (nearest neighbour unless linear)."""
    import cv2

    def resize(img, linear):
        th, tw = _target_size(img.shape, width, height)
        if img.shape[:2] == (th, tw):
            return img
        if linear:
            interp = cv2.INTER_AREA if th * tw < img.shape[0] * img.shape[1] \
                else cv2.INTER_LINEAR
        else:
            interp = cv2.INTER_NEAREST
        return cv2.resize(img, (tw, th), interpolation=interp)

    return resize


class MakeBagCommand(Command):
    """Write an image folder (or an OoD set with GT) as a rosbag2 bag (metadata v8)."""

    def add_arguments(self, parser) -> None:
        """Add the make-bag options to ``parser``."""
        from ..data.datasets import add_dataset_option
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument('--images', default=None,
                            help='folder of images, or an OoD set (images/ + labels/); frames '
                                 'are taken sorted by name')
        add_dataset_option(parser, group=source)
        parser.add_argument('--split', default='test',
                            help='split of --dataset / --camvid (default: test)')
        parser.add_argument('--out', required=True, help='output bag folder (must not exist)')
        parser.add_argument('--rate', type=float, default=10.0,
                            help='frame rate in Hz for the stamps (default: 10)')
        parser.add_argument('--limit', type=int, default=None, help='only the first N frames')
        parser.add_argument('--with-gt', action='store_true',
                            help='also write the OoD labels (0/1/255) as mono8 on --gt-topic')
        parser.add_argument('--storage', default='mcap', choices=('mcap', 'sqlite3'),
                            help='bag storage (default: mcap)')
        parser.add_argument('--width', type=int, default=None,
                            help='resize frames to this width (GT: nearest neighbour)')
        parser.add_argument('--height', type=int, default=None,
                            help='resize frames to this height; one of width / height alone '
                                 'keeps the aspect ratio')
        parser.add_argument('--topic', default='/camera/image', help='image topic')
        parser.add_argument('--gt-topic', default='/camera/ood_gt', help='GT mask topic')
        parser.add_argument('--frame-id', default='camera', help='header frame_id')
        parser.add_argument('--start-time', type=float, default=None,
                            help='stamp of the first frame, seconds since the epoch '
                                 '(default: now; fix it for reproducible bags)')
        add_json_option(parser, 'the summary')

    def main(self, args) -> int:
        """Write the bag and print a summary; return the exit status."""
        from ..data.bags import write_image_bag
        from ...errors import OodSegError

        if args.limit is not None and args.limit < 1:
            raise OodSegError(f'--limit must be >= 1, got {args.limit}')
        for name in ('width', 'height'):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise OodSegError(f'--{name} must be >= 1, got {value}')
        if args.images:
            names, frames, gts = _frames(args.images, args.with_gt, args.limit, args.width,
                                         args.height)
        else:
            if args.with_gt:
                raise OodSegError('--with-gt needs an OoD set (--images DIR with labels/)')
            names, frames, gts = _dataset_frames(args, args.limit, args.width, args.height)
        start_ns = None if args.start_time is None else int(round(args.start_time * 1e9))
        summary = write_image_bag(args.out, frames, args.rate, topic=args.topic,
                                  frame_id=args.frame_id, gt_masks=gts, gt_topic=args.gt_topic,
                                  storage=args.storage, start_ns=start_ns)
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            gt = f', GT on {summary["gt_topic"]}' if summary['gt_topic'] else ''
            print(f'wrote {summary["n_frames"]} frames ({summary["width"]}x{summary["height"]}, '
                  f'{summary["rate_hz"]:g} Hz) on {summary["topic"]}{gt} to {summary["path"]} '
                  f'({summary["storage"]}, metadata v{summary["version"]}, '
                  f'{summary["size_bytes"] / 1e6:.2f} MB)')
        return 0
