"""
``ood-seg bench --startup``: cold and warm start of a real ood_node on a cache-free copy.

The cold start must export the ONNX graph into the copy's cache and the warm start must
use it (nothing exported, no slower to its first heatmap than it was ready); the bundle
given is never written to.
"""

import json
import subprocess
import sys

from model_helpers import save_tiny_bundle
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.bench.startup import cached_graphs, copy_without_cache
import pytest
import ros_helpers as rh


def test_copy_without_cache_leaves_out_only_the_top_level_cache(tmp_path):
    src = tmp_path / 'b'
    (src / 'derived' / 'onnx').mkdir(parents=True)
    (src / 'derived' / 'onnx' / 'm.onnx').write_bytes(b'x')
    (src / 'bundle.json').write_text('{}')
    (src / 'sub' / 'derived').mkdir(parents=True)       # a nested folder of that name stays
    (src / 'sub' / 'derived' / 'k').write_text('k')
    assert cached_graphs(src) == {'m.onnx'}
    dest = copy_without_cache(src, tmp_path / 'c')
    assert (dest / 'bundle.json').is_file() and (dest / 'sub' / 'derived' / 'k').is_file()
    assert not (dest / 'derived').exists() and cached_graphs(dest) == set()
    with pytest.raises(OodSegError, match='not a bundle folder'):
        copy_without_cache(tmp_path / 'nothing', tmp_path / 'd')


@pytest.mark.dds
def test_startup_cold_exports_and_warm_reuses_the_cache(tmp_path):
    pytest.importorskip('rclpy')
    pytest.importorskip('onnxruntime')
    reason = rh.netns_problem()
    if reason:
        pytest.skip(f'no private network namespace for DDS tests: {reason}')
    if rh.node_executable() is None:
        pytest.skip('the ood_node console script is not installed (pip install -e .)')
    bundle = save_tiny_bundle(tmp_path / 'tiny', (64, 96))
    code = ('import json; from ood_seg_ros.tools.bench.startup import bench_startup; '
            f'print(json.dumps(bench_startup({str(bundle)!r}, 64, 96, "onnxruntime", "cpu")))')
    proc = subprocess.run(rh.NETNS + [sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res['cold_exported'] is True and res['warm_exported'] is False, res
    for phase in ('cold', 'warm'):
        assert 0 < res[f'{phase}_ready_s'] <= res[f'{phase}_first_heatmap_s'], res
    assert cached_graphs(bundle) == set()           # the given bundle was not touched
