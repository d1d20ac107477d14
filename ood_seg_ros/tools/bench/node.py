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
import signal
import statistics
import time

import numpy as np

from .frames import sample_frame
from ..bagtools.node_process import localhost_env, node_command, NodeProcess
from ...errors import OodSegError
from ...imagecodec.topics import IMAGE_OUTPUTS, output_topic
from ...ros.stop_signals import held_signals

READY_TIMEOUT_S = 600.0     # a first TensorRT engine build takes minutes
FRAME_TIMEOUT_S = 30.0
RETRY_S = 5.0               # latency runs: publish a lost frame again after this
SETTLE_S = 5.0              # delivery runs: wait this long for the last outputs
IMAGE_TOPIC = '/ood_bench/image'


def _node_command(bundle, backend, device, pixels):
    return node_command(IMAGE_TOPIC, {
        'model_path': bundle, 'backend': backend, 'device': device,
        'qos_reliability': 'reliable', 'publish_color': False, 'diagnostics_period': 0.5,
        'max_frame_pixels': max(pixels, 1), 'warmup_runs': 3})


@dataclass
class NodeSession:
    """A running ood_node process and this process's client node on a private domain."""

    process: NodeProcess        # the node, with its log
    node: object                # rclpy client node
    executor: object
    dds_profile: object         # Fast DDS profile this process uses, or None

    def spin_until(self, cond, timeout) -> bool:
        """Spin the client until ``cond()``; False at ``timeout`` s or when the node exited."""
        return self.process.wait_until(cond, timeout, self._spin_once)

    def _spin_once(self) -> None:
        # a Ctrl-C raised inside the executor could keep this client's DDS participant
        # (and its shared-memory segment) alive past the process: held until spin_once ends
        with held_signals():
            self.executor.spin_once(timeout_sec=0.01)

    def tail(self) -> str:
        """Return the end of the node's log, for error messages."""
        return self.process.log_tail(8)


@contextlib.contextmanager
def node_session(bundle, backend, device, max_pixels, client_name, dds_profile=True):
    """
    Start ``ood_node`` on a random ROS domain (this machine only) plus a client node here.

    ``dds_profile``: this process stands in for a camera driver and uses the same Fast DDS
    profile as the node. On exit the client is shut down, the environment restored and
    the node stopped with SIGINT (killed after 30 s).
    """
    # Lazy: without ROS, bench_node reports one clear error before this runs.
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from ...ros.main import DDS_PROFILE_VARS, use_dds_profile
    isolated = localhost_env()
    keys = tuple(isolated) + (tuple(DDS_PROFILE_VARS) if dds_profile else ())
    saved = {k: os.environ.get(k) for k in keys}
    env = dict(os.environ, **isolated)
    os.environ.update(isolated)
    profile = None
    if dds_profile:
        profile = use_dds_profile(os.environ) or next(
            (os.environ[v] for v in DDS_PROFILE_VARS if os.environ.get(v)), None)
    process = NodeProcess(_node_command(bundle, backend, device, max_pixels), env=env)
    context = Context()
    rclpy.init(context=context, domain_id=int(isolated['ROS_DOMAIN_ID']))
    node = rclpy.create_node(client_name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield NodeSession(process, node, executor, profile)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        process.stop(((signal.SIGINT, 30.0),))


def bench_node(bundle, height, width, runs, warmup, backend='auto', device='auto') -> dict:
    """Median / p95 input -> heatmap latency (ms) of ood_node on (height, width) frames."""
    if not bundle:
        raise OodSegError('bench --node needs a model bundle (--bundle)')
    try:    # lazy: without ROS this is one clear error
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
    except ImportError as exc:
        raise OodSegError(f'bench --node needs rclpy and sensor_msgs: {exc}') from exc
    frame = sample_frame(height, width, np.random.default_rng(0))
    outs = {key: {} for key in IMAGE_OUTPUTS}    # a typical consumer
    got = outs['heatmap']
    diags = []

    def recorder(seen):
        return lambda m: seen.setdefault((m.header.stamp.sec, m.header.stamp.nanosec),
                                         time.perf_counter())
    # this process stands in for the camera driver: the same DDS profile as the node
    with node_session(bundle, backend, device, height * width, 'ood_bench_client') as ses:
        node, profile = ses.node, ses.dds_profile
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(Image, IMAGE_TOPIC, reliable)
        for key in IMAGE_OUTPUTS:
            node.create_subscription(Image, output_topic(key), recorder(outs[key]), reliable)
        node.create_subscription(DiagnosticArray, output_topic('diagnostics'),
                                 lambda m: diags.extend(m.status), 10)

        def failed():
            return next((s.message for s in diags if s.message.startswith('no model: cannot')),
                        None)
        ready = ses.spin_until(lambda: pub.get_subscription_count() > 0 or failed(),
                               READY_TIMEOUT_S)
        if not ready or failed():
            raise OodSegError(f'ood_node did not start: {failed() or ses.tail()}')
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
                if ses.spin_until(lambda: key in got, RETRY_S):
                    break
                if time.monotonic() > end or not ses.process.running():
                    raise OodSegError(f'no {output_topic("heatmap")} from ood_node within '
                                      f'{FRAME_TIMEOUT_S} s: ' + ses.tail())
            if i >= warmup:
                latencies.append((got[key] - t0) * 1e3)
        status = _fresh_status(ses, diags)
        # delivery: camera-like publishing at a rate the node's processing keeps up with
        # (not the latency: late deliveries must not slow the camera down)
        proc_ms = (status_value(status, 'processing_p95_ms', float('nan')) if status
                   else float('nan'))
        if proc_ms != proc_ms:
            proc_ms = float(np.percentile(latencies, 50))
        period = max(0.1, 2.0 * proc_ms / 1e3)
        received0 = status_value(status, 'frames_received', 0) if status is not None else None
        sent = []
        for _ in range(runs):
            msg.header.stamp = node.get_clock().now().to_msg()
            sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
            pub.publish(msg)
            ses.spin_until(lambda: False, period)
        ses.spin_until(lambda: all(k in o for k in sent for o in outs.values()), SETTLE_S)
        after = _fresh_status(ses, diags)
        if after is not None:
            status = after
    lat = statistics.median(latencies)
    res = {'node_latency_ms': round(lat, 3),
           'node_latency_p95_ms': round(float(np.percentile(latencies, 95)), 3),
           'node_frames': runs}
    if status is not None:
        pipe = status_value(status, 'pipeline_p50_ms', float('nan'))
        res.update({'node_pipeline_ms': round(pipe, 3),
                    'ros_overhead_ms': round(lat - pipe, 3),
                    'node_conversion_publish_ms': round(
                        status_value(status, 'ros_overhead_p50_ms', float('nan')), 3),
                    'node_backend': status_value(status, 'backend', '', str),
                    'node_device': status_value(status, 'device', '', str)})
    else:
        res['ros_overhead_ms'] = None
    if received0 is not None and after is not None:
        res['delivered_input'] = round(
            (status_value(after, 'frames_received', 0) - received0) / len(sent), 3)
    else:
        res['delivered_input'] = None
    for key, seen in outs.items():
        res[f'delivered_{key}'] = round(sum(k in seen for k in sent) / len(sent), 3)
    res.update(delivery_frames=len(sent), delivery_period_s=round(period, 3),
               dds_profile=profile or 'Fast DDS defaults')
    return res


def _fresh_status(ses: NodeSession, diags, timeout=5.0):
    """Return the node's next /diagnostics status once its counters settled, or None."""
    ses.spin_until(lambda: False, 0.3)
    diags.clear()
    ses.spin_until(lambda: bool(diags), timeout)
    return diags[-1] if diags else None


def status_value(status, key, default, cast=float):
    """Return diagnostics value ``key`` of ``status`` as ``cast`` (``default``: absent/bad)."""
    for kv in status.values:
        if kv.key == key:
            try:
                return cast(kv.value)
            except ValueError:
                return default
    return default
