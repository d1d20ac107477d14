"""
Test ood_node over real DDS, the launch file, message conversion and Detection2D.

The DDS tests run real rclpy (Jazzy wheels) inside private network namespaces.

Two nodes run in parallel, each with its own driver in its own ``unshare -n``
namespace (module fixture ``runs``), next to ``bench_node`` (``ood-seg bench --node``):

- A: raw input, plain node, started with exactly the command launch_ros builds from
  ``launch/ood.launch.py`` (a params file derived from ``config/ood.yaml``); stopped by
  SIGTERM;
- B: compressed input, lifecycle node, ``config/ood.yaml`` plus ``-p`` overrides; stopped
  by SIGINT;
- C: two cameras, two nodes from the launch file under ``/left`` (plain) and ``/right``
  (lifecycle, ``autostart:=false``, managed from the driver and shut down by a
  transition); camera-size frames (640x480 to 1920x1080) and camera_info on the left.

The nodes run without a DDS profile in their environment (C: with the launch file's), so
``main()`` must pick the package's ``config/fastdds.xml``; the C driver, the camera, uses
the same file as the README tells a camera driver to.

Outputs are compared with the ROS-free Pipeline run in this process on the same frames.
"""

import json
import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
from ood_seg_ros.imagecodec.image_headers import compressed_size
import pytest
from repo_paths import ROOT
import ros_helpers as rh
import yaml

LAUNCH = ROOT / 'launch' / 'ood.launch.py'
CONFIG = ROOT / 'config' / 'ood.yaml'
DDS_PROFILE = ROOT / 'config' / 'fastdds.xml'
MAX_PIXELS_C = 1920 * 1080      # scenario C: 1920x1080 passes, 2560x1440 is too large
MEM_FRAMES = 2000
ENCODING_BPP = {'32FC1': 4, 'mono16': 2, 'mono8': 1, 'bgr8': 3}


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save a random-init test bundle with a 64 x 64 input."""
    pytest.importorskip('torch')
    return rh.make_test_bundle(tmp_path_factory.mktemp('bundle') / 'b')


@pytest.fixture(scope='module')
def offline(bundle):
    """Offline reference: process(frame, score, threshold) -> FrameResult."""
    from ood_seg_ros.pipeline import Pipeline
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True)

    def process(frame, score='moose_entropy', threshold=0.5):
        pipe.set_score(score)
        pipe.set_threshold(threshold)
        return pipe.process(frame)
    return process


@pytest.fixture(scope='module')
def share_prefix(tmp_path_factory):
    """Make an install prefix where ament_index finds ood_seg_ros and config/ood.yaml."""
    prefix = tmp_path_factory.mktemp('prefix')
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'ood_seg_ros'
    marker.parent.mkdir(parents=True)
    marker.write_text('')
    (prefix / 'share' / 'ood_seg_ros' / 'config').mkdir(parents=True)
    (prefix / 'share' / 'ood_seg_ros' / 'config' / 'ood.yaml').write_text(CONFIG.read_text())
    (prefix / 'share' / 'ood_seg_ros' / 'config' / 'fastdds.xml').write_text(
        DDS_PROFILE.read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('AMENT_PREFIX_PATH', str(prefix))
        yield prefix


@pytest.fixture(scope='module')
def thresholds(offline):
    """Segment thresholds that give several segments on the test frames."""
    t1 = float(np.percentile(offline(rh.sample_frame(0)).heatmap, 70))
    t2 = float(np.percentile(offline(rh.sample_frame(10), 'moose_mi').heatmap, 60))
    return round(t1, 6), round(t2, 6)


@pytest.fixture(scope='module')
def runs(bundle, thresholds, share_prefix, tmp_path_factory):
    """Run scenarios A (raw) and B (compressed, lifecycle) in parallel; their results."""
    pytest.importorskip('rclpy')
    reason = rh.netns_problem()
    if reason:
        pytest.skip(f'no private network namespace for DDS tests: {reason}')
    exe = rh.node_executable()
    if exe is None:
        pytest.skip('the ood_node console script is not installed (pip install -e .)')
    tmp = tmp_path_factory.mktemp('runs')
    params = yaml.safe_load(CONFIG.read_text())
    params['/**']['ros__parameters'].update(
        segment_threshold=thresholds[0], qos_reliability='reliable', qos_depth=5,
        diagnostics_period=0.5, log_throttle_sec=60.0, processing_budget_ms=5000.0, threads=1)
    params_file = tmp / 'params.yaml'
    params_file.write_text(yaml.safe_dump(params))
    _, nodes = rh.evaluate_launch(LAUNCH, params_file=str(params_file),
                                  image_topic='/cam/image', model=str(bundle),
                                  backend='torch')
    cmd_a = rh.launch_ros_command(nodes[0], exe, tmp)
    cmd_b = [exe, '--ros-args', '--params-file', str(CONFIG), '-r', 'image:=/cam/image',
             '-r', 'image/compressed:=/cam/image/compressed', '-p', f'model_path:={bundle}',
             '-p', 'backend:=torch', '-p', 'input_transport:=compressed',
             '-p', 'lifecycle:=true', '-p', 'diagnostics_period:=0.25', '-p', 'threads:=1']
    # C: namespaced nodes from the launch file, bundle-default threshold
    params_c = yaml.safe_load(CONFIG.read_text())
    params_c['/**']['ros__parameters'].update(
        max_frame_pixels=MAX_PIXELS_C, diagnostics_period=0.5, log_throttle_sec=60.0,
        processing_budget_ms=5000.0, threads=1)
    params_file_c = tmp / 'params_c.yaml'
    params_file_c.write_text(yaml.safe_dump(params_c))
    cmds_c, envs_c = {}, {}
    for ns, extra in (('left', {}), ('right', {'lifecycle': 'true', 'autostart': 'false'})):
        _, (action,) = rh.evaluate_launch(LAUNCH, params_file=str(params_file_c), namespace=ns,
                                          image_topic='camera/image_raw', model=str(bundle),
                                          backend='torch', **extra)
        cmds_c[ns] = rh.launch_ros_command(action, exe, tmp)
        envs_c[ns] = action.kwargs.get('additional_env', {})
    specs = {
        'a': {'scenario': 'raw', 'cmd': cmd_a, 'signal': 'SIGTERM',
              'threshold2': thresholds[1], 'mem_warmup': 100, 'mem_frames': MEM_FRAMES},
        'b': {'scenario': 'compressed', 'cmd': cmd_b, 'signal': 'SIGINT'},
        'c': {'scenario': 'multi', 'cmds': cmds_c, 'envs': envs_c, 'signal': 'SIGINT',
              'camera_profile': str(DDS_PROFILE), 'large_timeout': 10.0,
              'too_large': [1440, 2560]},
    }
    domains = random.sample(range(1, 200), 3)
    procs = {}
    for (name, spec), domain in zip(specs.items(), domains):
        spec['out'] = str(tmp / name)
        path = tmp / f'{name}.json'
        path.write_text(json.dumps(spec))
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED='1')
        procs[name] = subprocess.Popen(
            rh.NETNS + [sys.executable, str(Path(rh.__file__)), str(path)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code = ('import json; from ood_seg_ros.tools.bench.node import bench_node; '
            f'print(json.dumps(bench_node({str(bundle)!r}, 60, 80, 8, 2, backend="torch")))')
    bench = subprocess.Popen(rh.NETNS + [sys.executable, '-c', code], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    results = {}
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in list(procs.values()) + [bench]:
                p.kill()            # the nodes die with their drivers (PR_SET_PDEATHSIG)
            raise
        rfile = Path(specs[name]['out']) / 'result.json'
        assert rfile.exists(), f'driver {name} wrote no result: {out[-3000:]}'
        res = json.loads(rfile.read_text())
        res['arrays'] = dict(np.load(Path(specs[name]['out']) / 'frames.npz'))
        res['driver_output'] = out
        res['params_file'] = str(params_file)
        results[name] = res
    try:
        out, _ = bench.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        bench.kill()
        out, _ = bench.communicate()
    results['bench'] = {'returncode': bench.returncode, 'output': out}
    return results


def _ok(res):
    """Fail with the node log when the scenario did not run through."""
    assert res.get('ready'), (f'node never became ready ({res.get("driver_error")}):\n'
                              f'{res["log"][-4000:]}')
    assert 'driver_error' not in res, f'{res["driver_error"]}\n{res["log"][-4000:]}'
    return res


def _ref_rgb(frame):
    """RGB frame the node should have seen for a raw test frame."""
    rgb = rh.sample_frame(frame['seed'])
    if frame['encoding'] == 'mono8':
        return np.repeat(rgb[:, :, :1], 3, axis=2)
    return rgb


def _assert_matches(arrays, name, ref):
    heat = arrays[f'{name}/heatmap']
    assert heat.shape == ref.heatmap.shape
    np.testing.assert_allclose(heat, ref.heatmap, atol=1e-4)
    assert np.mean(arrays[f'{name}/semantic'] == ref.semantic) > 0.999
    mask = arrays[f'{name}/mask']
    assert mask.dtype == np.uint16
    assert np.mean(mask == ref.instances) > 0.995
    assert int(mask.max()) == sum(s.kept for s in ref.segments)


# -- launch file (stand-in launch / launch_ros) ------------------------------------------
def test_launch_file_declares_arguments_and_node(share_prefix, monkeypatch):
    for var in rh.DDS_PROFILE_VARS:
        monkeypatch.delenv(var, raising=False)
    declared, nodes = rh.evaluate_launch(LAUNCH)
    assert set(declared) == {'params_file', 'image_topic', 'camera_info_topic', 'namespace',
                             'model', 'backend', 'input_transport', 'use_sim_time',
                             'lifecycle', 'autostart', 'exit_on_error'}
    default_params = declared['params_file'].kwargs['default_value']
    share = share_prefix / 'share' / 'ood_seg_ros'
    assert Path(default_params) == share / 'config' / 'ood.yaml'
    assert len(nodes) == 1
    kw = nodes[0].kwargs
    assert type(nodes[0]) is rh.NodeAction          # a plain Node unless lifecycle:=true
    assert (kw['package'], kw['executable'], kw['namespace']) == ('ood_seg_ros', 'ood_node', '')
    # empty arguments keep the params file's values
    assert kw['parameters'] == [default_params, {'use_sim_time': False, 'lifecycle': False}]
    assert kw['remappings'] == [('image', '/camera/image_raw'),
                                ('image/compressed', '/camera/image_raw/compressed'),
                                ('camera_info', '/camera/camera_info')]
    # the package's Fast DDS profile for the node, unless the user has one
    profile = str(share / 'config' / 'fastdds.xml')
    assert kw['additional_env'] == {var: profile for var in rh.DDS_PROFILE_VARS}
    assert kw['on_exit'].__name__ == 'on_node_exit'     # see test_launch_exit.py
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/mine.xml')
    assert 'additional_env' not in rh.evaluate_launch(LAUNCH)[1][0].kwargs


def test_launch_file_overrides(share_prefix, tmp_path):
    _, nodes = rh.evaluate_launch(LAUNCH, params_file='/p.yaml', image_topic='/front/rgb',
                                  model='/m/bundle', backend='onnxruntime',
                                  input_transport='compressed', use_sim_time='true')
    kw = nodes[0].kwargs
    assert kw['parameters'] == ['/p.yaml', {'model_path': '/m/bundle', 'backend': 'onnxruntime',
                                            'input_transport': 'compressed',
                                            'use_sim_time': True, 'lifecycle': False}]
    assert ('image/compressed', '/front/rgb/compressed') in kw['remappings']
    cmd = rh.launch_ros_command(nodes[0], 'ood_node', tmp_path)
    assert cmd[:4] == ['ood_node', '--ros-args', '-r', '__node:=ood_node']
    assert cmd[4:6] == ['--params-file', '/p.yaml']
    written = yaml.safe_load(Path(cmd[7]).read_text())
    assert written == {'/**': {'ros__parameters': kw['parameters'][1]}}
    assert cmd[-6:] == ['-r', 'image:=/front/rgb', '-r',
                        'image/compressed:=/front/rgb/compressed',
                        '-r', 'camera_info:=/front/camera_info']


def test_launch_file_namespace_lifecycle_and_exit_on_error(share_prefix, tmp_path):
    _, (node,) = rh.evaluate_launch(LAUNCH, namespace='left', image_topic='camera/image_raw',
                                    lifecycle='true', autostart='false',
                                    exit_on_error='true')
    assert type(node) is rh.LifecycleNodeAction
    kw = node.kwargs
    assert (kw['name'], kw['namespace']) == ('ood_node', 'left')
    assert kw['parameters'][1] == {'use_sim_time': False, 'lifecycle': True,
                                   'autostart': False, 'exit_on_error': True}
    # relative topics resolve in the namespace; camera_info sits beside the image
    assert ('camera_info', 'camera/camera_info') in kw['remappings']
    assert callable(kw['on_exit'])       # the required node: see test_launch_exit.py
    cmd = rh.launch_ros_command(node, 'ood_node', tmp_path)
    assert cmd[2:6] == ['-r', '__node:=ood_node', '-r', '__ns:=/left']
    _, (node,) = rh.evaluate_launch(LAUNCH, camera_info_topic='/cam/info', image_topic='img')
    assert ('camera_info', '/cam/info') in node.kwargs['remappings']
    assert rh.load_launch_file(LAUNCH).camera_info_topic('img') == 'camera_info'


def test_dds_profile_is_large_shm_plus_udp():
    import xml.etree.ElementTree as ET
    root = ET.parse(DDS_PROFILE).getroot()

    def local(tag):
        return tag.rsplit('}', 1)[-1]
    nodes = {local(e.tag): e for e in root.iter()}
    descriptors = {}
    for d in root.iter():
        if local(d.tag) == 'transport_descriptor':
            fields = {local(c.tag): c.text for c in d}
            descriptors[fields['transport_id']] = fields
    kinds = {f['type'] for f in descriptors.values()}
    assert kinds == {'SHM', 'UDPv4'}
    shm = next(f for f in descriptors.values() if f['type'] == 'SHM')
    # a 1080p rgb8 frame (6.2 MB) and the 14 MB of 1024x2048 outputs fit
    assert int(shm['segment_size']) >= 16 * 1024 * 1024
    participant = nodes['participant']
    assert participant.get('is_default_profile') == 'true'
    assert nodes['useBuiltinTransports'].text == 'false'
    used = [e.text for e in participant.iter() if local(e.tag) == 'transport_id']
    assert sorted(used) == sorted(descriptors)


def test_use_dds_profile_respects_the_user():
    node = pytest.importorskip('ood_seg_ros.ros.main')
    env = {}
    path = node.use_dds_profile(env)
    assert Path(path) == DDS_PROFILE and Path(path).exists()
    assert env == {var: path for var in node.DDS_PROFILE_VARS}
    for var in node.DDS_PROFILE_VARS:
        env = {var: '/mine.xml'}
        assert node.use_dds_profile(env) is None and env == {var: '/mine.xml'}
    env = {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}
    assert node.use_dds_profile(env) is None and len(env) == 1
    assert node.use_dds_profile({'RMW_IMPLEMENTATION': 'rmw_fastrtps_dynamic_cpp'})


def test_config_declares_every_node_parameter():
    node = pytest.importorskip('ood_seg_ros.ros.params')
    params = yaml.safe_load(CONFIG.read_text())['/**']['ros__parameters']
    assert set(params) == set(node.PARAMETERS)
    for name, value in params.items():
        assert value == node.PARAMETERS[name][0], name
        assert type(value) is type(node.PARAMETERS[name][0]), name


# -- conversion and message construction (no DDS) ----------------------------------------
def test_image_conversion_against_numpy():
    codec = pytest.importorskip('ood_seg_ros.imagecodec.image_codec')
    rgb = rh.sample_frame(3, (5, 7))
    assert np.array_equal(codec.image_to_rgb('rgb8', 5, 7, 21, rgb.tobytes()), rgb)
    assert np.array_equal(codec.image_to_rgb('bgr8', 5, 7, 21, rgb[:, :, ::-1].tobytes()), rgb)
    gray = rgb[:, :, 1].copy()
    out = codec.image_to_rgb('mono8', 5, 7, 7, gray.tobytes())
    assert np.array_equal(out, np.stack([gray] * 3, -1))
    padded = np.concatenate([rgb.reshape(5, 21), np.full((5, 3), 255, np.uint8)], 1)
    assert np.array_equal(codec.image_to_rgb('rgb8', 5, 7, 24, padded.tobytes()), rgb)
    cases = [(('16UC1', 5, 7, 14, bytes(70)), 'encoding'),
             (('yuv422', 5, 7, 14, bytes(70)), 'encoding'),
             (('rgb8', 0, 0, 0, b''), 'empty'),
             (('rgb8', 5, 7, 20, bytes(100)), 'step'),
             (('rgb8', 5, 7, 21, bytes(104)), 'truncated'),
             (('rgb8', 5, 7, 21, bytes(106)), 'data_size'),
             (('mono8', 4320, 7680, 7680, b''), 'too_large')]
    for args, kind in cases:
        with pytest.raises(codec.FrameError) as info:
            codec.image_to_rgb(*args)
        assert info.value.kind == kind, args


def test_compressed_conversion():
    codec = pytest.importorskip('ood_seg_ros.imagecodec.image_codec')
    rgb = rh.sample_frame(4)
    png = cv2.imencode('.png', rgb[:, :, ::-1])[1].tobytes()
    assert np.array_equal(codec.compressed_to_rgb(png), rgb)
    jpg = cv2.imencode('.jpg', rgb[:, :, ::-1])[1].tobytes()
    assert compressed_size(jpg) == (80, 60) and compressed_size(png) == (80, 60)
    assert np.array_equal(codec.compressed_to_rgb(jpg), cv2.imdecode(
        np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])
    with pytest.raises(codec.FrameError, match='exceeds'):
        codec.compressed_to_rgb(png, max_pixels=80 * 60 - 1)
    for data, kind in [(jpg[:len(jpg) // 2], 'decode'), (b'', 'empty'), (b'abc' * 50, 'decode')]:
        with pytest.raises(codec.FrameError) as info:
            codec.compressed_to_rgb(data)
        assert info.value.kind == kind


def test_image_cdr_deserialises_with_rclpy():
    pytest.importorskip('rclpy')
    codec = pytest.importorskip('ood_seg_ros.imagecodec.image_codec')
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    rng = np.random.default_rng(0)
    arrays = [(rng.random((3, 5), dtype=np.float32), '32FC1'),
              (rng.integers(0, 65535, (4, 3), dtype=np.uint16), 'mono16'),
              (rng.integers(0, 255, (2, 7), dtype=np.uint8), 'mono8'),
              (rng.integers(0, 255, (3, 2, 3), dtype=np.uint8), 'bgr8')]
    for frame_id in ('', 'a', 'ab', 'abc', 'camera_optical_frame'):
        for arr, enc in arrays:
            header = Header(frame_id=frame_id)
            header.stamp.sec, header.stamp.nanosec = -3, 999_999_999
            msg = deserialize_message(codec.image_cdr(header, arr, enc), Image)
            assert msg.header == header
            assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (
                arr.shape[0], arr.shape[1], enc, 0)
            assert msg.step == arr.shape[1] * ENCODING_BPP[enc]
            got = np.frombuffer(bytes(msg.data), arr.dtype).reshape(arr.shape)
            assert np.array_equal(got, arr)


class _Fields:
    """Stand-in message base: only the declared fields may be set."""

    __slots__ = ()

    def __init__(self):
        for name, factory in self._fields.items():
            object.__setattr__(self, name, factory())

    def __setattr__(self, name, value):
        if name not in self._fields:
            raise AttributeError(f'{type(self).__name__} has no field {name!r}')
        object.__setattr__(self, name, value)


def _msg(name, **fields):
    return type(name, (_Fields,), {'__slots__': tuple(fields), '_fields': fields})


Point2D = _msg('Point2D', x=float, y=float)
Pose2D = _msg('Pose2D', position=Point2D, theta=float)
BoundingBox2D = _msg('BoundingBox2D', center=Pose2D, size_x=float, size_y=float)
ObjectHypothesis = _msg('ObjectHypothesis', class_id=str, score=float)
ObjectHypothesisWithPose = _msg('ObjectHypothesisWithPose', hypothesis=ObjectHypothesis,
                                pose=object)
Detection2D = _msg('Detection2D', header=object, results=list, bbox=BoundingBox2D, id=str)
Detection2DArray = _msg('Detection2DArray', header=object, detections=list)


def test_detections_with_stand_in_messages(offline):
    node = pytest.importorskip('ood_seg_ros.ros.outputs')
    frame = rh.sample_frame(5, (128, 128))      # integer scale to the 32 x 32 decoder maps
    heat = offline(frame).heatmap
    res = offline(frame, threshold=float(np.percentile(heat, 60)))
    res.segments[0].kept = False                # a dropped segment is not published
    res.segments[0].id = 0
    header = object()
    arr = node.detections_from_segments(header, res.segments, Detection2DArray, Detection2D,
                                        ObjectHypothesisWithPose)
    kept = [s for s in res.segments if s.kept]
    assert len(kept) >= 2 and len(arr.detections) == len(kept)
    assert arr.header is header
    for det in arr.detections:
        ys, xs = np.nonzero(res.instances == int(det.id))
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        assert det.header is header
        assert det.bbox.center.position.x == pytest.approx((x0 + x1) / 2)
        assert det.bbox.center.position.y == pytest.approx((y0 + y1) / 2)
        assert (det.bbox.size_x, det.bbox.size_y) == (x1 - x0, y1 - y0)
        (hyp,) = det.results
        seg = next(s for s in kept if s.id == int(det.id))
        assert hyp.hypothesis.class_id == 'ood'
        assert hyp.hypothesis.score == pytest.approx(seg.meta_score)


# -- the running nodes --------------------------------------------------------------------
@pytest.mark.dds
def test_every_output_for_each_input_with_same_header(runs):
    for scenario in ('a', 'b'):
        res = _ok(runs[scenario])
        for name, frame in res['frames'].items():
            assert frame['headers'] is not None, f'{scenario}/{name}: no outputs'
            for topic, (frame_id, sec, nsec, enc, step, w, h, big) in frame['headers'].items():
                assert [frame_id, sec, nsec] == [frame['frame_id']] + frame['stamp'], topic
                assert (w, h) == (80, 60)
                assert step == w * ENCODING_BPP[enc] and big == 0
            assert {k: v[3] for k, v in frame['headers'].items()} == {
                'heatmap': '32FC1', 'mask': 'mono16', 'semantic': 'mono8', 'color': 'bgr8'}


@pytest.mark.dds
def test_raw_outputs_equal_offline_pipeline(runs, offline, thresholds):
    """rgb8 (reliable), bgr8 (best effort), mono8 and padded rows; YAML threshold."""
    res = _ok(runs['a'])
    assert set(res['frames']) == {'rgb', 'bgr', 'mono', 'padded'}
    for name, frame in res['frames'].items():
        ref = offline(_ref_rgb(frame), 'moose_entropy', thresholds[0])
        _assert_matches(res['arrays'], name, ref)
    assert runs['a']['arrays']['rgb/mask'].max() >= 2       # the test has segments


@pytest.mark.dds
def test_color_overlay_is_blend_of_frame_and_heatmap(runs, offline, thresholds):
    res = _ok(runs['a'])
    frame = res['frames']['rgb']
    rgb = _ref_rgb(frame)
    ref = offline(rgb, 'moose_entropy', thresholds[0])
    colour = cv2.applyColorMap((ref.heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    a = 0.6 * ref.heatmap[:, :, None]
    expected = rgb[:, :, ::-1] * (1 - a) + colour * a
    border = np.zeros(rgb.shape[:2], bool)
    for s in ref.segments:
        x0, y0, x1, y1 = s.bbox
        ring = np.zeros_like(border)
        ring[y0:y1, x0:x1] = True
        ring[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = False
        border |= ring
    got = res['arrays']['rgb/color'].astype(float)
    assert np.abs(got - expected)[~border].max() <= 2
    assert np.all(got[border] == 255)


@pytest.mark.dds
def test_compressed_outputs_equal_offline_pipeline(runs, offline):
    res = _ok(runs['b'])
    for name in ('jpeg', 'png'):
        data = res['arrays'][f'{name}/input']
        rgb = cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]
        _assert_matches(res['arrays'], name, offline(np.ascontiguousarray(rgb)))


@pytest.mark.dds
def test_yaml_parameters_apply(runs, thresholds):
    res = _ok(runs['a'])
    assert f'-r __node:=ood_node --params-file {res["params_file"]}' in ' '.join(res['cmd'])
    assert res['label_info_first']['threshold'] == pytest.approx(thresholds[0], abs=1e-6)
    assert res['label_info_first']['class_map']['0'] == 'Sky'
    assert 'subscribed to /cam/image (reliable, depth 5)' in res['log']
    diag = res['diag_after_bad']['values']
    assert diag['processing_budget_ms'] == '5000.000'
    assert diag['backend'] == 'torch' and diag['device'] == 'cpu'


@pytest.mark.dds
def test_runtime_parameter_change(runs, offline, thresholds):
    res = _ok(runs['a'])
    assert res['param_ok'] == [[True, ''], [True, '']]
    ref = offline(rh.sample_frame(10), 'moose_mi', thresholds[1])
    _assert_matches(res['arrays'], 'after_param', ref)
    (ok1, why1), (ok2, why2), (ok3, why3) = res['param_bad']
    assert not ok1 and ('(0, 1)' in why1 or 'range' in why1)
    assert not ok2 and 'nope' in why2
    assert not ok3 and 'read-only' in why3
    # rejected values changed nothing
    _assert_matches(res['arrays'], 'after_bad_param', ref)
    assert res['label_info_last']['heatmap_score'] == 'moose_mi'
    assert res['label_info_last']['threshold'] == pytest.approx(thresholds[1], abs=1e-6)
    assert res['diag_final']['values']['heatmap_score'] == 'moose_mi'


@pytest.mark.dds
def test_bad_raw_frames_survived_logged_and_counted(runs):
    res = _ok(runs['a'])
    assert res['recovered'] == len(res['bad_kinds']) == 7
    values = res['diag_after_bad']['values']
    counts = {}
    for kind in res['bad_kinds']:
        counts[kind] = counts.get(kind, 0) + 1
    for kind, n in counts.items():
        assert values.get(f'errors_{kind}') == str(n), (kind, values)
    assert values['errors_total'] == '7'
    log = res['log']
    assert log.count("unsupported image encoding '16UC1'") == 1
    # the second and third of a kind within log_throttle_sec: not logged
    assert "'bayer_rggb8'" not in log and "'yuv422'" not in log
    assert log.count('bad input frame (encoding)') == 1
    for kind in ('empty', 'step', 'truncated', 'too_large'):
        assert f'bad input frame ({kind})' in log


@pytest.mark.dds
def test_bad_compressed_frames_and_lifecycle(runs):
    res = _ok(runs['b'])
    assert res['state'] == 'active'
    assert res['recovered'] == len(res['bad_kinds']) == 4
    values = res['diag_after_bad']['values']
    assert (values['errors_decode'], values['errors_too_large'], values['errors_empty']) == (
        '2', '1', '1')
    assert values['input_transport'] == 'compressed'
    assert res['deactivate'] and res['state_inactive'] == 'inactive'
    assert res['diag_inactive']['level'] == 2           # ERROR: no model while inactive
    assert not res['inactive_output']
    assert res['activate'] and res['active_output']


@pytest.mark.dds
def test_sigterm_and_sigint_exit_zero(runs):
    for scenario in ('a', 'b'):
        res = runs[scenario]
        assert res['node_alive_before_signal'], res['log'][-3000:]
        assert res['returncode'] == 0, res['log'][-3000:]
        assert 'Traceback' not in res['log']


@pytest.mark.dds
@pytest.mark.parametrize('lifecycle', ['false', 'true'])
def test_bad_parameter_value_exits_2_with_message(lifecycle):
    pytest.importorskip('rclpy')
    reason = rh.netns_problem()
    exe = rh.node_executable()
    if reason or exe is None:
        pytest.skip(reason or 'the ood_node console script is not installed')
    proc = subprocess.run(rh.NETNS + [exe, '--ros-args', '--params-file', str(CONFIG),
                                      '-p', 'backend:=tensorflow', '-p',
                                      f'lifecycle:={lifecycle}'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "parameter backend: 'tensorflow' is not one of auto, torch" in proc.stderr


@pytest.mark.dds
def test_bench_node_reports_latency_and_overhead(runs):
    proc = runs['bench']
    assert proc['returncode'] == 0, proc['output'][-3000:]
    res = json.loads(proc['output'].strip().splitlines()[-1])
    assert res['node_frames'] == 8 and res['node_backend'] == 'torch'
    # medians over slightly different frame sets (the node's includes the warm-up)
    assert 0 < res['node_pipeline_ms'] and 0 < res['node_latency_ms'] <= res['node_latency_p95_ms']
    assert res['ros_overhead_ms'] == pytest.approx(
        res['node_latency_ms'] - res['node_pipeline_ms'], abs=2e-3)
    assert 0 < res['node_conversion_publish_ms'] < res['node_latency_ms']
    # delivered fractions: inputs the node counted, outputs this subscriber got
    assert res['delivery_frames'] == 8 and res['delivery_period_s'] >= 0.1
    for key in ('input', 'heatmap', 'mask', 'semantic'):
        assert 0.75 <= res[f'delivered_{key}'] <= 1.0, (key, res)
    assert res['dds_profile'].endswith('fastdds.xml')


@pytest.mark.dds
def test_memory_does_not_grow(runs):
    res = _ok(runs['a'])
    assert res['mem_frames'] == MEM_FRAMES
    rss0, rss1 = res['rss_kb']
    assert rss1 - rss0 < 8 * 1024, f'node RSS grew {rss0} -> {rss1} kB over {MEM_FRAMES} frames'
    diag = res['diag_final']['values']
    assert int(diag['frames_processed']) >= MEM_FRAMES + 100


# -- scenario C: namespaces, lifecycle management, camera-size frames, camera_info --------
@pytest.mark.dds
def test_nodes_use_the_package_dds_profile(runs):
    """main() (A, B: no profile in the environment) and the launch file (C) choose it."""
    for res in (runs['a'], runs['b']):
        assert f'Fast DDS profile {DDS_PROFILE}' in res['log'], res['log'][-2000:]
    for ns, log in runs['c']['logs'].items():
        assert 'Fast DDS profile' not in log, ns   # the launch file's additional_env set it
    for ns, cmd in runs['c']['cmds'].items():
        assert f'__ns:=/{ns}' in cmd


@pytest.mark.dds
def test_two_cameras_two_namespaces_separate_outputs(runs):
    res = _ok(runs['c'])
    left_ids = {f['frame_id'] for f in res['large']}
    right_ids = {fid for fid, _ in res['right_frames']}
    assert [got for _, got in res['right_frames']] == [fid for fid, _ in res['right_frames']]
    # each node's outputs carry only its own camera's frames
    assert set(res['left_output_ids']) == left_ids
    assert set(res['right_output_ids']) == right_ids
    assert res['diag_left']['name'] == 'left/ood_node: OoD segmentation'
    assert res['diag_right']['name'] == 'right/ood_node: OoD segmentation'
    assert 'subscribed to /left/camera/image_raw' in res['logs']['left']
    assert 'and /left/camera/camera_info' in res['logs']['left']


@pytest.mark.dds
def test_camera_size_frames_delivered_and_too_large_counted(runs):
    """640x480 .. 1920x1080, reliable and best effort, each published once: all processed."""
    res = _ok(runs['c'])
    sizes = [(f['size'], f['reliable']) for f in res['large']]
    assert len(sizes) == len(rh.LARGE_SIZES) * 2
    lost = [f['frame_id'] for f in res['large'] if not f['delivered']]
    assert not lost, f'frames lost: {lost}'
    for f in res['large']:
        assert f['heatmap_hw'] == f['size']
    values = res['diag_left']['values']
    assert values['errors_too_large'] == '1', values
    # every frame sent reached the node: the six above, the too-large one
    assert values['frames_received'] == str(len(res['large']) + 1)
    assert values['frames_processed'] == str(len(res['large']))
    assert 'bad input frame (too_large): image of 2560x1440' in res['logs']['left']


@pytest.mark.dds
def test_camera_info_republished_with_header_kept(runs):
    res = _ok(runs['c'])
    for f in res['large']:
        assert f['camera_info'] is not None, f['frame_id']
        frame_id, sec, nsec, height, width, k = f['camera_info']
        assert [frame_id, sec, nsec] == [f['frame_id']] + f['stamp']
        assert [height, width] == f['size'] == f['heatmap_hw']
        assert k[0] == float(f['size'][1])


@pytest.mark.dds
def test_lifecycle_managed_from_outside_and_shutdown_exits(runs):
    res = runs['c']
    assert res['right_state0'] == 'unconfigured', res['logs']['right'][-3000:]
    assert res['right_configure'] and res['right_state1'] == 'inactive'
    assert res['right_activate'] and res['right_state2'] == 'active'
    assert 'autostart false: unconfigured' in res['logs']['right']
    _ok(res)
    assert res['right_shutdown']
    assert res['right_exit'] == 0, res['logs']['right'][-3000:]
    assert not res['alive_before_signal']['right']
    assert res['returncodes'] == {'left': 0, 'right': 0}
    assert 'Traceback' not in res['logs']['left'] + res['logs']['right']


@pytest.mark.dds
def test_param_get_shows_effective_values_and_reset(runs, bundle):
    res = _ok(runs['c'])
    from ood_seg_ros.model.bundle import read_bundle_json
    from ood_seg_ros.pipeline import Pipeline
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    want = {'heatmap_score': read_bundle_json(bundle)['runtime']['heatmap_score'],
            'segment_threshold': pipe.runtime['segment_threshold']}
    assert want['heatmap_score'] == 'moose_entropy' and 0 < want['segment_threshold'] < 1
    # the params file says '' and 0.0 (bundle default); param get shows what is in use
    assert res['params_effective'] == pytest.approx(want)
    assert res['params_set'] == [[True, ''], [True, '']]
    assert res['params_after_set'] == pytest.approx(
        {'heatmap_score': 'moose_mi', 'segment_threshold': 0.3})
    assert res['params_reset'] == [[True, ''], [True, '']]
    assert res['params_after_reset'] == pytest.approx(want)
    assert res['label_info_after_reset']['threshold'] == pytest.approx(
        want['segment_threshold'])
    assert res['label_info_after_reset']['heatmap_score'] == 'moose_entropy'
    assert res['diag_right']['values']['heatmap_score'] == 'moose_entropy'


@pytest.mark.dds
@pytest.mark.parametrize('exit_on_error', ['true', ''])
def test_model_failure_exit_on_error_or_stay_up(exit_on_error, share_prefix, tmp_path):
    """exit_on_error:=true: exit code 1 (the launch fails, test_launch_exit); else stays up."""
    pytest.importorskip('rclpy')
    reason = rh.netns_problem()
    exe = rh.node_executable()
    if reason or exe is None:
        pytest.skip(reason or 'the ood_node console script is not installed')
    _, (action,) = rh.evaluate_launch(LAUNCH, params_file=str(CONFIG),
                                      model=str(tmp_path / 'no_such_bundle'),
                                      exit_on_error=exit_on_error)
    assert action.kwargs['on_exit'].__name__ == 'on_node_exit'    # the node is required
    cmd = rh.launch_ros_command(action, exe, tmp_path)
    log = tmp_path / 'node.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(rh.NETNS + cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=rh.launch_ros_env(action))
        try:
            if exit_on_error:
                assert proc.wait(timeout=90) == 1, log.read_text()
            else:
                end = time.monotonic() + 90
                while 'cannot load model' not in log.read_text() and time.monotonic() < end:
                    assert proc.poll() is None, log.read_text()
                    time.sleep(0.2)
                time.sleep(2.0)
                assert proc.poll() is None, log.read_text()
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert 'cannot load model' in text
    assert ('exit_on_error: exiting' in text) == bool(exit_on_error)
    assert 'Traceback' not in text
