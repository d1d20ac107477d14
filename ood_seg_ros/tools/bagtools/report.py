"""
What bag-eval reports: timing summaries, OoD metrics of an output bag, overlays, JSON.

The artefacts in ``--out`` (both modes): ``output.bag``, ``metrics.json``,
``overlay_<i>.png``; live mode also ``node.log`` and ``replay.json``. Output bags hold the
node's outputs under their names in the root namespace (:func:`.node_process.output_topic`).
"""

import json
import logging
import math
from pathlib import Path
import shutil
from typing import List, Optional

import cv2
import numpy as np

from .. import metrics as M
from ..data.bags import bag_info, DIAGNOSTICS_TYPE, iter_raw_messages, read_image_bag, typestore
from ..metric_summary import ScoreHistogram
from ...errors import OodSegError
from ...imagecodec.image_codec import array_to_rgb
from ...imagecodec.topics import IMAGE_OUTPUTS, output_topic
from ...viz import instance_boxes, overlay

OUTPUT_BAG = 'output.bag'
METRICS_JSON = 'metrics.json'
REPLAY_JSON = 'replay.json'
NODE_LOG = 'node.log'


def prepare_out(out: Path) -> None:
    """Create ``out`` and remove bag-eval's own earlier outputs from it."""
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
# Timing
# ---------------------------------------------------------------------------------------

def percentile(values, q: float) -> Optional[float]:
    """Return the q-th percentile of values, q in [0, 100] (linear); None when empty."""
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None


def latency_summary(lat_ms: List[float]) -> dict:
    """Return p50, p95, mean and max of latencies in ms (None when there are none)."""
    return {'p50': percentile(lat_ms, 50), 'p95': percentile(lat_ms, 95),
            'mean': sum(lat_ms) / len(lat_ms) if lat_ms else None,
            'max': max(lat_ms) if lat_ms else None}


def timing_summary(frames: List[dict], required=None) -> dict:
    """
    Summarise per-frame publish / receive times (ns) into latency and throughput.

    frames: dicts with ``publish_ns`` and ``recv_ns`` {topic: ns}; a frame is out when all
    ``required`` topics (default: heatmap, mask, semantic) it should have arrived. Latency
    (ms) = last required arrival - publish; throughput (frames/s) = frames out / (last
    arrival - first publish).
    """
    if required is None:
        required = [output_topic(k) for k in IMAGE_OUTPUTS]
    lat, ends = [], []
    n_out = 0
    for f in frames:
        recv = f.get('recv_ns', {})
        if not all(t in recv for t in required):
            continue
        end = max(recv[t] for t in required)
        n_out += 1
        ends.append(end)
        lat.append((end - f['publish_ns']) / 1e6)
    out = {'frames_in': len(frames), 'frames_out': n_out,
           'frames_dropped': len(frames) - n_out, 'latency_ms': latency_summary(lat),
           'throughput_fps': None}
    if n_out and frames:
        span = (max(ends) - min(f['publish_ns'] for f in frames)) / 1e9
        out['throughput_fps'] = n_out / span if span > 0 else None
    return out


def bad_message_fields(bad: List[dict], bag) -> dict:
    """Log the skipped bad messages of ``bag`` (if any); their count and first 20."""
    if bad:
        logging.getLogger(__name__).error('bag-eval: skipped %d bad messages of %s (first: '
                                          '%s)', len(bad), bag, bad[0]['reason'])
    return {'bad_messages': len(bad), 'bad_message_list': bad[:20]}


def last_diagnostics(out_bag) -> dict:
    """Return the key/value pairs of the last /diagnostics status in ``out_bag`` (or {})."""
    last = None
    for _, msgtype, _, raw in iter_raw_messages(out_bag, [output_topic('diagnostics')]):
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


# ---------------------------------------------------------------------------------------
# OoD metrics and overlays from the output bag
# ---------------------------------------------------------------------------------------

def first_per_stamp(bag, topic, bad=None) -> dict:
    """
    Return {header stamp ns: image} of ``topic``, the first message per stamp.

    bad: None (a bad message is an error) or a list that collects the skipped ones.
    """
    out = {}
    for msg in read_image_bag(bag, [topic], bad=bad):
        out.setdefault(msg.header.stamp_ns, msg.image)
    return out


def ood_metrics(out_bag, gt: dict, threshold=None, track: str = 'anomaly') -> dict:
    """
    Pixel and component metrics of the output bag's heatmaps against GT masks.

    gt: {stamp ns: uint8 (H, W) 0/1/255}; frames without a heatmap are skipped (they are
    counted as dropped). Pixel metrics pool all frames (a mergeable
    :class:`~ood_seg_ros.tools.metric_summary.ScoreHistogram` over [0, 1]: within 0.002 of exact);
    component metrics use ``threshold`` or, by default, the best pixel-F1 threshold.
    """
    heatmap_topic = output_topic('heatmap')

    def pairs():
        seen = set()
        for msg in read_image_bag(out_bag, [heatmap_topic]):
            stamp = msg.header.stamp_ns
            if stamp in seen or stamp not in gt:
                continue
            seen.add(stamp)
            if msg.image.shape != gt[stamp].shape:
                raise OodSegError(f'heatmap of stamp {stamp} is {msg.image.shape}, its GT '
                                  f'mask {gt[stamp].shape}')
            yield msg.image, gt[stamp]

    acc = ScoreHistogram((0.0, 1.0))
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
                  'n_frames', 'binning', 'undefined')
    keep_comp = ('siou', 'ppv', 'f1_mean', 'n_gt', 'n_pred', 'n_frames', 'threshold',
                 'track', 'undefined')
    return {'pixel': {k: pixel[k] for k in keep_pixel if k in pixel},
            'component': {k: comp[k] for k in keep_comp if k in comp}}


def write_overlays(in_bag, out_bag, image_topic, gt: dict, out_dir, count: int) -> list:
    """Write ``overlay_<i>.png`` for ``count`` evenly spaced frames; return the paths."""
    if count <= 0:
        return []
    heat = first_per_stamp(out_bag, output_topic('heatmap'))
    masks = first_per_stamp(out_bag, output_topic('mask'))
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
# metrics.json and the printed summary
# ---------------------------------------------------------------------------------------

def _clean(x):
    """Return ``x`` with NaN / inf as None and numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def finish(doc: dict, bag, out: Path, image_topic: str, gt_topic: str,
           component_threshold=None, track: str = 'anomaly', overlays: int = 4) -> dict:
    """
    Add the OoD metrics (when ``bag`` has ``gt_topic``) and overlays to a mode's ``doc``.

    Writes ``metrics.json`` into ``out`` and returns the document as written.
    """
    out_bag = out / OUTPUT_BAG
    doc['output_bag'] = str(out_bag)
    gt = {}
    if gt_topic in bag_info(bag)['topics']:
        gt = first_per_stamp(bag, gt_topic, bad=[])    # bad messages: counted by the mode
    doc['gt_topic'] = gt_topic if gt else None
    if gt:
        doc.update(ood_metrics(out_bag, gt, component_threshold, track))
    else:
        doc['pixel'] = doc['component'] = None
    doc['overlays'] = write_overlays(bag, out_bag, image_topic, gt, out, overlays)
    doc = _clean(doc)
    (out / METRICS_JSON).write_text(json.dumps(doc, indent=1) + '\n')
    return doc


def _fmt(value, spec='.3f') -> str:
    return 'n/a' if value is None else format(value, spec)


def print_summary(doc: dict, out: Path) -> None:
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
