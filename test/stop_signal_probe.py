"""
A signal that arrives while the executor releases its wait set; run as a script.

``python stop_signal_probe.py deferred|raising``: a lifecycle node spins the way
``ood_node`` does, and SIGTERM reaches :data:`ood_seg_ros.ros.stop_signals.STOP` as
the executor leaves a wait set, in the Python ``__exit__`` of a QoS event handler (every
publisher and subscription has one) before it marks its handle free. An exception there
leaves the handle in use for ever (``raising``: as if the handler always raised, the
node's handler before the fix). The node is then torn down as ``main()`` does, and the
script prints JSON: how the loop ended and which Fast DDS shared-memory segments the
process still holds (a kept participant; at exit its segment stays in ``/dev/shm``).
"""

import json
import os
from pathlib import Path
import signal
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dds_shm  # noqa: E402
from ood_seg_ros.ros.stop_signals import STOP  # noqa: E402
import rclpy  # noqa: E402
from rclpy.event_handler import EventHandler  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import LifecycleNode  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from std_msgs.msg import String  # noqa: E402


def main(mode: str) -> dict:
    """Spin, take the injected signal, tear down; the outcome."""
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = LifecycleNode('stop_signal_probe')
    node.create_subscription(String, 'probe_in', lambda msg: None, 1)
    node.create_publisher(String, 'probe_out', 1)
    node.trigger_configure()
    node.trigger_activate()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    leave = EventHandler.__exit__
    armed = [True]

    def leave_with_signal(handler, *exc):
        if armed[0]:
            armed[0] = False
            if mode == 'raising':
                raise KeyboardInterrupt('SIGTERM')
            STOP.handle(signal.SIGTERM, None)
        return leave(handler, *exc)

    EventHandler.__exit__ = leave_with_signal
    ended, spins = 'no signal', 0
    try:
        while spins < 20:
            spins += 1
            with STOP.deferred():
                executor.spin_once(timeout_sec=0.01)
    except KeyboardInterrupt as exc:
        ended = f'KeyboardInterrupt({exc}) after {spins} spin(s)'
    finally:
        EventHandler.__exit__ = leave
    executor.shutdown()
    node.destroy_node()
    node._state_machine.destroy_when_not_in_use()
    rclpy.try_shutdown()
    return {'ended': ended, 'injected': not armed[0], 'segments_kept': sorted(dds_shm.owned())}


if __name__ == '__main__':
    print(json.dumps(main(sys.argv[1])), flush=True)
    os._exit(0)         # as ood_node: no slow teardown (a kept participant stays kept)
