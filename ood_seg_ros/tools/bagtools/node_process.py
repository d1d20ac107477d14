"""
The one way of starting and stopping an ``ood_node`` process.

* :func:`node_command`: the command line as ``launch_ros`` builds it (``ood_node
  --ros-args --params-file ... -r image:=<topic> -p name:=value``), :func:`node_executable`
  the console script;
* :func:`isolation`: DDS isolation, a private network namespace with only loopback
  (:data:`NETNS`, ``unshare -n``) when the system allows it, else localhost discovery on
  a random ``ROS_DOMAIN_ID`` (:func:`localhost_env`);
* :class:`NodeProcess`: the running node and its log (stdout + stderr): readiness
  (:meth:`~NodeProcess.wait_until`), an exit during a phase as one error with the log
  tail (:meth:`~NodeProcess.check`), stop with SIGINT as launch does, escalating
  (:meth:`~NodeProcess.stop`, :func:`stop_process`); the node gets a signal when the
  thread that started it dies, so no node outlives its driver;
* :func:`output_topic`: the absolute name of one of the node's outputs
  (:data:`IMAGE_OUTPUTS`: the ones a frame's evaluation waits for).

No rclpy here: the live player, the node benchmark and the tests bring their own client.
"""

import contextlib
import ctypes
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...errors import OodSegError

NETNS = ['unshare', '-n', 'sh', '-c', 'ip link set lo up && exec "$@"', 'sh']
# launch's way of stopping a node: SIGINT, then SIGTERM; SIGKILL after the last wait (s)
STOP_SIGNALS = ((signal.SIGINT, 20.0), (signal.SIGTERM, 5.0))


def console_script() -> Optional[str]:
    """Return the ``ood_node`` console script beside this interpreter, or None."""
    exe = Path(sys.executable).parent / 'ood_node'
    return str(exe) if exe.is_file() and os.access(exe, os.X_OK) else None


def node_executable() -> List[str]:
    """Return the command that starts the node: the console script if found, else python."""
    found = console_script() or shutil.which('ood_node')
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
        elif value == '':
            value = "''"        # rcl reads -p values as YAML: an empty string is ''
        cmd += ['-p', f'{key}:={value}']
    return cmd


def netns_problem() -> Optional[str]:
    """Return None when ``unshare -n`` with a loopback interface works here, else why not."""
    if shutil.which('unshare') is None or shutil.which('ip') is None:
        return 'unshare or ip is not installed'
    try:
        proc = subprocess.run(NETNS + ['true'], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f'unshare -n failed: {exc}'
    if proc.returncode != 0:
        return f'unshare -n failed (needs root / CAP_SYS_ADMIN): {proc.stderr.strip()}'
    return None


def namespace_available() -> bool:
    """Return whether ``unshare -n`` with a loopback interface works here."""
    return netns_problem() is None


def localhost_env() -> Dict[str, str]:
    """Return environment overrides for discovery on this machine, random domain 1-101."""
    domain = random.SystemRandom().randint(1, 101)
    return {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_DOMAIN_ID': str(domain)}


def isolation(mode: str = 'auto') -> Tuple[List[str], Dict[str, str], str]:
    """
    Return (command prefix, environment overrides, description) for DDS isolation.

    mode: ``auto`` (namespace when possible), ``namespace`` (required) or ``localhost``.
    """
    if mode not in ('auto', 'namespace', 'localhost'):
        raise OodSegError(f'isolation must be auto, namespace or localhost, got {mode!r}')
    if mode in ('auto', 'namespace') and namespace_available():
        return list(NETNS), {}, 'private network namespace (unshare -n, loopback only)'
    if mode == 'namespace':
        raise OodSegError('cannot create a private network namespace (unshare -n needs '
                          'root or user namespaces, and the ip tool)')
    env = dict(localhost_env(), ROS_LOCALHOST_ONLY='1')     # also for older distributions
    return [], env, f'localhost discovery, ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}'


def node_env(extra: Optional[Dict[str, str]] = None,
             unset: Sequence[str] = ()) -> Dict[str, str]:
    """Return this process's environment without the variables ``unset``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(extra or {})
    return env


def _parent_death_signal(sig) -> Callable[[], None]:
    """Return a ``preexec_fn``: Linux sends ``sig`` to the child when its parent dies."""
    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))    # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    return arm


def stop_process(proc, signals=STOP_SIGNALS) -> Optional[int]:
    """
    Stop ``proc``: each (signal, seconds to wait) in turn, then SIGKILL; its exit code.

    Returns None when it had to be killed. An interrupt while waiting kills it at once
    and is raised again.
    """
    if proc.poll() is not None:
        return proc.returncode
    try:
        for sig, wait in signals:
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(wait)
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    proc.kill()
    proc.wait()
    return None


class NodeProcess:
    """A running ``ood_node`` process, its command and its log (stdout + stderr)."""

    def __init__(self, cmd: Sequence[str], log=None, env: Optional[Dict[str, str]] = None,
                 parent_death=signal.SIGTERM):
        """
        Start ``cmd`` with stdout + stderr to the file ``log`` (None: a temporary file).

        env: the whole environment (None: this process's); parent_death: the signal the
        node gets when the thread that started it dies (None: none).
        """
        self.cmd = list(cmd)
        self._log = open(log, 'w+') if log else tempfile.TemporaryFile(mode='w+')
        preexec = _parent_death_signal(parent_death) if parent_death else None
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=preexec)
        except OSError as exc:
            self._log.close()
            raise OodSegError(f'cannot start the node ({self.cmd[0]}): {exc}') from None

    @property
    def pid(self) -> int:
        """Process id of the node."""
        return self.proc.pid

    def running(self) -> bool:
        """Return whether the node is still running."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        """Return the last ``lines`` lines of the node's log joined by `` | `` ('' if none)."""
        try:
            fd = self._log.fileno()
            text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors='replace')
        except (OSError, ValueError):      # closed by stop()
            return ''
        return ' | '.join(text.strip().splitlines()[-lines:])

    def check(self, phase: str) -> None:
        """Raise OodSegError (exit code, log tail) if the node has exited during ``phase``."""
        if self.proc.poll() is not None:
            tail = self.log_tail()
            raise OodSegError(f'the node exited with code {self.proc.returncode} during '
                              f'{phase}' + (f'; node log: {tail}' if tail else ''))

    def wait_until(self, cond: Callable[[], bool], timeout: float,
                   spin: Callable[[], None]) -> bool:
        """Call ``spin()`` until ``cond()`` holds; False at ``timeout`` s or a node exit."""
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end or self.proc.poll() is not None:
                return False
            spin()
        return True

    def stop(self, signals=STOP_SIGNALS) -> Optional[int]:
        """Stop the node (:func:`stop_process`) and close its log; its exit code or None."""
        try:
            return stop_process(self.proc, signals)
        finally:
            self._log.close()
