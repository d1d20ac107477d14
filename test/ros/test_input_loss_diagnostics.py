"""The node's diagnostics carry the lost-input estimate: keys, WARN level, one hint line."""

from ood_seg_ros.ros.input_loss import InputLossMonitor
import pytest

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

    _report_input_loss = node._OodCore._report_input_loss

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
