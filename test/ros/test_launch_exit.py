"""
``ros2 launch`` returns non-zero when the required ood_node dies.

The launch file's exit handler gets the real exit code of the node started with the
command launch_ros builds from the launch file (``exit_on_error:=true
model:=/nonexistent``: 1, ``backend:=foo``: 2). A non-zero code must raise
(launch logs it and ``LaunchService.run()`` returns 1); a clean exit shuts the launch
down.
"""

import os
import random
import subprocess
from types import SimpleNamespace

import dds_shm
import pytest
from repo_paths import ROOT
import ros_helpers as rh

LAUNCH = ROOT / 'launch' / 'ood.launch.py'


@pytest.fixture(scope='module')
def share_prefix(tmp_path_factory):
    """Make an install prefix where ament_index finds ood_seg_ros and its config."""
    prefix = rh.make_share_prefix(tmp_path_factory.mktemp('prefix'), ROOT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('AMENT_PREFIX_PATH', str(prefix))
        yield prefix


def _exit_code(tmp_path, **arguments):
    """Run the node as launch_ros would for ``arguments``; (action, exit code, log)."""
    exe = rh.node_executable()
    reason = rh.netns_problem()
    if reason or exe is None:
        pytest.skip(reason or 'the ood_node console script is not installed')
    _, (action,) = rh.evaluate_launch(LAUNCH, **arguments)
    cmd = rh.launch_ros_command(action, exe, tmp_path)
    env = rh.launch_ros_env(action, dict(os.environ,
                                         ROS_DOMAIN_ID=str(random.randrange(1, 200))))
    proc = subprocess.Popen(rh.NETNS + cmd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=180)
    return action, proc.returncode, out


def _handle(action, code):
    event = SimpleNamespace(returncode=code, action=action, name='ood_node-1', pid=1)
    return action.kwargs['on_exit'](event, rh.LaunchContext({}))


@pytest.mark.dds
@pytest.mark.parametrize('arguments, code', [
    ({'exit_on_error': 'true', 'model': '/nonexistent'}, 1),
    ({'backend': 'foo'}, 2),
])
def test_a_dying_node_fails_the_launch(share_prefix, tmp_path, arguments, code):
    before = dds_shm.segments()
    action, got, log = _exit_code(tmp_path, **arguments)
    assert got == code, log[-3000:]
    # the node destroys what it built before it exits: no shared memory is left behind
    assert not dds_shm.left_since(before), log[-3000:]
    with pytest.raises(RuntimeError, match=f'ood_node exited with code {code}'):
        _handle(action, got)


def test_a_clean_exit_shuts_the_launch_down(share_prefix):
    _, (action,) = rh.evaluate_launch(LAUNCH)
    (shutdown,) = _handle(action, 0)
    assert isinstance(shutdown, rh.Shutdown)
    _, (action,) = rh.evaluate_launch(LAUNCH, lifecycle='true')
    assert isinstance(_handle(action, 0)[0], rh.Shutdown)
