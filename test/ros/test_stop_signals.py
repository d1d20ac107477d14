"""
The node's signal handling defers a signal while the executor runs (:mod:`.stop_signals`).

A signal raised at an arbitrary point of rclpy's executor can leave a handle in use for
ever; the node and its DDS participant then outlive the node's teardown and the process
leaves its Fast DDS shared-memory segment in ``/dev/shm`` (the rare failure of
``test_node_signals`` on CI). The probe script (``test/stop_signal_probe.py``) injects
the signal at one such point: the executor releasing a QoS event handler.
"""

import json
import os
import signal
import subprocess
import sys

import dds_shm
from ood_seg_ros.ros.stop_signals import held_signals, StopSignals
import pytest
from repo_paths import ROOT

PROBE = ROOT / 'test' / 'stop_signal_probe.py'


def test_deferred_records_and_raises_when_the_block_ends():
    stop = StopSignals()
    with pytest.raises(KeyboardInterrupt, match='SIGTERM'):
        with stop.deferred():
            stop.handle(signal.SIGTERM, None)       # recorded, not raised
            reached = True
    assert reached and stop.pending == 'SIGTERM'


def test_signal_raises_at_once_outside_deferred_and_inside_interruptible():
    stop = StopSignals()
    with pytest.raises(KeyboardInterrupt, match='SIGINT'):
        stop.handle(signal.SIGINT, None)
    with stop.deferred():
        with pytest.raises(KeyboardInterrupt, match='SIGTERM'):
            with stop.interruptible():
                stop.handle(signal.SIGTERM, None)
        stop.pending = None
        stop.handle(signal.SIGINT, None)            # deferred again after the block
        assert stop.pending == 'SIGINT'
        with pytest.raises(KeyboardInterrupt, match='SIGINT'):
            with stop.interruptible():              # long work does not start
                raise AssertionError('entered despite a recorded signal')
        stop.pending = None


def test_nested_deferred_blocks_restore_the_outer_state():
    stop = StopSignals()
    with stop.deferred():
        with stop.deferred():
            pass
        stop.handle(signal.SIGTERM, None)           # still deferred
        stop.pending = None
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGTERM, None)


class _Raised(Exception):
    pass


def test_held_signals_delivers_after_the_block_to_the_handler_in_place():
    def raising(signum, frame):
        raise _Raised(signum)

    previous = signal.signal(signal.SIGUSR1, raising)
    try:
        with pytest.raises(_Raised):
            with held_signals((signal.SIGUSR1,)):
                os.kill(os.getpid(), signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGUSR1)    # one delivery for the block
                for _ in range(1000):                   # let Python run the handler
                    pass
                reached = True
        assert reached and signal.getsignal(signal.SIGUSR1) is raising
        with held_signals((signal.SIGUSR1,)):           # nothing held: nothing delivered
            pass
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _probe(mode):
    before = dds_shm.segments()
    out = subprocess.run([sys.executable, str(PROBE), mode], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    dds_shm.remove(dds_shm.left_since(before))     # the raising case leaves its segment
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_signal_in_the_executor_leaves_no_segment():
    res = _probe('deferred')
    assert res['injected'] and res['ended'].startswith('KeyboardInterrupt(SIGTERM) after 1'), res
    assert res['segments_kept'] == [], res


def test_the_probe_hits_the_point_where_raising_leaks():
    # the same injection with a raising handler: the hazard the deferral avoids (if a
    # future rclpy survives it, this fails and the deferral can be reconsidered)
    res = _probe('raising')
    assert res['injected'] and res['ended'].startswith('KeyboardInterrupt'), res
    assert res['segments_kept'], res


def test_executor_signal_scan_runs_and_the_deferral_keeps_nothing():
    # tools/executor_signal_scan.py measures the README's figures; a short run of it
    out = subprocess.run([sys.executable, str(ROOT / 'tools' / 'executor_signal_scan.py'),
                          'random', '--handler', 'deferred', '--trials', '3'],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {'handler': 'deferred', 'trials': 3, 'trials_keeping_the_participant': 0}
