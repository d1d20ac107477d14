"""
Live bag replay: play a bag into a running ``ood_node`` over real DDS, record its outputs.

Layout (rclpy may initialise DDS only once per process, and the private network namespace
must exist before it does):

* :func:`run_live` (called by ``ood-seg bag-eval --mode live``) starts
  ``python -m ood_seg_ros.replay ...`` in a child process, inside a private network
  namespace with only loopback (``unshare -n``) when the system allows it, else with
  ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a random ``ROS_DOMAIN_ID``;
* that child (:func:`main`) starts the node as a subprocess exactly as ``launch_ros``
  would (``ood_node --ros-args --params-file ... -r image:=<topic> -p name:=value``), waits
  until the node's input subscription and output publishers are discovered, publishes the
  bag's raw CDR bytes (headers unchanged) and records the outputs with raw subscriptions
  into an output bag (rosbag2, metadata version 8).

Pacing: ``lockstep`` (default, for evaluation) publishes frame i + 1 only once all image
outputs of frame i have arrived (or ``frame_timeout`` passed: the frame counts as dropped),
so every frame is processed whatever the node's speed and input QoS (depth 1 drops frames
that arrive while the node is busy). ``timed`` publishes at the bag's log times (scaled by
``rate_scale``) like ``ros2 bag play``; frames the node cannot keep up with are dropped and
counted.

Bad input: a message that is not a decodable Image (corrupt CDR, another type) is not
published; it is skipped and listed in the report (``bad_messages``), as offline bag-eval
counts it. Interrupts: Ctrl-C / SIGTERM of bag-eval is forwarded to the child as SIGINT
(:func:`interrupt_child`); the child stops between callbacks, stops the node and closes
the output bag (metadata.yaml written), then exits 130.

Times: publish and receive times are taken with ``time.monotonic_ns`` in the one player
process; latency of a frame = arrival of its last image output - its publish time.
"""

import argparse
import json
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

from .errors import OodSegError

HEATMAP_TOPIC = '/ood/heatmap'
MASK_TOPIC = '/ood/segments/mask'
SEMANTIC_TOPIC = '/ood/semantic'
DIAGNOSTICS_TOPIC = '/diagnostics'
IMAGE_OUTPUTS = (HEATMAP_TOPIC, MASK_TOPIC, SEMANTIC_TOPIC)
NS_WRAPPER = ['unshare', '-n', 'sh', '-c', 'ip link set lo up && exec "$@"', 'sh']


# ---------------------------------------------------------------------------------------
# Parent side: isolation and the child process
# ---------------------------------------------------------------------------------------

def node_executable() -> List[str]:
    """Return the command that starts the node: the ``ood_node`` console script if found."""
    for folder in (Path(sys.executable).parent,):
        exe = folder / 'ood_node'
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    found = shutil.which('ood_node')
    if found:
        return [found]
    return [sys.executable, '-c', 'import sys; from ood_seg_ros.ros.main import main; '
            'sys.exit(main())']


def node_command(image_topic: str, params: Dict[str, object],
                 params_file: Optional[str] = None) -> List[str]:
    """Build the node command line the way launch_ros does (params file, remap, -p)."""
    cmd = node_executable() + ['--ros-args']
    if params_file:
        cmd += ['--params-file', str(params_file)]
    cmd += ['-r', f'image:={image_topic}']
    for key, value in params.items():
        if isinstance(value, bool):
            value = 'true' if value else 'false'
        cmd += ['-p', f'{key}:={value}']
    return cmd


def namespace_available() -> bool:
    """Return whether ``unshare -n`` with a loopback interface works here."""
    if shutil.which('unshare') is None or shutil.which('ip') is None:
        return False
    try:
        res = subprocess.run(NS_WRAPPER + ['true'], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def isolation(mode: str = 'auto') -> tuple:
    """
    Return (command prefix, environment overrides, description) for DDS isolation.

    mode: ``auto`` (namespace when possible), ``namespace`` (required) or ``localhost``.
    """
    if mode not in ('auto', 'namespace', 'localhost'):
        raise OodSegError(f'isolation must be auto, namespace or localhost, got {mode!r}')
    if mode in ('auto', 'namespace') and namespace_available():
        return list(NS_WRAPPER), {}, 'private network namespace (unshare -n, loopback only)'
    if mode == 'namespace':
        raise OodSegError('cannot create a private network namespace (unshare -n needs '
                          'root or user namespaces, and the ip tool)')
    domain = random.SystemRandom().randint(1, 101)
    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_LOCALHOST_ONLY': '1',
           'ROS_DOMAIN_ID': str(domain)}
    return [], env, f'localhost discovery, ROS_DOMAIN_ID={domain}'


def run_live(bag, out_bag, report_path, image_topic: str, node_params: Dict[str, object],
             params_file: Optional[str] = None, lockstep: bool = True,
             rate_scale: float = 1.0, limit: Optional[int] = None,
             frame_timeout: float = 60.0, startup_timeout: float = 180.0,
             node_log=None, isolation_mode: str = 'auto') -> dict:
    """
    Replay ``bag`` into a freshly started node in an isolated child; return its report.

    The child writes ``out_bag`` (the node's outputs) and ``report_path`` (JSON: per-frame
    publish / receive times, node command and exit code); see the module docstring.
    """
    prefix, env_extra, description = isolation(isolation_mode)
    pkg_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, **env_extra)
    env['PYTHONPATH'] = pkg_root + (os.pathsep + env['PYTHONPATH']
                                    if env.get('PYTHONPATH') else '')
    cmd = prefix + [sys.executable, '-m', 'ood_seg_ros.replay', '--bag', str(bag),
                    '--out-bag', str(out_bag), '--report', str(report_path),
                    '--image-topic', image_topic, '--node-params', json.dumps(node_params),
                    '--frame-timeout', str(frame_timeout),
                    '--startup-timeout', str(startup_timeout),
                    '--rate-scale', str(rate_scale)]
    if params_file:
        cmd += ['--params-file', str(params_file)]
    if not lockstep:
        cmd += ['--timed']
    if limit is not None:
        cmd += ['--limit', str(int(limit))]
    if node_log:
        cmd += ['--node-log', str(node_log)]
    import tempfile
    with tempfile.TemporaryFile(mode='w+') as log:
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    text=True)
        except OSError as exc:
            raise OodSegError(f'cannot start the replay process: {exc}') from None
        try:
            code = proc.wait()
        except KeyboardInterrupt:   # Ctrl-C, or SIGTERM turned into it by the CLI
            interrupt_child(proc)
            raise
        log.seek(0)
        output = log.read()
    if code != 0:
        tail = '\n'.join(output.strip().splitlines()[-15:])
        raise OodSegError(f'live replay failed (exit code {code}): {tail}')
    try:
        report = json.loads(Path(report_path).read_text())
    except (OSError, ValueError) as exc:
        raise OodSegError(f'live replay wrote no readable report {report_path}: {exc}') \
            from None
    report['isolation'] = description
    return report


def interrupt_child(proc, timeout: float = 60.0) -> Optional[int]:
    """
    Forward an interrupt to the replay child: SIGINT, wait ``timeout`` s, then SIGKILL.

    The child stops the node and closes its output bag (metadata written) on SIGINT;
    a second interrupt here while waiting kills it at once.
    """
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()
        return None


# ---------------------------------------------------------------------------------------
# Timing summary (used by bag-eval)
# ---------------------------------------------------------------------------------------

def percentile(values, q: float) -> Optional[float]:
    """Return the q-th percentile of values, q in [0, 100] (linear); None when empty."""
    import numpy as np
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None


def timing_summary(frames: List[dict], required=IMAGE_OUTPUTS) -> dict:
    """
    Summarise per-frame publish / receive times (ns) into latency and throughput.

    frames: dicts with ``publish_ns`` and ``recv_ns`` {topic: ns}; a frame is out when all
    ``required`` topics it should have arrived. Latency (ms) = last required arrival -
    publish; throughput (frames/s) = frames out / (last arrival - first publish).
    """
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
           'frames_dropped': len(frames) - n_out,
           'latency_ms': {'p50': percentile(lat, 50), 'p95': percentile(lat, 95),
                          'mean': (sum(lat) / len(lat)) if lat else None,
                          'max': max(lat) if lat else None},
           'throughput_fps': None}
    if n_out and frames:
        span = (max(ends) - min(f['publish_ns'] for f in frames)) / 1e9
        out['throughput_fps'] = n_out / span if span > 0 else None
    return out


# ---------------------------------------------------------------------------------------
# Child side: player and recorder (runs inside the namespace)
# ---------------------------------------------------------------------------------------

_INTERRUPTED = []


def _on_interrupt(signum, frame) -> None:
    """Note SIGINT / SIGTERM; the player stops at its next spin (never mid-write)."""
    _INTERRUPTED.append(signum)


class _Player:
    """Publishes a bag's frames, records the node's outputs; rclpy must be initialised."""

    def __init__(self, image_topic: str, out_bag):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from .data.bags import BagWriter
        self.rclpy = rclpy
        self.node = rclpy.create_node('ood_bag_player')
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, image_topic, qos)
        self.image_topic = image_topic
        self.writer = BagWriter(out_bag)
        self.writer.__enter__()
        self.subs = {}
        self.frames: Dict[int, dict] = {}
        self.n_received = {}
        self.n_unmatched = 0

    def spin_once(self, timeout: float) -> None:
        """Process callbacks for at most ``timeout`` s; KeyboardInterrupt once interrupted."""
        if _INTERRUPTED:
            raise KeyboardInterrupt
        self.executor.spin_once(timeout_sec=timeout)

    def spin(self, seconds: float) -> None:
        """Process callbacks for about ``seconds``."""
        end = time.monotonic() + max(seconds, 0.0)
        while True:
            self.spin_once(max(min(end - time.monotonic(), 0.05), 0.0))
            if time.monotonic() >= end:
                return

    def output_publishers(self) -> dict:
        """Return {topic: publisher QoS} of the node's outputs that exist now."""
        out = {}
        for topic in IMAGE_OUTPUTS + (DIAGNOSTICS_TOPIC,):
            infos = [i for i in self.node.get_publishers_info_by_topic(topic)
                     if i.node_name != self.node.get_name()]
            if infos:
                out[topic] = infos[0].qos_profile
        return out

    def subscribe(self, topic: str, pub_qos) -> None:
        """Record ``topic`` with a raw subscription whose reliability matches the node's."""
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile
        from sensor_msgs.msg import Image

        from .data.bags import DIAGNOSTICS_TYPE, IMAGE_TYPE
        msg_cls, msgtype = (DiagnosticArray, DIAGNOSTICS_TYPE) if topic == DIAGNOSTICS_TOPIC \
            else (Image, IMAGE_TYPE)
        qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                         reliability=pub_qos.reliability, durability=pub_qos.durability)
        self.writer.add_topic(topic, msgtype)
        self.n_received[topic] = 0
        self.subs[topic] = self.node.create_subscription(
            msg_cls, topic, lambda raw, t=topic: self._on_output(t, raw), qos, raw=True)

    def _on_output(self, topic: str, raw: bytes) -> None:
        from .data.bags import raw_header_stamp_ns
        mono = time.monotonic_ns()
        self.writer.write(topic, time.time_ns(), raw)
        self.n_received[topic] += 1
        if topic == DIAGNOSTICS_TOPIC:
            return
        frame = self.frames.get(raw_header_stamp_ns(raw))
        if frame is None:
            self.n_unmatched += 1
            return
        frame['recv_ns'].setdefault(topic, mono)

    def publish(self, stamp_ns: int, raw: bytes) -> dict:
        """Publish one frame's raw CDR bytes; return its bookkeeping record."""
        frame = {'stamp_ns': stamp_ns, 'publish_ns': time.monotonic_ns(), 'recv_ns': {}}
        self.frames[stamp_ns] = frame
        self.publisher.publish(raw)
        return frame

    def close(self) -> None:
        """Finish the output bag and destroy the node."""
        self.writer.__exit__(None, None, None)
        self.node.destroy_node()


def _wait_ready(player: _Player, proc, startup_timeout: float, log_path) -> list:
    """Wait until the node subscribes to the input and publishes the image outputs."""
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OodSegError(f'the node exited with code {proc.returncode} during start-up'
                              f'{_log_tail(log_path)}')
        pubs = player.output_publishers()
        if player.publisher.get_subscription_count() >= 1 and HEATMAP_TOPIC in pubs:
            break
        player.spin(0.1)
    else:
        raise OodSegError(f'the node did not subscribe to {player.image_topic} and publish '
                          f'{HEATMAP_TOPIC} within {startup_timeout:.0f} s'
                          f'{_log_tail(log_path)}')
    player.spin(0.3)     # let the remaining output publishers appear
    pubs = player.output_publishers()
    for topic, qos in pubs.items():
        player.subscribe(topic, qos)
    required = [t for t in IMAGE_OUTPUTS if t in pubs]
    while time.monotonic() < deadline:
        if all(player.subs[t].get_publisher_count() >= 1 for t in required):
            break
        player.spin(0.05)
    player.spin(0.5)     # both ends of every match discovered (best-effort input)
    return required


def _log_tail(log_path, lines: int = 12) -> str:
    try:
        text = Path(log_path).read_text(errors='replace').strip().splitlines()
    except (OSError, TypeError):
        return ''
    return ('; node log: ' + ' | '.join(text[-lines:])) if text else ''


def _play(args, player: _Player, proc, required) -> List[dict]:
    """
    Publish the frames (lockstep or timed); return (per-frame records, bad messages).

    A message that is not a decodable sensor_msgs/Image (corrupt CDR, another type,
    inconsistent size) is not published: it is recorded in the bad list (as offline
    bag-eval does) and skipped; corrupt storage ends the replay with the frames so far.
    """
    from .data.bags import (decode_image_cdr, IMAGE_TYPE, iter_raw_messages,
                            raw_header_stamp_ns)
    records, bad = [], []
    t0_wall = t0_bag = None
    last_activity = time.monotonic()
    for topic, msgtype, log_ns, raw in iter_raw_messages(args.bag, [args.image_topic], bad):
        if args.limit is not None and len(records) >= args.limit:
            break
        if proc.poll() is not None:
            raise OodSegError(f'the node exited with code {proc.returncode} during replay'
                              f'{_log_tail(args.node_log)}')
        try:
            if msgtype != IMAGE_TYPE:
                raise OodSegError(f'{msgtype} is not {IMAGE_TYPE}')
            decode_image_cdr(raw, f'bag {args.bag}, topic {topic}')
            stamp = raw_header_stamp_ns(raw)
        except OodSegError as exc:
            bad.append({'topic': topic, 'stamp_ns': log_ns, 'reason': str(exc)[:300]})
            continue
        if not args.timed:
            frame = player.publish(stamp, raw)
            first = not records
            timeout = args.startup_timeout if first else args.frame_timeout
            end = time.monotonic() + timeout
            while time.monotonic() < end and not all(t in frame['recv_ns'] for t in required):
                player.spin_once(0.05)
                if proc.poll() is not None:
                    break
        else:
            if t0_wall is None:
                t0_wall, t0_bag = time.monotonic(), log_ns
            due = t0_wall + (log_ns - t0_bag) / 1e9 / args.rate_scale
            while time.monotonic() < due:
                player.spin_once(max(min(due - time.monotonic(), 0.05), 0.0))
            frame = player.publish(stamp, raw)
            last_activity = time.monotonic()
        records.append(frame)
    if args.timed:
        # drain: wait for outstanding outputs until none arrived for max(2 s, 3 x the
        # slowest latency so far; frame_timeout before any output); frames dropped by the
        # node never come
        seen = -1
        idle = 2.0
        while time.monotonic() - last_activity < idle:
            done_frames = [f for f in records if all(t in f['recv_ns'] for t in required)]
            if len(done_frames) == len(records):
                break
            if len(done_frames) != seen:
                seen, last_activity = len(done_frames), time.monotonic()
                if done_frames:
                    worst = max((max(f['recv_ns'][t] for t in required) - f['publish_ns'])
                                / 1e9 for f in done_frames)
                    idle = max(2.0, 3.0 * worst)
                else:
                    idle = args.frame_timeout
            player.spin_once(0.05)
    player.spin(0.3)   # trailing diagnostics / late outputs
    return records, bad


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to the node when the player dies (no orphaned node)."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, int(signal.SIGTERM))  # SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc, timeout: float = 20.0) -> Optional[int]:
    """Stop the node with SIGINT (as launch does); escalate to SIGTERM / SIGKILL."""
    if proc.poll() is not None:
        return proc.returncode
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0)):
        proc.send_signal(sig)
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()
    return None


def _parse_args(argv):
    p = argparse.ArgumentParser(prog='python -m ood_seg_ros.replay',
                                description='Play a bag into ood_node and record it.')
    p.add_argument('--bag', required=True)
    p.add_argument('--out-bag', required=True)
    p.add_argument('--report', required=True)
    p.add_argument('--image-topic', required=True)
    p.add_argument('--node-params', default='{}', help='JSON dict of -p parameters')
    p.add_argument('--params-file', default=None)
    p.add_argument('--timed', action='store_true', help='bag timing instead of lockstep')
    p.add_argument('--rate-scale', type=float, default=1.0)
    p.add_argument('--limit', type=int, default=None)
    p.add_argument('--frame-timeout', type=float, default=60.0)
    p.add_argument('--startup-timeout', type=float, default=180.0)
    p.add_argument('--node-log', default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Child entry point: start the node, play, record, stop; write the JSON report."""
    args = _parse_args(argv)
    if not args.rate_scale > 0:
        print('error: --rate-scale must be > 0', file=sys.stderr)
        return 2
    import rclpy
    params = json.loads(args.node_params)
    cmd = node_command(args.image_topic, params, args.params_file)
    log_path = args.node_log or os.devnull
    from rclpy.signals import SignalHandlerOptions
    # SIGINT / SIGTERM only set a flag: the player stops between callbacks, stops the node
    # and closes the output bag (rclpy's handler would shut the context down mid-replay).
    rclpy.init(args=None, signal_handler_options=SignalHandlerOptions.NO)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_interrupt)
    player = proc = None
    exit_code = None
    t_start = time.monotonic()
    try:
        player = _Player(args.image_topic, args.out_bag)
        with open(log_path, 'w') as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent)
            try:
                required = _wait_ready(player, proc, args.startup_timeout, args.node_log)
                t_ready = time.monotonic()
                records, bad = _play(args, player, proc, required)
            finally:
                exit_code = _stop(proc)
        report = {
            'pacing': 'timed' if args.timed else 'lockstep',
            'rate_scale': args.rate_scale if args.timed else None,
            'node_command': cmd, 'node_exit_code': exit_code,
            'startup_s': t_ready - t_start,
            'required_topics': required,
            'received': player.n_received, 'unmatched_outputs': player.n_unmatched,
            'frames': records, 'bad_messages': bad,
        }
        Path(args.report).write_text(json.dumps(report, indent=1))
    except OodSegError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: node stopped, output bag closed', file=sys.stderr)
        return 130
    finally:
        if player is not None:
            player.close()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
