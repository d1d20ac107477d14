"""
The ``ood_node`` process: DDS settings, start-up parameters, the node, exit codes.

DDS, applied before ``rclpy.init``: Fast DDS's default shared-memory segment (512 KiB)
is smaller than one 640x480 rgb8 frame, and larger messages fall back to fragmented UDP
and are lost or late. The node uses the package's ``config/fastdds.xml`` (32 MiB
segment) unless the user chose a profile, and publishes asynchronously unless
``RMW_FASTRTPS_PUBLICATION_MODE`` is set: ``publish()`` then returns after copying an
output into the writer queue instead of blocking the image callback while DDS sends it.
"""

import logging
import os
from pathlib import Path
import sys
import time
from typing import Optional

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.signals import SignalHandlerOptions

from .input_loss import shm_shortfall, transport_limit_bytes
from .node import destroyed_on_error, OodLifecycleNode, OodNode
from .params import NODE_NAME, startup_parameters
from .stop_signals import STOP
from ..errors import exit_now, OodSegError

DDS_PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')
DDS_PROFILE = 'fastdds.xml'
# How often the spinning executor returns to Python, where a signal's handler runs (s).
SPIN_WAKE_S = 0.1


def dds_profile_path() -> Optional[Path]:
    """
    Return the package's Fast DDS profile ``config/fastdds.xml``, or None.

    Looks in the source tree, else in the installed ``share/ood_seg_ros/config``.
    """
    here = Path(__file__).resolve().parents[2] / 'config' / DDS_PROFILE
    if here.exists():
        return here
    try:    # ament_index_python: present in a ROS install, optional in a plain venv
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('ood_seg_ros')) / 'config' / DDS_PROFILE
        if share.exists():
            return share
    except (ImportError, LookupError, ValueError):
        pass
    return None


def use_dds_profile(environ) -> Optional[str]:
    """
    Point Fast DDS at the package profile unless the user chose one; its path or None.

    Sets ``FASTRTPS_DEFAULT_PROFILES_FILE`` (Fast DDS 2, Jazzy) and
    ``FASTDDS_DEFAULT_PROFILES_FILE`` (Fast DDS 3) in ``environ`` when neither is set and
    the RMW is Fast DDS (``RMW_IMPLEMENTATION`` unset or ``rmw_fastrtps_*``). Must run
    before ``rclpy.init``: Fast DDS reads the profile when the participant is created.
    """
    if any(environ.get(var) for var in DDS_PROFILE_VARS):
        return None
    rmw = environ.get('RMW_IMPLEMENTATION', '')
    if rmw and not rmw.startswith('rmw_fastrtps'):
        return None
    path = dds_profile_path()
    if path is None:
        return None
    for var in DDS_PROFILE_VARS:
        environ[var] = str(path)
    return str(path)


USAGE = """usage: ood_node [-h] [--ros-args -p NAME:=VALUE ... --params-file FILE -r FROM:=TO]

The OoD segmentation node: camera frames in (image or image/compressed, camera_info),
anomaly heatmap, OoD segments and /diagnostics out. Usually started with
  ros2 launch ood_seg_ros ood.launch.py image_topic:=/camera/image_raw

parameters (defaults in config/ood.yaml; ros2 param describe /ood_node NAME):
{parameters}

exit status: 0 on SIGINT/SIGTERM or a lifecycle shutdown, 1 when the model cannot be
loaded and exit_on_error is true, 2 on bad parameters.
"""


def wants_help(argv) -> bool:
    """Return whether ``argv`` asks for help (-h / --help before any --ros-args)."""
    args = list(argv or ())[1:]
    head = args[:args.index('--ros-args')] if '--ros-args' in args else args
    return any(a in ('-h', '--help') for a in head)


def usage() -> str:
    """Return the ``ood_node --help`` text: usage, every parameter, exit codes."""
    from .params import PARAMETERS
    lines = [f'  {name} ({spec[1]}, default {spec[0]!r}{", read-only" if spec[2] else ""}): '
             f'{spec[3]}' for name, spec in PARAMETERS.items()]
    return USAGE.format(parameters='\n'.join(lines))


class _RosLogHandler(logging.Handler):
    """Forward the package's Python log records (ONNX export progress) to the node log."""

    def emit(self, record) -> None:
        logger = get_logger(NODE_NAME)
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            logger.error(text)
        elif record.levelno >= logging.WARNING:
            logger.warning(text)
        else:
            logger.info(text)


def _forward_package_logs() -> None:
    log = logging.getLogger('ood_seg_ros')
    if not any(isinstance(h, _RosLogHandler) for h in log.handlers):
        log.addHandler(_RosLogHandler())
        log.setLevel(logging.INFO)


def _start(mode: dict):
    """Build the node ``mode`` asks for; a lifecycle node is activated with autostart."""
    if not mode['lifecycle']:
        return OodNode()
    node = OodLifecycleNode()
    with destroyed_on_error(node):
        if not mode['autostart']:
            node.get_logger().info('autostart false: unconfigured, waiting for lifecycle '
                                   'transitions (configure, activate)')
        elif node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise OodSegError('lifecycle configure failed (see the error above)')
        elif (node.trigger_activate() != TransitionCallbackReturn.SUCCESS and
                node.exit_code is None):
            node.get_logger().error('activation failed; the node stays inactive '
                                    '(diagnostics ERROR) until activated again')
    return node


def main(args=None) -> int:
    """
    Console script ``ood_node``; exit code 0 on SIGINT/SIGTERM or lifecycle shutdown.

    Exit code 2 on bad parameters, 1 when the model cannot be loaded and
    ``exit_on_error`` is true (otherwise the node stays up with ERROR diagnostics).
    ``lifecycle``, ``autostart`` and ``exit_on_error`` are read from the command line and
    params files before the node is built (:func:`.params.startup_parameters`). Called
    without ``args`` (the console script) it ends the process itself
    (:func:`ood_seg_ros.errors.exit_now`).
    """
    if wants_help(sys.argv if args is None else args):
        print(usage())
        return 0
    os.environ.setdefault('RMW_FASTRTPS_PUBLICATION_MODE', 'ASYNCHRONOUS')
    profile = use_dds_profile(os.environ)
    # Python-level handlers only: a signal raises KeyboardInterrupt in every phase (ONNX
    # export, warm-up, a frame) and the node exits 0 at once instead of after the phase
    # (or not at all); while the executor itself runs it is deferred to the end of
    # spin_once (.stop_signals). rclpy's own handlers are not installed: they shut the
    # context down from a thread of their own while this thread destroys the node, a
    # race (the rare exit -11 at a signal); the executor wakes every SPIN_WAKE_S.
    STOP.install()
    _forward_package_logs()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = None
    code = 0
    try:
        if profile:
            get_logger(NODE_NAME).info(f'Fast DDS profile {profile} (large shared-memory '
                                       f'segment; set FASTRTPS_DEFAULT_PROFILES_FILE to '
                                       f'use your own)')
        shortfall = shm_shortfall(transport_limit_bytes())
        if shortfall:
            get_logger(NODE_NAME).warning(shortfall)
        node = _start(startup_parameters(sys.argv if args is None else args))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while node.exit_code is None and not node.finished.done():
            with STOP.deferred():
                executor.spin_once(timeout_sec=SPIN_WAKE_S)
        code = node.exit_code or 0
        # let the reply to the shutdown transition leave before the node goes
        end = time.monotonic() + 0.3
        while code == 0 and time.monotonic() < end:
            with STOP.deferred():
                executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (OodSegError, ParameterException) as exc:
        if rclpy.ok():
            get_logger(NODE_NAME).fatal(f'bad configuration: {exc}')
            code = 2
    except Exception:  # noqa: B902 - a signal during start-up invalidates handles
        if rclpy.ok():
            raise
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            try:
                node.destroy_node()
            except Exception:  # noqa: B902 - context already gone
                pass
        rclpy.try_shutdown()
    if args is None:        # the ood_node process itself: skip the slow teardown
        from ..runtime.onnx_cache import abort_exports
        exit_now(code, [abort_exports, logging.shutdown])
    return code


if __name__ == '__main__':
    raise SystemExit(main())
