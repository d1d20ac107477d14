"""
``ood-seg bag-eval``: run a bag through the pipeline (offline) or the live node (DDS).

Both modes write the same artefacts into ``--out``:

* ``output.bag``: rosbag2 (MCAP, metadata version 8) with ``/ood/heatmap`` (32FC1),
  ``/ood/segments/mask`` (mono16) and ``/ood/semantic`` (mono8), each carrying its input
  frame's header (live mode: also ``/diagnostics``, log time = receive time);
* ``metrics.json``: frames in / out / dropped, latency p50 / p95 (offline: processing time
  per frame; live: output arrival - input publish, see :mod:`ood_seg_ros.tools.bagtools.live`),
  throughput, and, when the bag has a ground-truth topic, pixel metrics (AP, FPR95, AUROC
  of the heatmaps, mergeable bins over [0, 1], see metric_summary) and SMIYC component metrics;
* ``overlay_<i>.png``: heatmap overlays of a few frames (GT outline green, kept segments
  magenta); live mode also ``node.log`` and ``replay.json`` (per-frame times).

Bad messages (corrupt CDR, wrong type) are skipped and counted in both modes
(``bad_messages``, ``bad_message_list``); Ctrl-C / SIGTERM leaves a readable output bag.

Live mode pacing defaults to lockstep (frame i + 1 is published once all outputs of
frame i arrived) so that every frame is evaluated; ``--pacing timed`` plays at the bag's
rate and measures drops.
"""

import json
from pathlib import Path

from .base import add_bundle_option, add_obstacle_options, check_out_dir, Command
from ...errors import OodSegError


class BagEvalCommand(Command):
    """Evaluate a rosbag: offline pipeline or live node over DDS; metrics, output bag."""

    def add_arguments(self, parser) -> None:
        """Add the bag-eval options to ``parser``."""
        parser.add_argument('bag', help='input bag (folder with metadata.yaml, .mcap or .db3)')
        add_bundle_option(parser)
        parser.add_argument('--mode', default='offline', choices=('offline', 'live'),
                            help='offline: Pipeline in this process; live: ood_node over DDS')
        parser.add_argument('--out', required=True, help='output folder')
        parser.add_argument('--backend', default='auto',
                            choices=('auto', 'torch', 'onnxruntime', 'tensorrt'),
                            help='inference backend (default: auto)')
        parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                            help='device (default: auto)')
        parser.add_argument('--score', default=None,
                            help='heatmap score (default: the bundle default)')
        parser.add_argument('--threshold', type=float, default=None,
                            help='segment threshold (default: the bundle default)')
        parser.add_argument('--image-topic', default=None,
                            help="input image topic (default: the bag's only non-GT Image topic)")
        parser.add_argument('--gt-topic', default='/camera/ood_gt',
                            help='ground-truth OoD mask topic (mono8 0/1/255), used when present')
        parser.add_argument('--limit', type=int, default=None, help='only the first N frames')
        parser.add_argument('--pacing', default='lockstep', choices=('lockstep', 'timed'),
                            help='live mode: lockstep (every frame processed, default) or timed '
                                 '(bag rate x --rate-scale, frames may drop)')
        parser.add_argument('--rate-scale', type=float, default=1.0,
                            help='live timed pacing: playback speed factor (default: 1)')
        parser.add_argument('--params-file', default=None,
                            help='node parameters YAML (default: the package config/ood.yaml)')
        parser.add_argument('--isolation', default='auto',
                            choices=('auto', 'namespace', 'localhost'),
                            help='live DDS isolation: private network namespace (unshare -n) '
                                 'when possible, else localhost discovery + random domain id')
        parser.add_argument('--frame-timeout', type=float, default=60.0,
                            help="live: seconds to wait for a frame's outputs (default: 60)")
        parser.add_argument('--component-threshold', type=float, default=None,
                            help='heatmap threshold of the component metrics (default: the best '
                                 'pixel-F1 threshold, as ood-seg eval)')
        parser.add_argument('--track', default='anomaly', choices=('anomaly', 'obstacle'),
                            help='SMIYC component size limits (default: anomaly)')
        parser.add_argument('--overlays', type=int, default=4,
                            help='number of overlay PNGs (default: 4)')
        add_obstacle_options(parser)
        parser.add_argument('--json', action='store_true', help='print metrics.json to stdout')

    def main(self, args) -> int:
        """Evaluate the bag, write the artefacts and print a summary; return the exit status."""
        # Lazy: these import numpy and torch, and ood-seg imports every subcommand at start.
        from ..bagtools import offline, report
        from ..data.bags import bag_info
        from ...model.bundle import default_bundle_path
        from ...pipeline import PipelineSettings
        bag = Path(args.bag)
        bag_info(bag)   # readable bag, else OodSegError naming it
        bundle = Path(args.bundle) if args.bundle else default_bundle_path()
        if bundle is None:
            raise OodSegError('no bundle given and no default bundle installed (--bundle DIR)')
        if args.limit is not None and args.limit < 1:
            raise OodSegError(f'--limit must be >= 1, got {args.limit}')
        if not args.rate_scale > 0:
            raise OodSegError(f'--rate-scale must be > 0, got {args.rate_scale}')
        image_topic = offline.choose_image_topic(bag, args.gt_topic, args.image_topic)
        out = Path(args.out)
        check_out_dir(out, [bag, bundle, args.params_file])
        report.prepare_out(out)
        settings = PipelineSettings(bundle=str(bundle.resolve()), backend=args.backend,
                                    device=args.device, score=args.score,
                                    threshold=args.threshold, region=args.heatmap_region or '',
                                    band=args.band, band_rows=args.band_rows,
                                    band_width=args.band_width, flip=args.flip,
                                    contrast=args.contrast,
                                    contrast_window=args.contrast_window)
        if args.mode == 'offline':
            doc = offline.evaluate_offline(bag, settings, image_topic, out / report.OUTPUT_BAG,
                                           limit=args.limit)
        else:
            from ..bagtools import live     # rclpy: only the live mode needs ROS
            doc = live.evaluate_live(bag, settings, image_topic, out, params_file=args.params_file,
                                     pacing=args.pacing, rate_scale=args.rate_scale,
                                     limit=args.limit, frame_timeout=args.frame_timeout,
                                     isolation_mode=args.isolation)
        doc = report.finish(doc, bag, out, image_topic, args.gt_topic, args.component_threshold,
                            args.track, args.overlays)
        if args.json:
            print(json.dumps(doc, indent=1))
        else:
            report.print_summary(doc, out)
        return 0
