"""
Soak benchmark of the live node, ``ood-seg bench --node --soak N``: leaks over many frames.

Runs ``N`` frames through a running ``ood_node`` (own process, random ROS domain,
discovery limited to this machine), one at a time (each waits for its heatmap), with a
bad frame mixed in every ``bad_every`` frames (each waits until diagnostics count it),
cycling through an unsupported encoding, a truncated buffer, a bad step and an empty
image: they must be counted and survived.
Every ``sample_every`` frames it reads the node's ``/proc/<pid>/status`` (VmRSS, VmHWM,
Threads) and counts its open file descriptors.

JSON keys: ``soak_frames``, ``soak_bad_frames``, ``frames_processed`` / ``frames_dropped``
(no heatmap within the timeout), ``node_errors`` (the diagnostics error counters),
``samples`` (one per ``sample_every`` frames), ``rss_growth_mb`` (VmRSS at the last
sample minus at frame ``baseline_frame``, 200 by default: the first frames warm up
allocator pools), ``fd_growth``, ``thread_growth``. No targets are asserted here: the
figures are for the README and for comparing runs.

Large-frame phase (``large_frames`` > 0, ``--soak-large K``): after the soak, ``K`` frames
of ``large_size`` (default 4320 x 7680, 8K; the node's ``max_frame_pixels`` is raised to
allow them) are sent one at a time. ``large_frame_rss_first_mb`` / ``_last_mb`` are VmRSS
after the first / last large heatmap arrived, ``large_frame_rss_before_mb`` before the
first; ``large_frame_rss_growth_mb`` = last - first: a reused buffer shows ~0, growth per
frame shows (K - 1) x the frame's footprint.
"""

import os
from pathlib import Path
import time

import numpy as np

from .frames import sample_frame
from .node import IMAGE_TOPIC, node_session, READY_TIMEOUT_S, status_value
from ...errors import OodSegError
from ...imagecodec.topics import output_topic

FRAME_TIMEOUT_S = 30.0


def proc_stats(pid: int) -> dict:
    """Return VmRSS / VmHWM (MB), thread and open-fd counts of process ``pid`` (Linux /proc)."""
    out = {}
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                out[key.lower() + '_mb'] = round(int(value.split()[0]) / 1024, 2)
            elif key == 'Threads':
                out['threads'] = int(value)
        out['fds'] = len(os.listdir(f'/proc/{pid}/fd'))
    except (OSError, ValueError) as exc:
        raise OodSegError(f'cannot read /proc/{pid} of the node: {exc}') from exc
    return out


def _bad_frames(image_cls, height, width):
    """Malformed frames the node must count and survive (one per kind)."""
    def make(**kw):
        msg = image_cls(height=height, width=width, encoding='rgb8', step=width * 3)
        msg.header.frame_id = 'soak_bad'
        for k, v in kw.items():
            setattr(msg, k, v)
        return msg
    return [make(encoding='32FC1', step=width * 4, data=bytes(width * height * 4)),
            make(data=bytes(width * 3 * height // 2)),
            make(step=width, data=bytes(width * height)),
            make(height=0, width=0, step=0, data=b'')]


def soak_node(bundle, height, width, frames, backend='auto', device='auto',
              bad_every=97, sample_every=100, baseline_frame=200, large_frames=0,
              large_size=(4320, 7680)) -> dict:
    """Run ``frames`` good frames (plus bad ones) through ood_node; memory/fd/thread figures."""
    if not bundle:
        raise OodSegError('bench --node --soak needs a model bundle (--bundle)')
    if frames < 1:
        raise OodSegError(f'--soak needs a frame count >= 1, got {frames}')
    large_h, large_w = (int(v) for v in large_size)
    if large_frames < 0 or (large_frames and min(large_h, large_w) < 1):
        raise OodSegError(f'large frames: need a count >= 0 and a size >= 1x1, got '
                          f'{large_frames} of {large_h}x{large_w}')
    max_pixels = max(height * width, large_h * large_w if large_frames else 0)
    try:    # lazy: without ROS this is one clear error
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
    except ImportError as exc:
        raise OodSegError(f'bench --node --soak needs rclpy and sensor_msgs: {exc}') from exc
    rng = np.random.default_rng(0)
    good = [sample_frame(height, width, rng).tobytes() for _ in range(4)]
    got, diags, samples, large = set(), [], [], {}
    processed = dropped = bad_sent = 0
    t_start = time.monotonic()
    with node_session(bundle, backend, device, max_pixels, 'ood_soak_client',
                      dds_profile=False) as ses:
        node, pid = ses.node, ses.process.pid
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(Image, IMAGE_TOPIC, reliable)
        node.create_subscription(
            Image, output_topic('heatmap'),
            lambda m: got.add((m.header.stamp.sec, m.header.stamp.nanosec)), reliable)
        node.create_subscription(DiagnosticArray, output_topic('diagnostics'),
                                 lambda m: diags.extend(m.status), 10)
        ready = ses.spin_until(lambda: pub.get_subscription_count() > 0, READY_TIMEOUT_S)
        if not ready:
            raise OodSegError(f'ood_node did not start: {ses.tail()}')
        bad = _bad_frames(Image, height, width)
        msg = Image(height=height, width=width, encoding='rgb8', step=width * 3)
        msg.header.frame_id = 'soak'
        for i in range(1, frames + 1):
            if bad_every and i % bad_every == 0:
                # Wait until the node counted it (diagnostics), else the next good frame
                # would replace it in the node's depth-1 queue before it is read.
                pub.publish(bad[bad_sent % len(bad)])
                bad_sent += 1
                ses.spin_until(lambda: any(
                    status_value(st, 'errors_total', 0) >= bad_sent for st in diags), 5.0)
                diags.clear()
            msg.data = good[i % len(good)]
            msg.header.stamp = node.get_clock().now().to_msg()
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            pub.publish(msg)
            if ses.spin_until(lambda: key in got, FRAME_TIMEOUT_S):
                processed += 1
                got.discard(key)
            elif not ses.process.running():
                raise OodSegError(f'ood_node exited during the soak at frame {i}: '
                                  + ses.tail())
            else:
                dropped += 1
            if i % sample_every == 0 or i == frames:
                samples.append({'frame': i, 't_s': round(time.monotonic() - t_start, 1),
                                **proc_stats(pid)})
        if large_frames:
            large = _large_phase(ses, pub, got, Image, large_frames, large_h, large_w, rng)
        diags.clear()
        ses.spin_until(lambda: bool(diags), 5.0)
        status = diags[-1] if diags else None
    base = next((s for s in samples if s['frame'] >= baseline_frame), samples[0])
    last = samples[-1]
    errors = {}
    if status is not None:
        errors = {kv.key[len('errors_'):]: int(kv.value) for kv in status.values
                  if kv.key.startswith('errors_')}
    return {'soak_frames': frames, 'soak_bad_frames': bad_sent, 'height': height,
            'width': width, 'frames_processed': processed, 'frames_dropped': dropped,
            'node_frames_processed': int(status_value(status, 'frames_processed', -1))
            if status is not None else None,
            'node_errors': errors, 'baseline_frame': base['frame'],
            'rss_growth_mb': round(last['vmrss_mb'] - base['vmrss_mb'], 2),
            'hwm_growth_mb': round(last['vmhwm_mb'] - base['vmhwm_mb'], 2),
            'fd_growth': last['fds'] - base['fds'],
            'thread_growth': last['threads'] - base['threads'],
            'samples': samples, **large}


def _large_phase(ses, pub, got, image_cls, count, height, width, rng) -> dict:
    """Send ``count`` large frames one at a time; VmRSS before, after the first and last."""
    node, pid = ses.node, ses.process.pid
    msg = image_cls(height=height, width=width, encoding='rgb8', step=width * 3)
    msg.header.frame_id = 'soak_large'
    msg.data = rng.integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    before = proc_stats(pid)['vmrss_mb']
    rss, processed = [], 0
    for i in range(count):
        msg.header.stamp = node.get_clock().now().to_msg()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        pub.publish(msg)
        if ses.spin_until(lambda: key in got, max(FRAME_TIMEOUT_S, 120.0)):
            processed += 1
            got.discard(key)
        elif not ses.process.running():
            raise OodSegError(f'ood_node exited at large frame {i + 1}: ' + ses.tail())
        rss.append(proc_stats(pid)['vmrss_mb'])
    return {'large_frames': count, 'large_frames_processed': processed,
            'large_height': height, 'large_width': width,
            'large_frame_rss_before_mb': before, 'large_frame_rss_first_mb': rss[0],
            'large_frame_rss_last_mb': rss[-1],
            'large_frame_rss_growth_mb': round(rss[-1] - rss[0], 2),
            'large_frame_rss_mb': rss}
