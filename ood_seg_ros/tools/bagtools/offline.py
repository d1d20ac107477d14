"""
Offline engine of bag-eval: the Pipeline over a bag's frames in this process.

The output bag holds ``/ood/heatmap`` (32FC1), ``/ood/segments/mask`` (mono16) and
``/ood/semantic`` (mono8), each with its input frame's header; latency is the processing
time per frame.
"""

import contextlib
import time

import numpy as np

from .report import bad_message_fields, latency_summary
from ..data.bags import BagWriter, image_cdr, image_topics, IMAGE_TYPE, read_image_bag
from ...errors import OodSegError
from ...imagecodec.image_codec import array_to_rgb
from ...imagecodec.topics import IMAGE_OUTPUTS, output_topic
from ...pipeline import Pipeline, PipelineSettings


def choose_image_topic(bag, gt_topic: str, wanted=None) -> str:
    """Return the input image topic: ``wanted`` or the bag's only Image topic besides GT."""
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


def run_offline(pipeline, bag, image_topic: str, out_bag, limit=None, start: int = 0,
                stop=None, on_frame=None) -> dict:
    """
    Process every frame of ``image_topic`` with ``pipeline``; write the output bag.

    One warm-up frame runs first (as in the node). Returns the timing dict (frames in /
    out, latency = per-frame processing time in ms, throughput = frames / total
    processing time) like the live report. ``out_bag`` None writes no bag; ``start`` /
    ``stop``: only the image messages ``start`` to ``stop`` - 1 (a chunk of a long bag);
    ``on_frame(msg, result, seconds)`` is called for every processed frame.
    """
    topics = {key: output_topic(key) for key in IMAGE_OUTPUTS}
    times, bad = [], []
    pipeline.process(np.zeros(tuple(pipeline.input_size) + (3,), np.uint8))   # warm-up
    with BagWriter(out_bag) if out_bag is not None else contextlib.nullcontext() as out:
        for topic in topics.values() if out is not None else ():
            out.add_topic(topic, IMAGE_TYPE)
        for i, msg in enumerate(read_image_bag(bag, [image_topic], bad=bad)):
            if i < start:
                del bad[:]      # bad messages before the chunk belong to the one before
                continue
            if (limit is not None and len(times) >= limit) or (stop is not None and i >= stop):
                break
            h = msg.header
            t0 = time.perf_counter()
            try:    # a bad frame is skipped and counted, as the node does
                res = pipeline.process(array_to_rgb(msg.image, h.encoding))
            except OodSegError as exc:
                bad.append({'topic': image_topic, 'stamp_ns': msg.stamp_ns,
                            'reason': str(exc)[:300]})
                continue
            times.append(time.perf_counter() - t0)
            if on_frame is not None:
                on_frame(msg, res, times[-1])
            for key, image, encoding in (('heatmap', res.heatmap, '32FC1'),
                                         ('mask', res.instances, 'mono16'),
                                         ('semantic', res.semantic, 'mono8')
                                         ) if out is not None else ():
                out.write(topics[key], msg.stamp_ns,
                          image_cdr(image, encoding, h.stamp_ns, h.frame_id))
    return {'frames_in': len(times) + len(bad), 'frames_out': len(times),
            'frames_dropped': 0, **bad_message_fields(bad, bag),
            'latency_ms': latency_summary([t * 1e3 for t in times]),
            'throughput_fps': len(times) / sum(times) if times and sum(times) > 0 else None}


def evaluate_offline(bag, settings: PipelineSettings, image_topic: str, out_bag,
                     limit=None) -> dict:
    """Run the offline engine; return the metrics document of this mode (no OoD metrics)."""
    pipeline = Pipeline.from_settings(settings)
    doc = {'mode': 'offline', 'bag': str(bag), 'bundle': settings.bundle,
           'image_topic': image_topic, 'backend': pipeline.backend.describe(),
           'heatmap_score': pipeline.score_name, 'segment_threshold': pipeline.threshold}
    doc.update(run_offline(pipeline, bag, image_topic, out_bag, limit))
    return doc
