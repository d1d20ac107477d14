"""
One fleet job in one process: the offline bag engine into a mergeable summary.

The frames go through :func:`ood_seg_ros.tools.bagtools.offline.run_offline` with the node's
:class:`~ood_seg_ros.pipeline.Pipeline` (so the figures are the live node's), no output
bag is written; a worker process keeps the Pipeline of the last two bundles for its next
tasks. Each processed frame adds to an
:class:`~ood_seg_ros.tools.metric_summary.EvalSummary`: the heatmap against the GT mask (when
the bag has the GT topic), the SMIYC components at the component threshold (default:
the bundle's segment threshold, the one the node uses), the kept detections and the
processing time. The job also returns one small record per frame and the overlays of
its worst frames (pixel error at the threshold) as PNG bytes, so a remote worker needs
no shared disk. No Ray here: the driver wraps :func:`run_job` into a task.
"""

import functools
import heapq
import time

import cv2

from .jobs import Job
from ..bagtools.offline import choose_image_topic, run_offline
from ..bagtools.report import first_per_stamp
from ..data.bags import bag_info
from ..metric_summary import EvalSummary
from ...errors import OodSegError
from ...imagecodec.image_codec import array_to_rgb
from ...pipeline import Pipeline, PipelineSettings
from ...viz import overlay


def _frame_record(stamp, heat, gt, threshold, detections) -> dict:
    """Per-frame figures: valid / OoD pixels, false positives / negatives at threshold."""
    rec = {'stamp_ns': int(stamp), 'detections': int(detections)}
    if gt is not None:
        valid = gt != 255
        pred = heat > threshold
        ood = gt == 1
        rec.update({'valid': int(valid.sum()), 'ood': int((ood & valid).sum()),
                    'fp': int((pred & valid & ~ood).sum()), 'fn': int((~pred & ood).sum())})
        rec['error'] = (rec['fp'] + rec['fn']) / max(rec['valid'], 1)
    return rec


def _render(msg, res, gt, label) -> bytes:
    """Return the PNG bytes of the overlay of one frame (heatmap, kept boxes, GT outline)."""
    rgb = array_to_rgb(msg.image, msg.header.encoding)
    boxes = [s.bbox for s in res.segments if s.kept]
    image = overlay(rgb, res.heatmap, boxes, gt=gt, colour_bar=True, label=label)
    ok, png = cv2.imencode('.png', image)
    if not ok:
        raise OodSegError('cannot encode an overlay as PNG')
    return png.tobytes()


@functools.lru_cache(maxsize=2)
def _pipeline(bundle, bundle_hash, backend, device, score, threshold) -> Pipeline:
    """
    Return the Pipeline of a bundle, loaded once per process (A and B: two).

    Ray reuses a worker process for the next task, so the chunks and bags after the first
    skip the model load; ``bundle_hash`` makes a changed bundle at the same path load anew.
    """
    return Pipeline.from_settings(PipelineSettings(bundle=bundle, backend=backend,
                                                   device=device, score=score,
                                                   threshold=threshold))


def run_job(job: Job) -> dict:
    """Evaluate one job; return its result document (``summary``: plain arrays)."""
    t0 = time.perf_counter()
    s = job.settings
    topics = bag_info(job.bag)['topics']
    image_topic = choose_image_topic(job.bag, s.gt_topic, s.image_topic)
    gt = first_per_stamp(job.bag, s.gt_topic, bad=[]) if s.gt_topic in topics else {}
    pipeline = _pipeline(job.bundle, job.bundle_hash, s.backend, s.device, s.score,
                         s.threshold)
    threshold = pipeline.threshold if s.component_threshold is None else s.component_threshold
    summary = EvalSummary((0.0, 1.0), threshold if gt else None, s.track)
    records, worst = [], []

    def on_frame(msg, res, seconds):
        label = gt.get(msg.header.stamp_ns)
        if label is not None and label.shape != res.heatmap.shape:
            raise OodSegError(f'bag {job.bag}: GT mask of stamp {msg.header.stamp_ns} is '
                              f'{label.shape}, the frame {res.heatmap.shape}')
        kept = sum(1 for seg in res.segments if seg.kept)
        summary.add_frame(res.heatmap if label is not None else None, label, kept,
                          seconds * 1e3)
        rec = _frame_record(msg.header.stamp_ns, res.heatmap, label, threshold, kept)
        records.append(rec)
        if 'error' in rec and s.worst > 0:
            item = (rec['error'], -len(records), msg, res, label)
            (heapq.heappush if len(worst) < s.worst else heapq.heappushpop)(worst, item)

    start, stop = job.chunk if job.chunk else (0, None)
    timing = run_offline(pipeline, job.bag, image_topic, None, start=start, stop=stop,
                         on_frame=on_frame)
    overlays = [{'stamp_ns': int(m.header.stamp_ns), 'error': float(e),
                 'png': _render(m, r, g, pipeline.score_name)}
                for e, _, m, r, g in sorted(worst, key=lambda w: -w[0])]
    return {'key': job.key, 'bag': job.bag, 'label': job.label, 'bundle': job.bundle,
            'chunk': list(job.chunk) if job.chunk else None, 'image_topic': image_topic,
            'gt_topic': s.gt_topic if gt else None, 'backend': pipeline.backend.describe(),
            'heatmap_score': pipeline.score_name, 'segment_threshold': pipeline.threshold,
            'component_threshold': threshold if gt else None,
            'frames_in': timing['frames_in'], 'frames_out': timing['frames_out'],
            'bad_messages': timing['bad_messages'],
            'bad_message_list': timing['bad_message_list'],
            'summary': summary.state(), 'frames': records, 'worst': overlays,
            'wall_s': time.perf_counter() - t0}
