"""InputLossMonitor: lost camera frames estimated from header stamps and message sizes."""

import os

import numpy as np
from ood_seg_ros.ros.input_loss import FASTDDS_DEFAULT_SEGMENT, InputLossMonitor, \
    shm_shortfall, transport_limit_bytes, WARN_FRACTION
import pytest

PERIOD = 33_333_333     # 30 Hz, ns
T0 = 1_700_000_000 * 1_000_000_000


def _feed(mon, stamps, nbytes=1000):
    return [mon.update(int(s), nbytes) for s in stamps]


def _stamps(indices, period=PERIOD, t0=T0):
    return [t0 + i * period for i in indices]


def test_regular_stamps_lose_nothing():
    mon = InputLossMonitor()
    assert sum(_feed(mon, _stamps(range(200)))) == 0
    assert mon.period_ns == pytest.approx(PERIOD)
    values, problem = mon.window()
    assert values['input_lost_estimate'] == '0' and problem is None


@pytest.mark.parametrize('gap_at', [2, 50])     # before and after the period is known
def test_gap_of_four_periods_is_three_lost(gap_at):
    idx = list(range(gap_at)) + list(range(gap_at + 3, 100))
    mon = InputLossMonitor()
    _feed(mon, _stamps(idx))
    assert mon.lost == 3


def test_count_matches_frames_dropped_at_random():
    rng = np.random.default_rng(0)
    kept = [i for i in range(2000) if rng.random() > 0.3 or i == 0]
    mon = InputLossMonitor()
    _feed(mon, _stamps(kept))
    assert mon.lost == kept[-1] + 1 - len(kept)


def test_heavy_loss_keeps_the_true_period():
    """Over half of the frames lost (17 of 40 received): the period is not stretched."""
    rng = np.random.default_rng(1)
    kept = sorted(rng.choice(np.arange(1, 400), 170, replace=False).tolist() + [0])
    mon = InputLossMonitor()
    _feed(mon, _stamps(kept))
    assert mon.period_ns == pytest.approx(PERIOD)
    assert mon.lost == kept[-1] + 1 - len(kept)


def test_jittery_stamps_are_not_loss():
    """Every stamp up to 20 % of the period early or late: differences 0.6-1.4 periods."""
    rng = np.random.default_rng(2)
    jitter = rng.uniform(-0.2, 0.2, 3000) * PERIOD
    stamps = np.array(_stamps(range(3000))) + jitter
    mon = InputLossMonitor()
    assert sum(_feed(mon, stamps)) == 0
    idx = np.r_[0:1000, 1005:3000]          # the same jitter, and 5 frames lost
    mon = InputLossMonitor()
    _feed(mon, stamps[idx])
    assert mon.lost == 5


def test_stamps_going_backwards_restart_without_loss():
    mon = InputLossMonitor()
    _feed(mon, _stamps(range(100)))
    _feed(mon, _stamps(range(100)))         # the bag loops
    assert mon.lost == 0 and mon.received == 200
    _feed(mon, _stamps(range(100, 110)) + _stamps(range(114, 120)))
    assert mon.lost == 4


def test_zero_stamps_and_repeats_are_ignored():
    mon = InputLossMonitor()
    stamps = []
    for s in _stamps(range(100)):
        stamps += [0, s, s]
    assert sum(_feed(mon, stamps)) == 0 and mon.received == 300
    assert mon.period_ns == pytest.approx(PERIOD)


def test_long_pause_is_not_loss():
    mon = InputLossMonitor(max_gap_s=5.0)
    _feed(mon, _stamps(range(50)) + _stamps(range(50, 60), t0=T0 + 10 * 10 ** 9))
    assert mon.lost == 0


def test_window_fraction_and_warn_threshold():
    mon = InputLossMonitor()
    _feed(mon, _stamps(range(100)))
    assert mon.window()[1] is None
    # 100 frames sent, 10 lost: 10 % > 5 %
    _feed(mon, _stamps([i for i in range(100, 200) if i % 10 != 5]))
    values, problem = mon.window()
    assert values['input_loss_fraction_window'] == '0.100'
    assert values['input_lost_estimate'] == '10'
    assert 0.1 > WARN_FRACTION and '10 %' in problem
    # the next window is clean again; the total stays
    _feed(mon, _stamps(range(200, 300)))
    values, problem = mon.window()
    assert problem is None and values['input_lost_estimate'] == '10'
    assert float(values['input_loss_fraction']) == pytest.approx(10 / 300, abs=1e-3)


def test_frames_over_the_transport_limit_warn():
    mon = InputLossMonitor(limit_bytes=FASTDDS_DEFAULT_SEGMENT)
    _feed(mon, _stamps(range(10)), nbytes=640 * 480 * 3)
    values, problem = mon.window()
    assert values['input_over_transport_limit'] == '10'
    assert 'transport limit' in problem
    _feed(mon, _stamps(range(10, 20)), nbytes=FASTDDS_DEFAULT_SEGMENT)
    assert mon.window()[1] is None


def test_transport_limit_from_the_environment(tmp_path):
    assert transport_limit_bytes({}) == 512 * 1024
    assert transport_limit_bytes({'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}) is None
    from ood_seg_ros.ros.main import dds_profile_path, use_dds_profile
    env = {}
    use_dds_profile(env)
    assert transport_limit_bytes(env) == 32 * 1024 * 1024     # config/fastdds.xml
    assert dds_profile_path() is not None
    own = tmp_path / 'udp_only.xml'
    own.write_text('<profiles><participant profile_name="p"/></profiles>')
    assert transport_limit_bytes({'FASTRTPS_DEFAULT_PROFILES_FILE': str(own)}) is None


def test_shm_shortfall_against_the_real_free_space(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    line = shm_shortfall(free + 2 ** 30, str(tmp_path))     # a segment larger than the room
    assert line is not None and '\n' not in line
    assert f'{tmp_path} has {free / 2 ** 20:.0f} MiB free' in line and 'shm clean' in line
    assert shm_shortfall(1024, str(tmp_path)) is None
    assert shm_shortfall(None, str(tmp_path)) is None         # segment size unknown
    assert shm_shortfall(1024, str(tmp_path / 'absent')) is None
