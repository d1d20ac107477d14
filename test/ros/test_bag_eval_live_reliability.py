"""
Live bag-eval reliability: an interrupt leaves a readable output bag; bad input is counted.

Real rclpy and DDS: ``bag-eval --mode live --isolation namespace`` runs its player and the
node inside a private network namespace (``unshare -n``, needs root), as the live test of
test_bags.py does.
"""

import json
import os
import signal
import subprocess
import sys
import time

from ood_seg_ros.cli import main as cli_main
from ood_seg_ros.tools.data import bags
import pytest
from repo_paths import SAMPLE_BAG
import ros_helpers as rh
from test_bag_eval_bad_input import _bag

pytestmark = pytest.mark.dds


def _live_skip():
    pytest.importorskip('rclpy')
    from ood_seg_ros.tools.bagtools.node_process import namespace_available
    if not namespace_available():
        pytest.skip('cannot create a private network namespace (unshare -n needs root)')


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save the small random-init test model (64 x 64 input)."""
    pytest.importorskip('torch')
    return rh.make_test_bundle(tmp_path_factory.mktemp('live_rel') / 'b')


@pytest.mark.parametrize('how', ['sigint_group', 'sigterm'])
def test_interrupted_live_bag_eval_leaves_a_readable_bag(tmp_path, bundle, how):
    """Ctrl-C (SIGINT to the process group) or SIGTERM mid-replay: the bag is finalised."""
    _live_skip()
    from rosbags.rosbag2 import Reader
    out = tmp_path / 'out'
    cmd = [sys.executable, '-c', 'import sys; from ood_seg_ros.cli import main; '
           'sys.exit(main())', 'bag-eval', str(SAMPLE_BAG), '--bundle', str(bundle),
           '--mode', 'live', '--out', str(out), '--backend', 'torch', '--device', 'cpu',
           '--isolation', 'namespace', '--pacing', 'timed', '--rate-scale', '0.1',
           '--overlays', '0']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        log = out / 'node.log'
        end = time.monotonic() + 180
        while time.monotonic() < end and proc.poll() is None:
            if log.is_file() and 'subscribed to' in log.read_text(errors='replace'):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        time.sleep(5.0)     # a few frames at 1 frame/s (bag rate x 0.1) go through
        if how == 'sigint_group':
            os.killpg(proc.pid, signal.SIGINT)     # as a terminal's Ctrl-C
        else:
            proc.send_signal(signal.SIGTERM)       # the parent only: it must forward it
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == (130 if how == 'sigint_group' else 143), err[-2000:]
    assert 'Traceback' not in err, err[-2000:]
    assert (out / 'output.bag' / 'metadata.yaml').is_file()
    with Reader(out / 'output.bag') as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert reader.message_count == sum(counts.values())
    assert counts.get('/ood/heatmap', 0) >= 1, counts
    assert len(list(bags.read_image_bag(out / 'output.bag', ['/ood/heatmap']))) \
        == counts['/ood/heatmap']


def test_live_bag_eval_skips_and_counts_corrupt_message(tmp_path, bundle):
    """A corrupt mid-bag message is not published, counted like offline; the rest run."""
    _live_skip()
    bag = _bag(tmp_path / 'in.bag', n=5, corrupt_at=(2,))
    code = cli_main(['bag-eval', str(bag), '--bundle', str(bundle), '--out',
                     str(tmp_path / 'out'), '--backend', 'torch', '--device', 'cpu',
                     '--overlays', '1', '--mode', 'live', '--isolation', 'namespace',
                     '--frame-timeout', '20'])
    assert code == 0
    doc = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert doc['bad_messages'] == 1
    assert (doc['frames_in'], doc['frames_out'], doc['frames_dropped']) == (5, 4, 0)
    assert doc['bad_message_list'][0]['stamp_ns'] == 1_700_000_000_200_000_000
    assert doc['node_exit_code'] == 0
    heat = list(bags.read_image_bag(tmp_path / 'out' / 'output.bag', ['/ood/heatmap']))
    assert len({m.header.stamp_ns for m in heat}) == 4
