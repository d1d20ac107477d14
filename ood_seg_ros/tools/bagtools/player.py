"""
The child process of the live replay: start the node, play the bag into it, record.

Run as ``python -m ood_seg_ros.tools.bagtools.player ...`` by :func:`.live.run_live`, inside
the isolation it chose (rclpy initialises DDS once per process, after the namespace
exists). :func:`main` starts the node (:class:`.node_process.NodeProcess`), waits until
its input subscription and output publishers are discovered, publishes the bag's raw CDR
bytes (headers unchanged) with :class:`Player` and records the outputs with raw
subscriptions into an output bag (rosbag2, metadata version 8); the JSON report holds the
per-frame publish / receive times (``time.monotonic_ns`` in this one process).

SIGINT / SIGTERM only set a flag: the player stops between callbacks, stops the node and
closes the output bag (metadata.yaml written), then exits 130.
"""

import argparse
import json
from pathlib import Path
import signal
import sys
import time
from typing import Dict

from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from .node_process import node_command, NodeProcess
from ..data.bags import (BagWriter, decode_image_cdr, DIAGNOSTICS_TYPE, IMAGE_TYPE,
                         iter_raw_messages, raw_header_stamp_ns)
from ...errors import exit_status, OodSegError
from ...imagecodec.topics import IMAGE_OUTPUTS, output_topic

_INTERRUPTED = []


def _on_interrupt(signum, frame) -> None:
    """Note SIGINT / SIGTERM; the player stops at its next spin (never mid-write)."""
    _INTERRUPTED.append(signum)


class Player:
    """Publishes a bag's frames, records the node's outputs; rclpy must be initialised."""

    def __init__(self, image_topic: str, out_bag):
        self.node = rclpy.create_node('ood_bag_player')
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, image_topic, qos)
        self.image_topic = image_topic
        self.image_outputs = tuple(output_topic(k) for k in IMAGE_OUTPUTS)
        self.diagnostics_topic = output_topic('diagnostics')
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
        for topic in self.image_outputs + (self.diagnostics_topic,):
            infos = [i for i in self.node.get_publishers_info_by_topic(topic)
                     if i.node_name != self.node.get_name()]
            if infos:
                out[topic] = infos[0].qos_profile
        return out

    def subscribe(self, topic: str, pub_qos) -> None:
        """Record ``topic`` with a raw subscription whose reliability matches the node's."""
        msg_cls, msgtype = (DiagnosticArray, DIAGNOSTICS_TYPE) \
            if topic == self.diagnostics_topic else (Image, IMAGE_TYPE)
        qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                         reliability=pub_qos.reliability, durability=pub_qos.durability)
        self.writer.add_topic(topic, msgtype)
        self.n_received[topic] = 0
        self.subs[topic] = self.node.create_subscription(
            msg_cls, topic, lambda raw, t=topic: self._on_output(t, raw), qos, raw=True)

    def _on_output(self, topic: str, raw: bytes) -> None:
        mono = time.monotonic_ns()
        self.writer.write(topic, time.time_ns(), raw)
        self.n_received[topic] += 1
        if topic == self.diagnostics_topic:
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


def _wait_ready(player: Player, node: NodeProcess, startup_timeout: float) -> list:
    """Wait until the node subscribes to the input and publishes the image outputs."""
    heatmap = player.image_outputs[0]
    deadline = time.monotonic() + startup_timeout
    if not node.wait_until(lambda: player.publisher.get_subscription_count() >= 1 and
                           heatmap in player.output_publishers(), startup_timeout,
                           lambda: player.spin(0.1)):
        node.check('start-up')
        tail = node.log_tail()
        raise OodSegError(f'the node did not subscribe to {player.image_topic} and publish '
                          f'{heatmap} within {startup_timeout:.0f} s'
                          + (f'; node log: {tail}' if tail else ''))
    player.spin(0.3)     # let the remaining output publishers appear
    pubs = player.output_publishers()
    for topic, qos in pubs.items():
        player.subscribe(topic, qos)
    required = [t for t in player.image_outputs if t in pubs]
    while time.monotonic() < deadline:
        if all(player.subs[t].get_publisher_count() >= 1 for t in required):
            break
        player.spin(0.05)
    player.spin(0.5)     # both ends of every match discovered (best-effort input)
    return required


def _play(args, player: Player, node: NodeProcess, required) -> tuple:
    """
    Publish the frames (lockstep or timed); return (per-frame records, bad messages).

    A message that is not a decodable sensor_msgs/Image (corrupt CDR, another type,
    inconsistent size) is not published: it is recorded in the bad list (as offline
    bag-eval does) and skipped; corrupt storage ends the replay with the frames so far.
    """
    records, bad = [], []
    t0_wall = t0_bag = None
    last_activity = time.monotonic()
    for topic, msgtype, log_ns, raw in iter_raw_messages(args.bag, [args.image_topic], bad):
        if args.limit is not None and len(records) >= args.limit:
            break
        node.check('replay')
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
                if not node.running():
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
        _drain(args, player, records, required, last_activity)
    player.spin(0.3)   # trailing diagnostics / late outputs
    return records, bad


def _drain(args, player: Player, records, required, last_activity: float) -> None:
    """
    Wait for the outstanding outputs of a timed replay.

    It stops once none arrived for max(2 s, 3 x the slowest latency so far), or for
    ``frame_timeout`` before any output: frames dropped by the node never come.
    """
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


def _parse_args(argv):
    p = argparse.ArgumentParser(prog='python -m ood_seg_ros.tools.bagtools.player',
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
    cmd = node_command(args.image_topic, json.loads(args.node_params), args.params_file)
    # SIGINT / SIGTERM only set a flag: the player stops between callbacks, stops the node
    # and closes the output bag (rclpy's handler would shut the context down mid-replay).
    rclpy.init(args=None, signal_handler_options=SignalHandlerOptions.NO)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_interrupt)
    try:
        return exit_status(lambda: _replay(args, cmd),
                           interrupted='interrupted: node stopped, output bag closed')
    finally:
        rclpy.try_shutdown()


def _replay(args, cmd) -> int:
    """Start the node, play the bag, record the outputs, stop the node; write the report."""
    player = None
    t_start = time.monotonic()
    try:
        player = Player(args.image_topic, args.out_bag)
        node = NodeProcess(cmd, log=args.node_log)
        try:
            required = _wait_ready(player, node, args.startup_timeout)
            t_ready = time.monotonic()
            records, bad = _play(args, player, node, required)
        finally:
            exit_code = node.stop()
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
    finally:
        if player is not None:
            player.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
