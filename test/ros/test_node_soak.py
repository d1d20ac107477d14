"""
A tiny soak of the live node (``ood-seg bench --node --soak``): JSON keys and counters.

No memory target is asserted (that figure is a benchmark, in the README); this checks
that the soak runs, the bad frames mixed in are counted by the node under their kinds
and survived, every sample carries VmRSS/VmHWM, fds and threads, and the large-frame
phase reports VmRSS after its first and last frame.
"""

import json
import subprocess
import sys

from ood_seg_ros.tools.bench.soak import proc_stats
import pytest
import ros_helpers as rh

pytestmark = pytest.mark.dds


def test_proc_stats_of_this_process():
    import os
    st = proc_stats(os.getpid())
    assert st['vmrss_mb'] > 1 and st['vmhwm_mb'] >= st['vmrss_mb'] - 0.01
    assert st['threads'] >= 1 and st['fds'] >= 3


def test_soak_of_40_frames_reports_counters(tmp_path):
    pytest.importorskip('rclpy')
    reason = rh.netns_problem()
    if reason or rh.node_executable() is None:
        pytest.skip(reason or 'the ood_node console script is not installed')
    bundle = rh.make_test_bundle(tmp_path / 'b')
    code = ('import json; from ood_seg_ros.tools.bench.soak import soak_node; '
            f'print("SOAK " + json.dumps(soak_node({str(bundle)!r}, 60, 80, 40, '
            'backend="torch", device="cpu", bad_every=5, sample_every=10, '
            'baseline_frame=20, large_frames=3, large_size=(120, 160))))')
    proc = subprocess.run(rh.NETNS + [sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('SOAK ')]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(lines[-1][5:])
    assert res['soak_frames'] == 40 and res['soak_bad_frames'] == 8
    assert res['frames_processed'] + res['frames_dropped'] == 40
    assert res['frames_processed'] >= 38 and res['node_frames_processed'] >= 38
    errors = res['node_errors']
    assert errors['total'] == 8
    assert errors['encoding'] == errors['truncated'] == errors['step'] == errors['empty'] == 2
    assert [s['frame'] for s in res['samples']] == [10, 20, 30, 40]
    for s in res['samples']:
        assert set(s) >= {'vmrss_mb', 'vmhwm_mb', 'fds', 'threads'}
    assert res['baseline_frame'] == 20
    for key in ('rss_growth_mb', 'hwm_growth_mb', 'fd_growth', 'thread_growth'):
        assert isinstance(res[key], (int, float))
    # large-frame phase: 3 frames of 120 x 160 (above the soak size), all processed
    assert (res['large_frames'], res['large_height'], res['large_width']) == (3, 120, 160)
    assert res['large_frames_processed'] == 3 and len(res['large_frame_rss_mb']) == 3
    assert res['large_frame_rss_first_mb'] == res['large_frame_rss_mb'][0] > 0
    assert res['large_frame_rss_last_mb'] == res['large_frame_rss_mb'][-1] > 0
    assert res['large_frame_rss_growth_mb'] == pytest.approx(
        res['large_frame_rss_last_mb'] - res['large_frame_rss_first_mb'], abs=0.02)
    assert res['node_frames_processed'] >= 38 + 3
