"""
``ood-seg bag-eval``: run a bag through the pipeline (offline) or the live node (DDS).

Both modes write the same artefacts into ``--out``:

* ``output.bag``: rosbag2 (MCAP, metadata version 8) with ``/ood/heatmap`` (32FC1),
  ``/ood/segments/mask`` (mono16) and ``/ood/semantic`` (mono8), each carrying its input
  frame's header (live mode: also ``/diagnostics``, log time = receive time);
* ``metrics.json``: frames in / out / dropped, latency p50 / p95 (offline: processing time
  per frame; live: output arrival - input publish, see :mod:`ood_seg_ros.replay`),
  throughput, and, when the bag has a ground-truth topic, pixel metrics (AP, FPR95, AUROC
  of the heatmaps, binned over [0, 1]) and SMIYC component metrics;
* ``overlay_<i>.png``: heatmap overlays of a few frames (GT outline green, kept segments
  magenta); live mode also ``node.log`` and ``replay.json`` (per-frame times).

Bad messages (corrupt CDR, wrong type) are skipped and counted in both modes
(``bad_messages``, ``bad_message_list``); Ctrl-C / SIGTERM leaves a readable output bag.

Live mode pacing defaults to lockstep (frame i + 1 is published once all outputs of
frame i arrived) so that every frame is evaluated; ``--pacing timed`` plays at the bag's
rate and measures drops.
"""

import json
import math
from pathlib import Path

HELP = 'Evaluate a rosbag: offline pipeline or live node over DDS; metrics, output bag.'
OUTPUT_BAG = 'output.bag'
METRICS_JSON = 'metrics.json'
REPLAY_JSON = 'replay.json'
NODE_LOG = 'node.log'


def add_arguments(parser) -> None:
    """Add the bag-eval options to ``parser``."""
    parser.add_argument('bag', help='input bag (folder with metadata.yaml, .mcap or .db3)')
    parser.add_argument('--bundle', default=None,
                        help='model bundle folder (default: the package default bundle)')
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
    parser.add_argument('--json', action='store_true', help='print metrics.json to stdout')


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def _clean(x):
    """Return ``x`` with NaN / inf as None and numpy scalars as Python numbers."""
    import numpy as np
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def choose_image_topic(bag, gt_topic: str, wanted=None) -> str:
    """Return the input image topic: ``wanted`` or the bag's only Image topic besides GT."""
    from ..data.bags import image_topics
    from ..errors import OodSegError
    topics = image_topics(bag)
    if wanted:
        if wanted not in topics:
            raise OodSegError(f'bag {bag} has no sensor_msgs/Image topic {wanted} (Image '
                              f'topics: {", ".join(topics) or "none"})')
        return wanted
    cands = [t for t in topics if t != gt_topic]
    if len(cands) != 1:
        raise OodSegError(f'bag {bag}: cannot pick the image topic among '
                          f'{", ".join(cands) or "no Image topics"}; pass --image-topic')
    return cands[0]


def default_params_file():
    """Return the package's config/ood.yaml (source tree or installed share), or None."""
    here = Path(__file__).resolve().parents[2] / 'config' / 'ood.yaml'
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('ood_seg_ros')) / 'config' / 'ood.yaml'
        if share.is_file():
            return share
    except (ImportError, LookupError, ValueError):
        pass
    return None


def _prepare_out(out: Path) -> None:
    """Create ``out`` and remove this command's own earlier outputs from it."""
    import shutil

    from ..errors import OodSegError
    if out.exists() and not out.is_dir():
        raise OodSegError(f'output {out} exists and is not a folder')
    out.mkdir(parents=True, exist_ok=True)
    old_bag = out / OUTPUT_BAG
    if old_bag.exists():
        if not (old_bag / 'metadata.yaml').exists() and any(old_bag.iterdir()):
            raise OodSegError(f'{old_bag} exists and is not a bag; remove it')
        shutil.rmtree(old_bag)
    for p in list(out.glob('overlay_*.png')) + [out / METRICS_JSON, out / REPLAY_JSON]:
        if p.is_file():
            p.unlink()


# ---------------------------------------------------------------------------------------
# Offline mode
# ---------------------------------------------------------------------------------------

def run_offline(pipeline, bag, image_topic: str, out_bag, limit=None) -> dict:
    """
    Process every frame of ``image_topic`` with ``pipeline``; write the output bag.

    One warm-up frame runs first (as in the node). Returns the timing dict (frames in /
    out, latency = per-frame processing time in ms, throughput = frames / total
    processing time) like the live report.
    """
    import time

    from ..data.bags import BagWriter, IMAGE_TYPE, image_cdr, read_image_bag, to_rgb
    from ..errors import OodSegError
    from ..replay import HEATMAP_TOPIC, MASK_TOPIC, percentile, SEMANTIC_TOPIC
    import numpy as np
    times, bad = [], []
    pipeline.process(np.zeros(tuple(pipeline.input_size) + (3,), np.uint8))   # warm-up
    with BagWriter(out_bag) as out:
        for topic in (HEATMAP_TOPIC, MASK_TOPIC, SEMANTIC_TOPIC):
            out.add_topic(topic, IMAGE_TYPE)
        for msg in read_image_bag(bag, [image_topic], bad=bad):
            if limit is not None and len(times) >= limit:
                break
            h = msg.header
            t0 = time.perf_counter()
            try:    # a bad frame is skipped and counted, as the node does
                res = pipeline.process(to_rgb(msg.image, h.encoding))
            except OodSegError as exc:
                bad.append({'topic': image_topic, 'stamp_ns': msg.stamp_ns,
                            'reason': str(exc)[:300]})
                continue
            times.append(time.perf_counter() - t0)
            out.write(HEATMAP_TOPIC, msg.stamp_ns,
                      image_cdr(res.heatmap, '32FC1', h.stamp_ns, h.frame_id))
            out.write(MASK_TOPIC, msg.stamp_ns,
                      image_cdr(res.instances, 'mono16', h.stamp_ns, h.frame_id))
            out.write(SEMANTIC_TOPIC, msg.stamp_ns,
                      image_cdr(res.semantic, 'mono8', h.stamp_ns, h.frame_id))
    lat = [t * 1e3 for t in times]
    if bad:
        import logging
        logging.getLogger(__name__).error('bag-eval: skipped %d bad messages of %s (first: '
                                          '%s)', len(bad), bag, bad[0]['reason'])
    return {'frames_in': len(times) + len(bad), 'frames_out': len(times),
            'frames_dropped': 0, 'bad_messages': len(bad), 'bad_message_list': bad[:20],
            'latency_ms': {'p50': percentile(lat, 50), 'p95': percentile(lat, 95),
                           'mean': sum(lat) / len(lat) if lat else None,
                           'max': max(lat) if lat else None},
            'throughput_fps': len(times) / sum(times) if times and sum(times) > 0 else None}


# ---------------------------------------------------------------------------------------
# Metrics from the output bag
# ---------------------------------------------------------------------------------------

def _first_per_stamp(bag, topic) -> dict:
    """Return {header stamp ns: image} of ``topic`` (first message per stamp)."""
    from ..data.bags import read_image_bag
    out = {}
    for msg in read_image_bag(bag, [topic]):
        out.setdefault(msg.header.stamp_ns, msg.image)
    return out


def ood_metrics(out_bag, gt: dict, threshold=None, track: str = 'anomaly') -> dict:
    """
    Pixel and component metrics of the output bag's heatmaps against GT masks.

    gt: {stamp ns: uint8 (H, W) 0/1/255}; frames without a heatmap are skipped (they are
    counted as dropped). Pixel metrics pool all frames (binned over [0, 1], 65536 bins);
    component metrics use ``threshold`` or, by default, the best pixel-F1 threshold.
    """
    from .. import metrics as M
    from ..data.bags import read_image_bag
    from ..errors import OodSegError
    from ..replay import HEATMAP_TOPIC

    def pairs():
        seen = set()
        for msg in read_image_bag(out_bag, [HEATMAP_TOPIC]):
            stamp = msg.header.stamp_ns
            if stamp in seen or stamp not in gt:
                continue
            seen.add(stamp)
            if msg.image.shape != gt[stamp].shape:
                raise OodSegError(f'heatmap of stamp {stamp} is {msg.image.shape}, its GT '
                                  f'mask {gt[stamp].shape}')
            yield msg.image, gt[stamp]

    acc = M.PixelMetricAccumulator(mode='binned', n_bins=65536, score_range=(0.0, 1.0))
    for heat, label in pairs():
        acc.add(heat, label)
    pixel = acc.result()
    thr = threshold
    if thr is None:
        thr = pixel['best_f1_threshold']
        if not math.isfinite(thr):
            thr = 0.5
    comp = M.component_metrics((h for h, _ in pairs()), (g for _, g in pairs()), thr,
                               track=track)
    keep_pixel = ('ap', 'fpr95', 'auroc', 'best_f1', 'best_f1_threshold', 'n_pos', 'n_neg',
                  'n_frames', 'undefined')
    keep_comp = ('siou', 'ppv', 'f1_mean', 'n_gt', 'n_pred', 'n_frames', 'threshold',
                 'track', 'undefined')
    return {'pixel': {k: pixel[k] for k in keep_pixel if k in pixel},
            'component': {k: comp[k] for k in keep_comp if k in comp}}


def write_overlays(in_bag, out_bag, image_topic, gt: dict, out_dir, count: int) -> list:
    """Write ``overlay_<i>.png`` for ``count`` evenly spaced frames; return the paths."""
    import cv2
    import numpy as np

    from ..data.bags import read_image_bag
    from ..msg import topics
    from ..msg.image_codec import array_to_rgb
    from ..viz import instance_boxes, overlay
    if count <= 0:
        return []
    heat = _first_per_stamp(out_bag, topics.absolute(topics.HEATMAP))
    masks = _first_per_stamp(out_bag, topics.absolute(topics.MASK))
    frames = [m for m in read_image_bag(in_bag, [image_topic], bad=[])
              if m.header.stamp_ns in heat]
    if not frames:
        return []
    picks = sorted(set(np.linspace(0, len(frames) - 1, min(count, len(frames)))
                       .round().astype(int).tolist()))
    paths = []
    for i in picks:
        msg = frames[i]
        stamp = msg.header.stamp_ns
        rgb = array_to_rgb(msg.image, msg.header.encoding)
        mask = masks.get(stamp)
        boxes = instance_boxes(mask) if mask is not None and mask.shape == rgb.shape[:2] \
            else ()
        image = overlay(rgb, heat[stamp], boxes, gt=gt.get(stamp), colour_bar=True,
                        label='heatmap')
        path = Path(out_dir) / f'overlay_{i}.png'
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------

def last_diagnostics(out_bag) -> dict:
    """Return the key/value pairs of the last /diagnostics status in ``out_bag`` (or {})."""
    from ..data.bags import DIAGNOSTICS_TYPE, iter_raw_messages, typestore
    last = None
    for _, msgtype, _, raw in iter_raw_messages(out_bag, ['/diagnostics']):
        if msgtype == DIAGNOSTICS_TYPE:
            last = raw
    if last is None:
        return {}
    msg = typestore().deserialize_cdr(last, DIAGNOSTICS_TYPE)
    if not msg.status:
        return {}
    status = msg.status[0]
    out = {'level': int(status.level), 'message': str(status.message)}
    out.update({str(kv.key): str(kv.value) for kv in status.values})
    return out


def run(args) -> int:
    """Evaluate the bag, write the artefacts and print a summary; return the exit status."""
    from ..data.bags import bag_info, read_image_bag
    from ..errors import OodSegError
    from ..model.bundle import default_bundle_path
    from ..pipeline import Pipeline, PipelineSettings

    bag = Path(args.bag)
    bag_info(bag)   # readable bag, else OodSegError naming it
    bundle = Path(args.bundle) if args.bundle else default_bundle_path()
    if bundle is None:
        raise OodSegError('no bundle given and no default bundle installed (--bundle DIR)')
    if args.limit is not None and args.limit < 1:
        raise OodSegError(f'--limit must be >= 1, got {args.limit}')
    if not args.rate_scale > 0:
        raise OodSegError(f'--rate-scale must be > 0, got {args.rate_scale}')
    image_topic = choose_image_topic(bag, args.gt_topic, args.image_topic)
    out = Path(args.out)
    _prepare_out(out)
    out_bag = out / OUTPUT_BAG

    settings = PipelineSettings(bundle=str(bundle.resolve()), backend=args.backend,
                                device=args.device, score=args.score,
                                threshold=args.threshold)
    if args.mode == 'offline':
        pipeline = Pipeline.from_settings(settings)
        doc = {'mode': args.mode, 'bag': str(bag), 'bundle': str(bundle),
               'image_topic': image_topic, 'backend': pipeline.backend.describe(),
               'heatmap_score': pipeline.score_name, 'segment_threshold': pipeline.threshold}
        timing = run_offline(pipeline, bag, image_topic, out_bag, args.limit)
    else:
        from ..replay import run_live, timing_summary
        from ..ros.params import node_parameters
        # The node gets the score, threshold and backend the offline path would use (bundle
        # defaults unless given), resolved here without loading the model.
        settings = settings.resolved()
        doc = {'mode': args.mode, 'bag': str(bag), 'bundle': str(bundle),
               'image_topic': image_topic, 'backend': {'backend': settings.backend,
                                                       'device': args.device},
               'heatmap_score': settings.score, 'segment_threshold': settings.threshold}
        params_file = args.params_file or default_params_file()
        params = node_parameters(settings)
        if args.pacing == 'lockstep':   # and a reliable input: no frame lost in transport
            params.update({'qos_reliability': 'reliable', 'qos_depth': 10})
        report = run_live(bag, out_bag, out / REPLAY_JSON, image_topic, params,
                          params_file=params_file, lockstep=args.pacing == 'lockstep',
                          rate_scale=args.rate_scale, limit=args.limit,
                          frame_timeout=args.frame_timeout, node_log=out / NODE_LOG,
                          isolation_mode=args.isolation)
        timing = timing_summary(report['frames'], report['required_topics'])
        bad = report.get('bad_messages', [])   # skipped by the player, as offline
        timing.update({'frames_in': timing['frames_in'] + len(bad),
                       'bad_messages': len(bad), 'bad_message_list': bad[:20]})
        if bad:
            import logging
            logging.getLogger(__name__).error('bag-eval: skipped %d bad messages of %s '
                                              '(first: %s)', len(bad), bag,
                                              bad[0]['reason'])
        diag = last_diagnostics(out_bag)
        if diag.get('backend'):
            doc['backend'] = {k: diag[k] for k in ('backend', 'device', 'precision')
                              if k in diag}
        doc.update({'pacing': report['pacing'], 'isolation': report['isolation'],
                    'params_file': str(params_file) if params_file else None,
                    'node_command': report['node_command'],
                    'node_exit_code': report['node_exit_code'],
                    'node_startup_s': report['startup_s'],
                    'outputs_received': report['received'],
                    'node_diagnostics': diag})
    doc.update(timing)
    doc['output_bag'] = str(out_bag)

    gt = {}
    if args.gt_topic in bag_info(bag)['topics']:
        for msg in read_image_bag(bag, [args.gt_topic], bad=[]):   # counted above
            gt.setdefault(msg.header.stamp_ns, msg.image)
    doc['gt_topic'] = args.gt_topic if gt else None
    if gt:
        doc.update(ood_metrics(out_bag, gt, args.component_threshold, args.track))
    else:
        doc['pixel'] = doc['component'] = None
    doc['overlays'] = write_overlays(bag, out_bag, image_topic, gt, out, args.overlays)
    doc = _clean(doc)
    (out / METRICS_JSON).write_text(json.dumps(doc, indent=1) + '\n')
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        _print_summary(doc, out)
    return 0


def _fmt(value, spec='.3f') -> str:
    return 'n/a' if value is None else format(value, spec)


def _print_summary(doc: dict, out: Path) -> None:
    """Print a few lines: frames, latency, throughput, OoD metrics, where the files are."""
    lat = doc['latency_ms']
    print(f'{doc["mode"]} bag-eval of {doc["bag"]} ({doc["image_topic"]}) with '
          f'{doc["backend"]["backend"]} on {doc["backend"]["device"]}, score '
          f'{doc["heatmap_score"]}' + (f', {doc["pacing"]} pacing' if 'pacing' in doc else ''))
    print(f'frames in {doc["frames_in"]}, out {doc["frames_out"]}, dropped '
          f'{doc["frames_dropped"]}; latency p50 {_fmt(lat["p50"], ".1f")} ms, p95 '
          f'{_fmt(lat["p95"], ".1f")} ms; throughput {_fmt(doc["throughput_fps"], ".2f")} '
          f'frames/s')
    if doc.get('pixel'):
        px, cp = doc['pixel'], doc['component']
        print(f'pixel AP {_fmt(px["ap"])}, FPR95 {_fmt(px["fpr95"])}, AUROC '
              f'{_fmt(px["auroc"])}; component sIoU {_fmt(cp["siou"])}, PPV '
              f'{_fmt(cp["ppv"])}, F1 {_fmt(cp["f1_mean"])} (threshold '
              f'{_fmt(cp["threshold"])})')
    else:
        print('no ground-truth topic in the bag: no OoD metrics')
    print(f'wrote {out / METRICS_JSON}, {doc["output_bag"]} and {len(doc["overlays"])} '
          f'overlay images')
