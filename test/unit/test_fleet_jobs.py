"""fleet-eval's inputs: bag lists, content hashes, job keys; Ray stays optional."""

import os
import subprocess
import sys

from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.fleet import jobs as J
import pytest
from repo_paths import ROOT


def _bag(path, payload=b'x'):
    path.mkdir(parents=True)
    (path / 'metadata.yaml').write_text('rosbag2_bagfile_information: {}\n')
    (path / 'data.mcap').write_bytes(payload)
    return path


def test_bags_from_folders_globs_and_list_files(tmp_path):
    a, b, c = (_bag(tmp_path / 'day1' / n) for n in ('a', 'b', 'c'))
    d = _bag(tmp_path / 'day2' / 'd')
    listing = tmp_path / 'list.txt'
    listing.write_text('# fleet\nday2/d   # relative to the list\nday1/a\n\nmissing\n')
    got = J.expand_bags([str(tmp_path / 'day1'), str(tmp_path / 'day*' / 'd')],
                        [str(listing)])
    assert got == [a, b, c, d, tmp_path / 'missing']     # deduplicated, missing kept
    assert J.expand_bags([str(a)]) == [a]
    with pytest.raises(OodSegError, match='no bag matches'):
        J.expand_bags([str(tmp_path / 'nope*')])
    with pytest.raises(OodSegError, match='cannot read the bag list'):
        J.expand_bags([], [str(tmp_path / 'none.txt')])
    with pytest.raises(OodSegError, match='no bags given'):
        J.expand_bags([])


def test_content_hash_follows_content_not_place(tmp_path):
    a = _bag(tmp_path / 'a', b'frames')
    b = _bag(tmp_path / 'b', b'frames')
    c = _bag(tmp_path / 'c', b'frameS')
    assert J.content_hash(a) == J.content_hash(b) != J.content_hash(c)
    bundle = tmp_path / 'bundle'
    bundle.mkdir()
    (bundle / 'bundle.json').write_text('{}')
    (bundle / 'weights.pt').write_bytes(b'w')
    before = J.content_hash(bundle, J.BUNDLE_FILES)
    (bundle / 'graph.onnx').write_bytes(b'derived')       # a derived file: not content
    assert J.content_hash(bundle, J.BUNDLE_FILES) == before
    (bundle / 'weights.pt').write_bytes(b'w2')
    assert J.content_hash(bundle, J.BUNDLE_FILES) != before


def test_job_keys_and_missing_bags(tmp_path):
    bundle = tmp_path / 'bundle'
    bundle.mkdir()
    (bundle / 'bundle.json').write_text('{}')
    a = _bag(tmp_path / 'a')
    jobs, bad = J.make_jobs([a, tmp_path / 'gone'], {'A': str(bundle)}, J.Settings())
    assert len(jobs) == 1 and bad == [{'bag': str(tmp_path / 'gone'),
                                       'reason': f'bag {tmp_path / "gone"} does not exist'}]
    other, _ = J.make_jobs([a], {'A': str(bundle)}, J.Settings(threshold=0.7))
    again, _ = J.make_jobs([a], {'A': str(bundle)}, J.Settings())
    assert again[0].key == jobs[0].key != other[0].key


def test_the_node_and_the_cli_do_not_import_ray():
    code = ('import sys; import ood_seg_ros.cli as c; c.build_parser(); '
            'import ood_seg_ros.ros.node; import ood_seg_ros.tools.fleet.report; '
            'sys.exit(1 if "ray" in sys.modules else 0)')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
