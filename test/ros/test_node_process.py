"""
The one way of starting and stopping ood_node: command line, isolation, stop, log, death.

Plain Python child processes stand in for the node, so these run without ROS or DDS.
"""

from pathlib import Path
import signal
import subprocess
import sys
import time

from ood_seg_ros.errors import OodSegError
from ood_seg_ros.imagecodec.topics import output_topic
from ood_seg_ros.tools.bagtools import node_process as npr
import pytest

# a stand-in node: says 'ready' once its signal handlers are installed, then sleeps
STAND_IN = r"""
import signal, sys, time
mode = sys.argv[1]
if mode in ('ignore_int', 'ignore_all'):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
if mode == 'ignore_all':
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
print('ready', flush=True)
time.sleep(120)
"""


def _start(tmp_path, mode, **kw):
    node = npr.NodeProcess([sys.executable, '-c', STAND_IN, mode], log=tmp_path / 'n.log',
                           **kw)
    assert node.wait_until(lambda: 'ready' in node.log_tail(), 30, lambda: time.sleep(0.02))
    return node


def test_node_command_is_the_launch_ros_shape():
    cmd = npr.node_command('/cam/image', {'model_path': '/m', 'lifecycle': True,
                                          'fp16': False, 'segment_threshold': 0.5},
                           params_file='p.yaml')
    exe = npr.node_executable()
    assert cmd[:len(exe)] == exe
    assert cmd[len(exe):] == ['--ros-args', '--params-file', 'p.yaml', '-r',
                              'image:=/cam/image', '-p', 'model_path:=/m', '-p',
                              'lifecycle:=true', '-p', 'fp16:=false', '-p',
                              'segment_threshold:=0.5']
    assert '--params-file' not in npr.node_command('/x', {})


def test_localhost_isolation_and_bad_mode():
    prefix, env, text = npr.isolation('localhost')
    assert prefix == []
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert env['ROS_LOCALHOST_ONLY'] == '1'
    assert 1 <= int(env['ROS_DOMAIN_ID']) <= 101
    assert text == f'localhost discovery, ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}'
    with pytest.raises(OodSegError, match='isolation must be'):
        npr.isolation('vpn')


def test_node_env_drops_and_adds(monkeypatch):
    monkeypatch.setenv('FASTRTPS_DEFAULT_PROFILES_FILE', 'x.xml')
    env = npr.node_env({'ROS_DOMAIN_ID': '9'}, unset=('FASTRTPS_DEFAULT_PROFILES_FILE',))
    assert 'FASTRTPS_DEFAULT_PROFILES_FILE' not in env and env['ROS_DOMAIN_ID'] == '9'


def test_output_topics_in_a_namespace():
    assert output_topic('heatmap') == '/ood/heatmap'
    assert output_topic('mask', '/left') == '/left/ood/segments/mask'
    assert output_topic('diagnostics', '/left') == '/diagnostics'


def test_stop_sigint_then_sigterm_then_kill(tmp_path):
    node = _start(tmp_path, 'plain')
    assert node.stop() == -signal.SIGINT                        # SIGINT ends it
    node = _start(tmp_path, 'ignore_int')
    t0 = time.monotonic()
    assert node.stop(((signal.SIGINT, 0.5), (signal.SIGTERM, 10.0))) == 7
    assert time.monotonic() - t0 < 8
    node = _start(tmp_path, 'ignore_all')
    assert node.stop(((signal.SIGINT, 0.3), (signal.SIGTERM, 0.3))) is None
    assert node.proc.returncode == -9                           # killed
    assert node.log_tail() == ''                                # log closed by stop


def test_exit_during_a_phase_is_one_error_with_the_log_tail(tmp_path):
    node = npr.NodeProcess([sys.executable, '-c',
                            'import sys; print("loading"); print("no such bundle"); '
                            'sys.exit(3)'])
    assert not node.wait_until(lambda: False, 30, lambda: time.sleep(0.02))
    node.proc.wait(10)
    with pytest.raises(OodSegError) as info:
        node.check('start-up')
    assert str(info.value) == ('the node exited with code 3 during start-up; node log: '
                               'loading | no such bundle')
    assert node.stop() == 3
    with pytest.raises(OodSegError, match='cannot start the node'):
        npr.NodeProcess([str(tmp_path / 'missing_exe')])


def _dead(pid):
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return True
    return any(line.split()[1] in ('Z', 'X') for line in status.splitlines()
               if line.startswith('State:'))


def test_node_dies_with_its_parent(tmp_path):
    """A driver that dies without stopping its node: the node gets SIGTERM (no orphan)."""
    code = ('import sys, os, time; '
            'from ood_seg_ros.tools.bagtools.node_process import NodeProcess; '
            f'n = NodeProcess([sys.executable, "-c", {STAND_IN!r}, "plain"]); '
            'print(n.pid, flush=True); time.sleep(1.0); os._exit(0)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=60)
    pid = int(out.stdout.split()[0])
    end = time.monotonic() + 20
    while not _dead(pid) and time.monotonic() < end:
        time.sleep(0.1)
    assert _dead(pid), f'node {pid} outlived its parent'
