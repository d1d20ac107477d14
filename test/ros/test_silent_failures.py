"""
Issue 14 point 6: wrong results never pass quietly (ERROR in log/diagnostics or a refusal).

Pure-Python checks run here directly; the node checks run a real rclpy node in a private
network namespace (``unshare -n``), as the other node tests do.
"""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.ros.params import unknown_parameters
import pytest
from repo_paths import ROOT
import ros_helpers as rh

CONFIG = ROOT / 'config' / 'ood.yaml'


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save the small node-test model (it has no meta.json)."""
    pytest.importorskip('torch')
    return rh.make_test_bundle(tmp_path_factory.mktemp('silent') / 'b')


def test_nan_or_inf_weights_are_refused_at_load(bundle, tmp_path):
    import shutil
    import torch
    from ood_seg_ros.model import load_bundle
    for bad in (float('nan'), float('inf')):
        copy = tmp_path / f'b_{bad}'
        shutil.copytree(bundle, copy)
        state = torch.load(copy / 'weights.pt', weights_only=True)
        key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 8)
        state[key].view(-1)[:5] = bad
        torch.save(state, copy / 'weights.pt')
        with pytest.raises(OodSegError, match=r'non-finite \(NaN/inf\) weights in .*\(5 of'):
            load_bundle(copy)


def test_non_finite_network_output_raises_per_frame(bundle):
    from ood_seg_ros.pipeline import NonFiniteOutput, Pipeline
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    frame = rh.sample_frame(0)
    good = pipe.process(frame)
    assert np.isfinite(good.heatmap).all()
    infer = pipe.backend.infer

    def broken(img):
        out = infer(img)
        out[pipe.score_name][3, 3] = np.nan
        return out
    pipe.backend.infer = broken
    with pytest.raises(NonFiniteOutput, match='1 of .* NaN/inf') as err:
        pipe.process(frame)
    assert err.value.kind == 'nonfinite' and isinstance(err.value, OodSegError)


def test_missing_meta_json_is_logged_as_error(bundle, caplog):
    from ood_seg_ros.pipeline import Pipeline
    assert not (Path(bundle) / 'meta.json').exists()
    with caplog.at_level('ERROR', logger='ood_seg_ros.pipeline'):
        pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    assert pipe.meta is None
    assert 'no meta.json: meta classifier OFF' in caplog.text


def test_unknown_parameter_names():
    known = ['segment_threshold', 'backend']
    assert unknown_parameters(['segment_threshold', 'use_sim_time',
                               'qos_overrides./cam.subscription.depth'], known) == []
    assert unknown_parameters(['segment_threshhold', 'backend', 'zz'], known) == [
        'segment_threshhold', 'zz']


def test_command_line_parameter_types():
    from ood_seg_ros.ros.params import PARAMETERS
    from ood_seg_ros.ros.params import command_line_parameter_problems as check
    argv = ['ood_node', '-p', 'x:=1', '--ros-args', '-p', 'segment_threshold:=0.3', '-p',
            'warmup_runs:=2', '--param', 'fp16:=true', '-p', 'backend:=torch', '-r', 'a:=b',
            '-p', 'segment_threshold:=1', '--', '-p', 'ignored:=1']
    assert check(argv, PARAMETERS) == []
    bad = ['--ros-args', '-p', 'segment_threshold:=abc', '-p', 'warmup_runs:=1.5', '-p',
           'fp16:=3', '-p', 'threads:=true', '-p', 'segment_threshhold:=0.3', '-p', 'oops']
    assert check(bad, PARAMETERS) == [
        "parameter segment_threshold: 'abc' is not a float",
        "parameter warmup_runs: '1.5' is not an int", "parameter fp16: '3' is not a bool",
        "parameter threads: 'true' is not an int",
        "unknown parameter 'segment_threshhold' (misspelt?)",
        "-p 'oops' is not name:=value"]


def _node_env():
    pytest.importorskip('rclpy')
    reason = rh.netns_problem()
    exe = rh.node_executable()
    if reason or exe is None:
        pytest.skip(reason or 'the ood_node console script is not installed')
    return exe


@pytest.mark.parametrize('param, message', [
    ('segment_threshhold:=0.3', "unknown parameter 'segment_threshhold' (misspelt?)"),
    ('diagnostics_period:=1e-6', 'parameter diagnostics_period: must be in [0.1, 3600]'),
    ('segment_threshold:=abc', "parameter segment_threshold: 'abc' is not a float"),
    ('warmup_runs:=abc', "parameter warmup_runs: 'abc' is not an int"),
])
@pytest.mark.dds
def test_bad_start_parameters_are_refused(bundle, param, message):
    exe = _node_env()
    proc = subprocess.run(rh.NETNS + [exe, '--ros-args', '--params-file', str(CONFIG),
                                      '-p', f'model_path:={bundle}', '-p', 'backend:=torch',
                                      '-p', param],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert 'model ready' not in proc.stderr


@pytest.mark.dds
def test_unknown_name_in_params_file_is_refused(bundle, tmp_path):
    exe = _node_env()
    params = tmp_path / 'p.yaml'
    params.write_text('/**:\n  ros__parameters:\n    backend: torch\n    heatmap_scor: msp\n')
    proc = subprocess.run(rh.NETNS + [exe, '--ros-args', '--params-file', str(params),
                                      '-p', f'model_path:={bundle}'],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2 and "unknown parameters ['heatmap_scor']" in proc.stderr


NODE_SCRIPT = r"""
import json, sys, time
import numpy as np
import rclpy
from rclpy.parameter import Parameter
from std_msgs.msg import Header
from ood_seg_ros.ros.node import OodNode
rclpy.init()
node = OodNode(parameter_overrides=[Parameter('model_path', value=sys.argv[1]),
                                    Parameter('backend', value='torch'),
                                    Parameter('segment_threshold', value=0.5)])
out = {'threshold0': node.pipeline.threshold, 'score0': node.pipeline.score_name}
res = node.set_parameters_atomically([Parameter('segment_threshold', value=0.3),
                                      Parameter('heatmap_score', value='no_such_score')])
out.update(ok=res.successful, reason=res.reason, threshold1=node.pipeline.threshold,
           score1=node.pipeline.score_name, cfg_threshold=node.cfg['segment_threshold'],
           param_threshold=node.get_parameter('segment_threshold').value)
def fail(recipe):
    raise RuntimeError('rebuild failed (test)')
node._rebuilder._build = fail
res = node.set_parameters([Parameter('heatmap_score', value='msp')])[0]
out.update(rebuild_ok=res.successful, pending_param=node.get_parameter('heatmap_score').value)
end = time.monotonic() + 30
while node.rebuild_error == '' and time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
st = node.diagnostics_status()
out.update(rebuild_level=int.from_bytes(st.level, 'little') if isinstance(st.level, bytes)
           else int(st.level), rebuild_message=st.message, score2=node.pipeline.score_name,
           param_after_failure=node.get_parameter('heatmap_score').value)
out['diag_meta'] = {kv.key: kv.value for kv in node.diagnostics_status().values}[
    'meta_classifier']
infer = node.pipeline.backend.infer
def nan_infer(img):
    o = infer(img)
    o[node.pipeline.score_name][:] = np.nan
    return o
node.pipeline.backend.infer = nan_infer
node._process(Header(), np.zeros((60, 80, 3), np.uint8), time.perf_counter())
st = node.diagnostics_status()
out.update(level=int.from_bytes(st.level, 'little') if isinstance(st.level, bytes)
           else int(st.level), message=st.message,
           values={kv.key: kv.value for kv in st.values})
print('RESULT ' + json.dumps(out), flush=True)
node.destroy_node()
rclpy.try_shutdown()
"""


@pytest.fixture(scope='module')
def node_run(bundle):
    _node_env()
    proc = subprocess.run(rh.NETNS + [sys.executable, '-c', NODE_SCRIPT, str(bundle)],
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][7:]), proc.stderr


@pytest.mark.dds
def test_atomic_parameter_set_applies_all_or_nothing(node_run):
    res, _ = node_run
    assert not res['ok'] and "unknown score 'no_such_score'" in res['reason']
    assert res['threshold1'] == res['threshold0'] == 0.5      # 0.3 was not applied
    assert res['score1'] == res['score0']
    assert res['cfg_threshold'] == 0.5 and res['param_threshold'] == 0.5


@pytest.mark.dds
def test_failed_background_rebuild_is_reported_and_the_old_score_kept(node_run):
    res, log = node_run
    assert res['rebuild_ok'] and res['pending_param'] == 'msp'   # accepted at once
    assert res['score2'] == res['score0'] == res['param_after_failure']
    assert res['rebuild_level'] == 1 and 'rebuild failed (test)' in res['rebuild_message']
    assert 'heatmap_score msp: rebuild failed: RuntimeError: rebuild failed (test)' in log


@pytest.mark.dds
def test_nan_output_is_an_error_in_diagnostics_and_log(node_run):
    res, log = node_run
    assert res['level'] == 2, res['message']
    assert 'NaN/inf' in res['message'] and res['values']['errors_nonfinite'] == '1'
    assert 'bad input frame (nonfinite)' in log


@pytest.mark.dds
def test_missing_meta_classifier_in_log_and_diagnostics(node_run):
    res, log = node_run
    assert res['diag_meta'].startswith('OFF (no meta.json)')
    assert '[ERROR]' in log and 'meta classifier OFF' in log
