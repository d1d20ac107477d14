"""
Switch ``heatmap_region`` on a running ood_node: no output gap, no rebuild.

Real rclpy and real DDS in a private network namespace: frames stream in while the
switch is requested through the ``set_parameters`` service; every frame gets its
heatmap, the pipeline is not rebuilt, and each heatmap equals the offline pipeline's in
the mode it was processed in.
"""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import ros_helpers as rh

N_FRAMES, SWITCH_AT = 14, 6

DRIVER = r"""
import json, sys, time
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image
sys.path.insert(0, sys.argv[2])
import ros_helpers as rh
from ood_seg_ros.ros.node import OodNode
n_frames, switch_at, out_dir = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
flip = sys.argv[6] == '1'
rclpy.init()
node = OodNode(parameter_overrides=[
    Parameter('model_path', value=sys.argv[1]), Parameter('backend', value='torch'),
    Parameter('threads', value=1), Parameter('qos_reliability', value='reliable'),
    Parameter('qos_depth', value=50), Parameter('flip_average', value=flip)])
pipeline_before = id(node.pipeline)
client = rclpy.create_node('region_client')
qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
pub = client.create_publisher(Image, 'image', qos)
got, arrival = {}, {}
def on_heat(m):
    got[m.header.frame_id] = np.frombuffer(bytes(m.data), np.float32).reshape(
        m.height, m.width).copy()
    arrival[m.header.frame_id] = time.monotonic()
client.create_subscription(Image, 'ood/heatmap', on_heat, qos)
srv = client.create_client(SetParameters, 'ood_node/set_parameters')
ex = SingleThreadedExecutor()
ex.add_node(node)
ex.add_node(client)
def spin(sec, until=lambda: False):
    end = time.monotonic() + sec
    while time.monotonic() < end and not until():
        ex.spin_once(timeout_sec=0.01)
spin(20, lambda: srv.service_is_ready() and pub.get_subscription_count() > 0)
future = None
for i in range(n_frames):
    frame = rh.sample_frame(i)
    msg = Image(height=frame.shape[0], width=frame.shape[1], encoding='rgb8',
                step=frame.shape[1] * 3, data=frame.tobytes())
    msg.header.frame_id = f'f{i}'
    msg.header.stamp = client.get_clock().now().to_msg()
    pub.publish(msg)
    if i == switch_at:
        req = SetParameters.Request()
        req.parameters = [Parameter('heatmap_region', value='drivable').to_parameter_msg()]
        future = srv.call_async(req)
    spin(0.05)
spin(60, lambda: len(got) == n_frames and (future is None or future.done()))
spin(1.0)       # the effective score / threshold are shown once the set has finished
res = future.result().results[0] if future is not None and future.done() else None
out = {'received': sorted(got, key=lambda k: int(k[1:])), 'set_ok': bool(res and res.successful),
       'flip': node.pipeline.flip,
       'reason': res.reason if res else 'no response',
       'rebuilt': id(node.pipeline) != pipeline_before, 'region': node.pipeline.region,
       'score': node.pipeline.score_name, 'threshold': node.pipeline.threshold,
       'param_region': node.get_parameter('heatmap_region').value,
       'param_score': node.get_parameter('heatmap_score').value,
       'param_threshold': node.get_parameter('segment_threshold').value}
np.savez(out_dir + '/heat.npz', **got)
print('RESULT ' + json.dumps(out), flush=True)
node.destroy_node()
client.destroy_node()
rclpy.try_shutdown()
"""


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    pytest.importorskip('torch')
    return rh.make_test_bundle(tmp_path_factory.mktemp('bundle') / 'b')


def _drive(bundle, tmp_path, n_frames, switch_at, flip):
    """Run the driver in a private network namespace; return its RESULT record."""
    pytest.importorskip('rclpy')
    reason = rh.netns_problem()
    if reason:
        pytest.skip(f'no private network namespace for DDS tests: {reason}')
    proc = subprocess.run(rh.NETNS + [sys.executable, '-c', DRIVER, str(bundle),
                                      str(Path(rh.__file__).parent), str(n_frames),
                                      str(switch_at), str(tmp_path), '1' if flip else '0'],
                          capture_output=True, text=True, timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][7:])


@pytest.mark.dds
def test_region_switch_at_run_time_has_no_output_gap(bundle, tmp_path):
    res = _drive(bundle, tmp_path, N_FRAMES, SWITCH_AT, flip=False)
    assert res['set_ok'], res['reason']
    assert res['received'] == [f'f{i}' for i in range(N_FRAMES)]      # no frame lost
    assert not res['rebuilt'] and res['region'] == 'drivable'
    assert res['param_region'] == 'drivable'
    # param get shows the values of the drivable mode in use
    assert (res['param_score'], res['param_threshold']) == (res['score'], res['threshold'])

    from ood_seg_ros.pipeline import Pipeline
    ref = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    heat = np.load(tmp_path / 'heat.npz')
    modes = []
    for i in range(N_FRAMES):
        frame = rh.sample_frame(i)
        ref.set_region('all')
        plain = ref.process(frame).heatmap
        ref.set_region('drivable')
        drivable = ref.process(frame).heatmap
        assert not np.allclose(plain, drivable, atol=1e-4)     # the modes differ here
        got = heat[f'f{i}']
        match = [m for m, h in (('all', plain), ('drivable', drivable))
                 if np.allclose(got, h, atol=1e-5)]
        assert match, f'frame {i} matches neither mode'
        modes.append(match[0])
    # all-mode frames up to the switch, drivable from then on, the last ones drivable
    k = modes.index('drivable')
    assert 1 <= k and modes == ['all'] * k + ['drivable'] * (N_FRAMES - k)


@pytest.mark.dds
def test_flip_average_node_publishes_the_offline_flip_heatmap(bundle, tmp_path):
    """flip_average: true in the node gives the offline flip pipeline's heatmap per frame."""
    n = 4
    res = _drive(bundle, tmp_path, n, -1, flip=True)
    assert res['flip'] and res['received'] == [f'f{i}' for i in range(n)]
    from ood_seg_ros.pipeline import Pipeline
    plain = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    flip = Pipeline.from_bundle(bundle, backend='torch', device='cpu', flip=True)
    heat = np.load(tmp_path / 'heat.npz')
    for i in range(n):
        frame = rh.sample_frame(i)
        want = flip.process(frame).heatmap
        assert not np.allclose(want, plain.process(frame).heatmap, atol=1e-4)
        np.testing.assert_allclose(heat[f'f{i}'], want, atol=1e-5)
