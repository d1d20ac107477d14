"""The node's diagnostics carry the lost-input estimate: keys, WARN level, one hint line."""

import json
import subprocess
import sys

from ood_seg_ros.ros.input_loss import InputLossMonitor
import pytest
import ros_helpers as rh

diag = pytest.importorskip('diagnostic_msgs.msg')
node = pytest.importorskip('ood_seg_ros.ros.node')

PERIOD = 33_333_333
T0 = 1_700_000_000 * 1_000_000_000


class _Logger:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)


class _Core:
    """The node state _report_input_loss reads: the monitor, the hint flag, the logger."""

    _report_input_loss = node.OodNodeBody._report_input_loss

    def __init__(self):
        self.input_loss, self._loss_hinted, self.logger = InputLossMonitor(), False, _Logger()

    def get_logger(self):
        return self.logger


def _status(level):
    return diag.DiagnosticStatus(level=level, name='ood_node: OoD segmentation',
                                 message='running')


def _report(core, level):
    status = _status(level)
    core._report_input_loss(status)
    return status, {kv.key: kv.value for kv in status.values}


def test_loss_goes_warn_with_one_hint_line():
    core = _Core()
    for i in list(range(20)) + list(range(24, 40)):      # a gap of 5 periods: 4 lost
        core.input_loss.update(T0 + i * PERIOD, 1000)
    status, values = _report(core, diag.DiagnosticStatus.OK)
    assert values['input_lost_estimate'] == '4'
    assert status.level == diag.DiagnosticStatus.WARN
    assert 'input frames lost' in status.message
    (line,) = core.logger.lines
    for part in ('config/fastdds.xml', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                 '"Large messages (DDS)"'):
        assert part in line
    # a later lossy window: WARN again, no second log line; an ERROR stays ERROR
    core.input_loss.update(T0 + 45 * PERIOD, 1000)
    status, _ = _report(core, diag.DiagnosticStatus.ERROR)
    assert status.level == diag.DiagnosticStatus.ERROR
    assert status.message.startswith('running; ')
    assert len(core.logger.lines) == 1


def test_no_loss_stays_ok_with_keys():
    core = _Core()
    for i in range(90):
        core.input_loss.update(T0 + i * PERIOD, 1000)
    status, values = _report(core, diag.DiagnosticStatus.OK)
    assert status.level == diag.DiagnosticStatus.OK and status.message == 'running'
    assert values['input_lost_estimate'] == '0' and values['input_loss_fraction'] == '0.000'
    assert not core.logger.lines


NODE_SCRIPT = r"""
import json, sys
import numpy as np
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from ood_seg_ros.ros.node import OodNode
rclpy.init()
node = OodNode(parameter_overrides=[Parameter('model_path', value=sys.argv[1]),
                                    Parameter('backend', value='torch')])
t0, period = 1_700_000_000 * 10 ** 9, 10 ** 8      # a 10 Hz camera
for i in list(range(10)) + list(range(14, 17)):    # frames 10..13 lost
    msg = Image(height=60, width=80, encoding='rgb8', step=240,
                data=np.zeros(60 * 240, np.uint8).tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t0 + i * period, 10 ** 9)
    node._on_frame(msg, None, node.inputs.raw)
st = node.diagnostics_status()
print('RESULT ' + json.dumps({
    'level': int.from_bytes(st.level, 'little') if isinstance(st.level, bytes)
    else int(st.level), 'message': st.message,
    'values': {kv.key: kv.value for kv in st.values}}), flush=True)
node.destroy_node()
rclpy.try_shutdown()
"""


@pytest.mark.dds
def test_real_node_reports_a_stamp_gap(tmp_path):
    """13 frames of a 10 Hz camera with 4 missing: estimate 4, WARN, the hint logged."""
    pytest.importorskip('torch')
    reason = rh.netns_problem()
    if reason:
        pytest.skip(f'no private network namespace for DDS tests: {reason}')
    bundle = rh.make_test_bundle(tmp_path / 'b')
    proc = subprocess.run(rh.NETNS + [sys.executable, '-c', NODE_SCRIPT, str(bundle)],
                          capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(lines[-1][7:])
    assert res['values']['frames_processed'] == '13', res
    assert res['values']['input_lost_estimate'] == '4', res['values']
    assert res['level'] == 1 and 'input frames lost' in res['message'], res['message']
    assert proc.stderr.count('README section "Large messages (DDS)"') == 1
