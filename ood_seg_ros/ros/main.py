"""
The ``ood_node`` process: DDS settings, start-up parameters, the node, exit codes.

DDS, applied before ``rclpy.init``: Fast DDS's default shared-memory segment (512 KiB)
is smaller than one 640x480 rgb8 frame, and larger messages fall back to fragmented UDP
and are lost or late. The node uses the package's ``config/fastdds.xml`` (32 MiB
segment) unless the user chose a profile, and publishes asynchronously unless
``RMW_FASTRTPS_PUBLICATION_MODE`` is set: ``publish()`` then returns after copying an
output into the writer queue instead of blocking the image callback while DDS sends it.
"""

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

from .node import OodLifecycleNode, OodNode
from .params import NODE_NAME, startup_parameters
from ..errors import OodSegError

DDS_PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')
DDS_PROFILE = 'fastdds.xml'


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


def _start(mode: dict):
    """Build the node ``mode`` asks for; a lifecycle node is activated with autostart."""
    if not mode['lifecycle']:
        return OodNode()
    node = OodLifecycleNode()
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
    params files before the node is built (:func:`.params.startup_parameters`).
    """
    os.environ.setdefault('RMW_FASTRTPS_PUBLICATION_MODE', 'ASYNCHRONOUS')
    profile = use_dds_profile(os.environ)
    rclpy.init(args=args)
    node = executor = None
    code = 0
    try:
        if profile:
            get_logger(NODE_NAME).info(f'Fast DDS profile {profile} (large shared-memory '
                                       f'segment; set FASTRTPS_DEFAULT_PROFILES_FILE to '
                                       f'use your own)')
        node = _start(startup_parameters(sys.argv if args is None else args))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if node.exit_code is None:
            executor.spin_until_future_complete(node.finished)
        code = node.exit_code or 0
        # let the reply to the shutdown transition leave before the node goes
        end = time.monotonic() + 0.3
        while code == 0 and time.monotonic() < end:
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
    return code


if __name__ == '__main__':
    raise SystemExit(main())
