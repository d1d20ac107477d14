"""
Node-level latency for ``ood-seg bench --node``: frames through a running ood_node.

The node runs as its own process (the ``ood_node`` console script) on a random ROS domain
with discovery limited to this machine; this process publishes ``rgb8`` frames (reliable:
best-effort DDS drops large fragmented frames) one at a time, subscribes to the heatmap,
mask and semantic outputs (a typical consumer; the node skips outputs nobody subscribes
to) and waits for the ``/ood/heatmap`` with the same stamp.

- ``node_latency_ms`` / ``node_latency_p95_ms``: publish -> heatmap received (median, p95);
- ``node_pipeline_ms``: the node's own Pipeline.process time (median from /diagnostics,
  over the warm-up and timed frames);
- ``ros_overhead_ms`` = node_latency_ms - node_pipeline_ms: DDS transport both ways,
  message conversion and publishing of every output;
- ``node_conversion_publish_ms``: the part of it spent inside the node's callback.
"""

import os
from pathlib import Path
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from .errors import OodSegError

READY_TIMEOUT_S = 600.0     # a first TensorRT engine build takes minutes
FRAME_TIMEOUT_S = 30.0


def _node_command(bundle, backend, device, pixels):
    exe = Path(sys.executable).parent / 'ood_node'
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'ood_seg_ros.node']
    return cmd + ['--ros-args', '-r', 'image:=/ood_bench/image',
                  '-p', f'model_path:={bundle}', '-p', f'backend:={backend}',
                  '-p', f'device:={device}', '-p', 'qos_reliability:=reliable',
                  '-p', 'publish_color:=false', '-p', 'diagnostics_period:=0.5',
                  '-p', f'max_frame_pixels:={max(pixels, 1)}', '-p', 'warmup_runs:=3']


def _spin_until(executor, cond, timeout, proc=None):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        if proc is not None and proc.poll() is not None:
            return False
        executor.spin_once(timeout_sec=0.01)
    return True


def bench_node(bundle, height, width, runs, warmup, backend='auto', device='auto') -> dict:
    """Median / p95 input -> heatmap latency (ms) of ood_node on (height, width) frames."""
    import numpy as np
    if not bundle:
        raise OodSegError('bench --node needs a model bundle (--bundle)')
    try:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
    except ImportError as exc:
        raise OodSegError(f'bench --node needs rclpy and sensor_msgs: {exc}') from exc
    from .commands.bench import _sample_frame
    frame = _sample_frame(height, width, np.random.default_rng(0))
    domain = random.randint(100, 200)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    saved = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    log = tempfile.TemporaryFile(mode='w+')
    proc = subprocess.Popen(_node_command(bundle, backend, device, height * width), env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node('ood_bench_client', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    got, diags = {}, []
    try:
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(Image, '/ood_bench/image', reliable)
        node.create_subscription(
            Image, '/ood/heatmap',
            lambda m: got.setdefault((m.header.stamp.sec, m.header.stamp.nanosec),
                                     time.perf_counter()), reliable)
        for topic in ('/ood/segments/mask', '/ood/semantic'):     # a typical consumer
            node.create_subscription(Image, topic, lambda m: None, reliable)
        node.create_subscription(DiagnosticArray, '/diagnostics',
                                 lambda m: diags.extend(m.status), 10)

        def failed():
            return next((s.message for s in diags if s.message.startswith('no model: cannot')),
                        None)
        ready = _spin_until(executor, lambda: pub.get_subscription_count() > 0 or failed(),
                            READY_TIMEOUT_S, proc)
        if not ready or failed():
            raise OodSegError(f'ood_node did not start: {failed() or _tail(log)}')
        msg = Image(height=height, width=width, encoding='rgb8', step=width * 3)
        msg.header.frame_id = 'bench'
        msg.data = frame.tobytes()
        latencies = []
        for i in range(warmup + runs):
            msg.header.stamp = node.get_clock().now().to_msg()
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            t0 = time.perf_counter()
            pub.publish(msg)
            if not _spin_until(executor, lambda: key in got, FRAME_TIMEOUT_S, proc):
                raise OodSegError(f'no /ood/heatmap from ood_node within {FRAME_TIMEOUT_S} s: '
                                  + _tail(log))
            if i >= warmup:
                latencies.append((got[key] - t0) * 1e3)
        total = warmup + runs
        diags.clear()
        _spin_until(executor, lambda: any(
            _value(s, 'frames_processed', 0) >= total for s in diags), 5.0, proc)
        status = next((s for s in diags if _value(s, 'frames_processed', 0) >= total), None)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    lat = statistics.median(latencies)
    res = {'node_latency_ms': round(lat, 3),
           'node_latency_p95_ms': round(float(np.percentile(latencies, 95)), 3),
           'node_frames': runs}
    if status is not None:
        pipe = _value(status, 'pipeline_p50_ms', float('nan'))
        res.update({'node_pipeline_ms': round(pipe, 3),
                    'ros_overhead_ms': round(lat - pipe, 3),
                    'node_conversion_publish_ms': round(
                        _value(status, 'ros_overhead_p50_ms', float('nan')), 3),
                    'node_backend': _value(status, 'backend', '', str),
                    'node_device': _value(status, 'device', '', str)})
    else:
        res['ros_overhead_ms'] = None
    return res


def _value(status, key, default, cast=float):
    for kv in status.values:
        if kv.key == key:
            try:
                return cast(kv.value)
            except ValueError:
                return default
    return default


def _tail(log, n=2000):
    log.flush()
    log.seek(0)
    return ' | '.join(log.read()[-n:].splitlines()[-8:])
