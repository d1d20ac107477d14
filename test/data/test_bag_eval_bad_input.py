"""
bag-eval survives bad input: bad messages are skipped, counted and reported in the JSON.

Bags that cannot be read at all (empty folder, no image topic, wrong message type,
truncated storage whose index is lost) give one clear line and exit status 2.
"""

import json

import numpy as np
from ood_seg_ros.cli import main as cli_main
from ood_seg_ros.tools.data import bags
import pytest
import ros_helpers as rh

TOPIC = '/camera/image_raw'


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save the small random-init test model (64 x 64 input)."""
    pytest.importorskip('torch')
    return rh.make_test_bundle(tmp_path_factory.mktemp('bagbad') / 'b')


def _bag(path, n=5, corrupt_at=(), string_topic=False):
    rng = np.random.default_rng(0)
    with bags.BagWriter(path) as bag:
        bag.add_topic(TOPIC, bags.IMAGE_TYPE)
        if string_topic:
            bag.add_topic('/other', 'std_msgs/msg/String')
        for i in range(n):
            stamp = 1_700_000_000_000_000_000 + i * 100_000_000
            if i in corrupt_at:   # CDR cut short mid-message, then garbage
                raw = bags.image_cdr(np.zeros((48, 64, 3), np.uint8), 'rgb8', stamp, 'c')
                bag.write(TOPIC, stamp, raw[:40] + b'\xff' * 7)
            else:
                img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                bag.write(TOPIC, stamp, bags.image_cdr(img, 'rgb8', stamp, 'c'))
            if string_topic:
                bag.write('/other', stamp, b'\x00\x01\x00\x00\x02\x00\x00\x00a\x00')
    return path


def _eval(bag, bundle, out, *extra):
    code = cli_main(['bag-eval', str(bag), '--bundle', str(bundle), '--out', str(out),
                     '--backend', 'torch', '--device', 'cpu', '--overlays', '1', *extra])
    return code


def test_corrupt_message_mid_bag_is_skipped_and_counted(tmp_path, bundle, capsys):
    bag = _bag(tmp_path / 'in.bag', n=5, corrupt_at=(2,))
    assert _eval(bag, bundle, tmp_path / 'out') == 0
    doc = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert doc['bad_messages'] == 1 and doc['frames_out'] == 4 and doc['frames_in'] == 5
    assert doc['bad_message_list'][0]['stamp_ns'] == 1_700_000_000_200_000_000
    out_msgs = list(bags.read_image_bag(tmp_path / 'out' / 'output.bag'))
    assert len(out_msgs) == 3 * 4      # heatmap, mask, semantic of the 4 good frames


def test_clean_bag_reports_zero_bad_messages(tmp_path, bundle):
    assert _eval(_bag(tmp_path / 'in.bag', n=2, string_topic=True), bundle,
                 tmp_path / 'out') == 0
    doc = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert doc['bad_messages'] == 0 and doc['frames_out'] == 2


def test_unreadable_bags_give_one_line(tmp_path, bundle, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert _eval(empty, bundle, tmp_path / 'o1') == 2
    assert 'is not a readable rosbag2 bag' in capsys.readouterr().err
    only_string = tmp_path / 's.bag'
    with bags.BagWriter(only_string) as bag:
        bag.add_topic('/other', 'std_msgs/msg/String')
        bag.write('/other', 1, b'\x00\x01\x00\x00\x02\x00\x00\x00a\x00')
    assert _eval(only_string, bundle, tmp_path / 'o2') == 2
    assert 'no Image topics' in capsys.readouterr().err
    wrong_type = _bag(tmp_path / 'w.bag', n=1, string_topic=True)
    assert _eval(wrong_type, bundle, tmp_path / 'o3', '--image-topic', '/other') == 2
    assert 'has no sensor_msgs/Image topic /other' in capsys.readouterr().err
    cut = _bag(tmp_path / 'cut.bag', n=3)
    mcap = next(cut.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    code = _eval(cut, bundle, tmp_path / 'o4')
    err = capsys.readouterr().err
    if code == 0:           # the reader got past the cut: the rest must be counted
        doc = json.loads((tmp_path / 'o4' / 'metrics.json').read_text())
        assert doc['bad_messages'] >= 1
    else:
        assert code == 2 and err.startswith('error: ') and 'Traceback' not in err
