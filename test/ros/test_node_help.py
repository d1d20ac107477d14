"""``ood_node --help`` (as ``ros2 run ood_seg_ros ood_node --help`` runs it) prints help."""

import subprocess

import pytest
import ros_helpers as rh


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_prints_usage_and_exits_without_starting(flag):
    exe = rh.node_executable()
    if exe is None:
        pytest.skip('the ood_node console script is not installed')
    proc = subprocess.run([exe, flag], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith('usage: ood_node')
    from ood_seg_ros.ros.params import PARAMETERS
    assert all(f'  {name} (' in proc.stdout for name in PARAMETERS)
    assert 'Fast DDS profile' not in proc.stderr and 'model ready' not in proc.stderr
    # after --ros-args, -h is not the node's flag
    from ood_seg_ros.ros.main import wants_help
    assert not wants_help(['ood_node', '--ros-args', '-p', 'x:=1', '-h'])
