"""
``ood-seg recipe`` end to end on a tiny Cityscapes tree (issue 19), then the node.

The recipe runs every stage through the CLI at 64x128 with two training steps (random
backbone); a second run skips every stage; a changed option reruns only the stages after
it. The bundle then runs in a real rclpy ``OodNode`` (private network namespace, ONNX
Runtime on the exported graph) that publishes the dataset's class names on
``ood/label_info`` and Cityscapes train ids on ``ood/semantic``. The protocol guard
refuses calibration on an OoD set pasted into the split the bundle trained on.
"""

import json
from pathlib import Path
import subprocess
import sys

import dataset_helpers as dh
import numpy as np
from ood_seg_ros import cli
import pytest
import ros_helpers as rh

CITYSCAPES_NAMES = [
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
    'motorcycle', 'bicycle']
TINY = ['--input-size', '64x128', '--device', 'cpu', '--no-imagenet', '--base-epochs', '1',
        '--probe-epochs', '1', '--batch-size', '2', '--max-steps', '2']


def _fake_coco(root: Path, n: int = 4) -> Path:
    """coco128-seg layout: n 64x64 images, each one bird polygon (a COCO 'bird', not a class)."""
    for i in range(n):
        img = np.full((64, 64, 3), 40 * i + 30, np.uint8)
        dh.write_png(root / 'images' / f'{i:04d}.png', img)
        (root / 'labels').mkdir(parents=True, exist_ok=True)
        (root / 'labels' / f'{i:04d}.txt').write_text('14 0.1 0.1 0.9 0.1 0.9 0.9 0.1 0.9\n')
    return root


@pytest.fixture(scope='module')
def recipe(tmp_path_factory):
    pytest.importorskip('torch')
    pytest.importorskip('onnxruntime')
    tmp = tmp_path_factory.mktemp('recipe')
    data = tmp / 'cityscapes'
    dh.make_cityscapes(data)
    # 8 frames each: enough segments for the meta classifier (>= 10) whichever score the
    # calibration rule picks on these tiny sets.
    sets = [dh.make_anomaly_set(tmp / 'anomalies_a', n=8),
            dh.make_anomaly_set(tmp / 'anomalies_b', n=8, seed=200)]
    out = tmp / 'bundles' / 'mine'
    argv = ['recipe', '--dataset', f'cityscapes:{data}', '--ood-val', str(sets[0]),
            '--ood-val', str(sets[1]), '--out', str(out), *TINY]
    assert cli.main(argv) == 0
    return {'tmp': tmp, 'data': data, 'out': out, 'argv': argv, 'sets': sets}


def test_recipe_writes_a_bundle_with_the_dataset_classes(recipe):
    from ood_seg_ros.model import load_bundle
    out = recipe['out']
    b = load_bundle(out)
    assert list(b.config.class_names) == CITYSCAPES_NAMES
    assert b.config.palette[13] == (0, 0, 142) and b.config.ignore_index == 255
    assert b.info['trained_data'] == {'cityscapes:cityscapes': ['train']}
    assert b.runtime['calibrated_size'] == '64x128' and '64x128' in b.runtime['sizes']
    assert (out / 'meta.json').is_file()
    assert list((out / 'derived').glob('*_64x128_fp32.onnx'))
    card = (out / 'MODEL_CARD.md').read_text()
    # the card's figures are the bundle's
    assert f'`{b.runtime["heatmap_score"]}`' in card
    assert f'{b.runtime["segment_threshold"]:.3f}' in card
    assert 'cityscapes:cityscapes' in card and '| traffic sign |' in card
    # the meta classifier's threshold rule and its out-of-fold figures per validation set
    cv = json.loads((out / 'meta.json').read_text())['info']['cv']
    assert f'({cv["threshold_rule"]})' in card
    assert cv['cv_repeats'] == 10 and 'pooled over 10 draws of the folds' in card
    for name, v in cv['per_set'].items():
        assert f'| {name} | {v["n_segments"]} ({v["n_fp"]}) |' in card
    assert (out / 'figures' / 'classes_0.png').is_file()


def test_recipe_resumes_by_content(recipe, capsys):
    out, argv = recipe['out'], recipe['argv']
    weights = (out / 'weights.pt').read_bytes()
    capsys.readouterr()
    assert cli.main(argv) == 0
    log = capsys.readouterr().out
    stages = ['base', 'probes', 'sml', 'calibrate', 'meta', 'export', 'card']
    assert all(f'[recipe] {s}: done for these inputs, skipped' in log for s in stages), log
    assert (out / 'weights.pt').read_bytes() == weights
    # the default threshold rule is the balanced one; fp-rate needs a rate
    rule = json.loads((out / 'meta.json').read_text())['info']['cv']['threshold_rule']
    assert rule.startswith('the largest worst share') and 'per frame' not in rule
    assert cli.main(argv + ['--meta-threshold', 'fp-rate', '--max-fp-per-frame', '0']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--max-fp-per-frame must be > 0' in err[0], err
    assert cli.main(argv + ['--max-fp-per-frame', '0.25']) == 0
    log = capsys.readouterr().out
    assert all(f'[recipe] {s}: done for these inputs, skipped' in log
               for s in stages[:4]), log
    assert all(f'[recipe] {s}: running' in log for s in stages[4:]), log
    meta = json.loads((out / 'meta.json').read_text())
    assert '0.25' in meta['info']['cv']['threshold_rule']


def test_guard_refuses_calibration_on_trained_frames(recipe, capsys):
    tmp, data, out = recipe['tmp'], recipe['data'], recipe['out']
    coco = _fake_coco(tmp / 'coco')
    pasted = tmp / 'pasted_train'
    assert cli.main(['make-ood-set', '--dataset', f'cityscapes:{data}', '--coco', str(coco),
                     '--split', 'train', '--group', 'a', '--out', str(pasted)]) == 0
    info = json.loads((pasted / 'info.json').read_text())
    assert info['dataset'] == 'cityscapes:cityscapes' and info['split'] == 'train'
    before = (out / 'bundle.json').read_text()
    capsys.readouterr()
    for argv in (['eval', '--bundle', str(out), '--ood-set', str(pasted), '--calibrate'],
                 ['train-meta', '--bundle', str(out), '--ood-set', str(pasted)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cityscapes:cityscapes 'train'" in err[0], err
    assert (out / 'bundle.json').read_text() == before


NODE_SCRIPT = r"""
import json, sys, time
import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String
from ood_seg_ros.ros.node import OodNode
rclpy.init()
node = OodNode(parameter_overrides=[Parameter('model_path', value=sys.argv[1]),
                                    Parameter('backend', value='onnxruntime')])
client = rclpy.create_node('recipe_client')
got = {}
latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
client.create_subscription(String, 'ood/label_info',
                           lambda m: got.setdefault('label_info', json.loads(m.data)), latched)
client.create_subscription(Image, 'ood/semantic', lambda m: got.setdefault('semantic', m),
                           QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
pub = client.create_publisher(Image, 'image', QoSProfile(depth=1))
ex = MultiThreadedExecutor()
ex.add_node(node)
ex.add_node(client)
frame = np.load(sys.argv[2])
deadline = time.time() + 90
while time.time() < deadline and not ('semantic' in got and 'label_info' in got):
    if pub.get_subscription_count() and 'label_info' in got:
        msg = Image(height=frame.shape[0], width=frame.shape[1], encoding='rgb8',
                    step=frame.shape[1] * 3, data=frame.tobytes())
        pub.publish(msg)
    ex.spin_once(timeout_sec=0.5)
sem = got.get('semantic')
out = {'label_info': got.get('label_info'), 'backend': node.pipeline.backend.name
       if hasattr(node.pipeline.backend, 'name') else type(node.pipeline.backend).__name__}
if sem is not None:
    ids = np.frombuffer(bytes(sem.data), np.uint8).reshape(sem.height, sem.width)
    out.update(semantic_shape=[sem.height, sem.width], semantic_max=int(ids.max()),
               encoding=sem.encoding)
print('RESULT ' + json.dumps(out), flush=True)
ex.shutdown()
node.destroy_node()
client.destroy_node()
rclpy.try_shutdown()
"""


@pytest.mark.dds
def test_node_runs_the_recipe_bundle_with_its_classes(recipe, tmp_path):
    pytest.importorskip('rclpy')
    reason = rh.netns_problem()
    if reason:
        pytest.skip(reason)
    rgb, _ = dh.street_scene(5)
    frame = tmp_path / 'frame.npy'
    np.save(frame, rgb)
    proc = subprocess.run(rh.NETNS + [sys.executable, '-c', NODE_SCRIPT, str(recipe['out']),
                                      str(frame)], capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(lines[-1][7:])
    info = res['label_info']
    assert info is not None, proc.stderr[-3000:]
    assert [info['class_map'][str(i)] for i in range(19)] == CITYSCAPES_NAMES
    assert res['semantic_shape'] == [64, 128] and res['encoding'] == 'mono8'
    assert res['semantic_max'] < 19
    assert 'onnx' in res['backend'].lower(), res
