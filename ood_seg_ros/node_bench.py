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
- ``node_conversion_publish_ms``: the part of it spent inside the node's callback;
- ``delivered_input``, ``delivered_heatmap``, ``delivered_mask``, ``delivered_semantic``:
  after the latency runs, ``delivery_frames`` frames are published like a camera, every
  ``delivery_period_s`` (2 x the node's p95 processing time, at least 0.1 s, so
  processing speed is not what drops frames) without waiting; the fraction of them the
  node received (its ``frames_received`` in /diagnostics) and the fraction whose output
  arrived at this reliable subscriber. ``dds_profile``: the Fast DDS profile both sides used (the
  package's ``config/fastdds.xml`` unless FASTRTPS_DEFAULT_PROFILES_FILE is set).
"""

import contextlib
from dataclasses import dataclass
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
RETRY_S = 5.0               # latency runs: publish a lost frame again after this
SETTLE_S = 5.0              # delivery runs: wait this long for the last outputs
OUTPUTS = {'heatmap': '/ood/heatmap', 'mask': '/ood/segments/mask',
           'semantic': '/ood/semantic'}    # a typical consumer; color is not published


def _node_command(bundle, backend, device, pixels):
    exe = Path(sys.executable).parent / 'ood_node'
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'ood_seg_ros.ros.main']
    return cmd + ['--ros-args', '-r', 'image:=/ood_bench/image',
                  '-p', f'model_path:={bundle}', '-p', f'backend:={backend}',
                  '-p', f'device:={device}', '-p', 'qos_reliability:=reliable',
                  '-p', 'publish_color:=false', '-p', 'diagnostics_period:=0.5',
                  '-p', f'max_frame_pixels:={max(pixels, 1)}', '-p', 'warmup_runs:=3']


@dataclass
class NodeSession:
    """A running ood_node process and this process's client node on a private domain."""

    proc: subprocess.Popen
    log: object                 # the node's stdout + stderr (temporary file)
    node: object                # rclpy client node
    executor: object
    dds_profile: object         # Fast DDS profile this process uses, or None


@contextlib.contextmanager
def node_session(bundle, backend, device, max_pixels, client_name, dds_profile=True):
    """
    Start ``ood_node`` on a random ROS domain (this machine only) plus a client node here.

    ``dds_profile``: this process stands in for a camera driver and uses the same Fast DDS
    profile as the node. On exit the client is shut down, the environment restored and
    the node stopped with SIGINT (killed after 30 s).
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from .ros.main import DDS_PROFILE_VARS, use_dds_profile
    domain = random.randint(100, 200)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    keys = ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE') + (
        tuple(DDS_PROFILE_VARS) if dds_profile else ())
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    profile = None
    if dds_profile:
        profile = use_dds_profile(os.environ) or next(
            (os.environ[v] for v in DDS_PROFILE_VARS if os.environ.get(v)), None)
    log = tempfile.TemporaryFile(mode='w+')
    proc = subprocess.Popen(_node_command(bundle, backend, device, max_pixels), env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node(client_name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield NodeSession(proc, log, node, executor, profile)
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
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
    except ImportError as exc:
        raise OodSegError(f'bench --node needs rclpy and sensor_msgs: {exc}') from exc
    from .commands.bench import _sample_frame
    frame = _sample_frame(height, width, np.random.default_rng(0))
    outs = {key: {} for key in OUTPUTS}
    got = outs['heatmap']
    diags = []

    def recorder(seen):
        return lambda m: seen.setdefault((m.header.stamp.sec, m.header.stamp.nanosec),
                                         time.perf_counter())
    # this process stands in for the camera driver: the same DDS profile as the node
    with node_session(bundle, backend, device, height * width, 'ood_bench_client') as ses:
        proc, log, node, executor = ses.proc, ses.log, ses.node, ses.executor
        profile = ses.dds_profile
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(Image, '/ood_bench/image', reliable)
        for key, topic in OUTPUTS.items():
            node.create_subscription(Image, topic, recorder(outs[key]), reliable)
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
            end = time.monotonic() + FRAME_TIMEOUT_S
            while True:     # a lost frame is published again (new stamp) after RETRY_S
                msg.header.stamp = node.get_clock().now().to_msg()
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                t0 = time.perf_counter()
                pub.publish(msg)
                if _spin_until(executor, lambda: key in got, RETRY_S, proc):
                    break
                if time.monotonic() > end or proc.poll() is not None:
                    raise OodSegError(f'no /ood/heatmap from ood_node within '
                                      f'{FRAME_TIMEOUT_S} s: ' + _tail(log))
            if i >= warmup:
                latencies.append((got[key] - t0) * 1e3)
        status = _fresh_status(executor, diags, proc)
        # delivery: camera-like publishing at a rate the node's processing keeps up with
        # (not the latency: late deliveries must not slow the camera down)
        proc_ms = _value(status, 'processing_p95_ms', float('nan')) if status else float('nan')
        if proc_ms != proc_ms:
            proc_ms = float(np.percentile(latencies, 50))
        period = max(0.1, 2.0 * proc_ms / 1e3)
        received0 = _value(status, 'frames_received', 0) if status is not None else None
        sent = []
        for _ in range(runs):
            msg.header.stamp = node.get_clock().now().to_msg()
            sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
            pub.publish(msg)
            _spin_until(executor, lambda: False, period, proc)
        _spin_until(executor, lambda: all(k in o for k in sent for o in outs.values()),
                    SETTLE_S, proc)
        after = _fresh_status(executor, diags, proc)
        if after is not None:
            status = after
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
    if received0 is not None and after is not None:
        res['delivered_input'] = round(
            (_value(after, 'frames_received', 0) - received0) / len(sent), 3)
    else:
        res['delivered_input'] = None
    for key, seen in outs.items():
        res[f'delivered_{key}'] = round(sum(k in seen for k in sent) / len(sent), 3)
    res.update(delivery_frames=len(sent), delivery_period_s=round(period, 3),
               dds_profile=profile or 'Fast DDS defaults')
    return res


def _fresh_status(executor, diags, proc, timeout=5.0):
    """Return the node's next /diagnostics status once its counters settled, or None."""
    _spin_until(executor, lambda: False, 0.3, proc)
    diags.clear()
    _spin_until(executor, lambda: bool(diags), timeout, proc)
    return diags[-1] if diags else None


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
