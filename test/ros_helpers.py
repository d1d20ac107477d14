"""
Helpers for the ood_node tests: network namespace, test bundle, launch stand-ins, driver.

Imported by ``test_node.py``. Run as a script inside a private network namespace
(``python ros_helpers.py <spec.json>``) it starts the node, drives one scenario over
real DDS and writes what it saw to ``<out>/result.json`` and ``<out>/frames.npz``.
"""

import importlib.util
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
# node_executable, NETNS and netns_problem are used by the tests through this module
from ood_seg_ros.imagecodec.topics import output_topic
from ood_seg_ros.ros.main import DDS_PROFILE_VARS
from ood_seg_ros.tools.bagtools.node_process import console_script as node_executable  # noqa: F401
from ood_seg_ros.tools.bagtools.node_process import NETNS, netns_problem  # noqa: F401
from ood_seg_ros.tools.bagtools.node_process import node_env, NodeProcess

OUTPUTS = ('heatmap', 'mask', 'semantic', 'color')     # keys of the node's TOPICS
FRAME_SIZE = (60, 80)      # (H, W) of the test frames; the test model runs at 64 x 64


# -- test data --------------------------------------------------------------------------
def make_test_bundle(path):
    """
    Save a small random-init bundle (64 x 64 input) with calibrated BN statistics.

    Calibrating the BatchNorm running statistics on random images gives the random
    network spatially varying outputs, so heatmaps and segments are not constant.
    """
    import torch
    from ood_seg_ros.model import ModelConfig, OodSegNet, save_bundle
    torch.manual_seed(0)
    model = OodSegNet(ModelConfig(input_size=(64, 64), aspp_channels=16, decoder_channels=16,
                                  probe_channels=16, low_level_project=8))
    model.train()
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None     # cumulative average
    with torch.no_grad():
        for _ in range(4):
            model.forward_train(torch.rand(4, 3, 64, 64))
    model.eval()
    return save_bundle(path, model, runtime={'heatmap_score': 'moose_entropy'}, half=False)


def sample_frame(seed, size=FRAME_SIZE):
    """Return a deterministic RGB uint8 (H, W, 3) frame: gradients plus noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255.0 / w, yy * 255.0 / h, (xx + yy) * 127.0 / (h + w)], -1)
    return np.clip(base * 0.6 + rng.integers(0, 100, (h, w, 3)), 0, 255).astype(np.uint8)


def make_share_prefix(prefix, root):
    """Make an install prefix where ament_index finds ood_seg_ros and its config files."""
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'ood_seg_ros'
    marker.parent.mkdir(parents=True)
    marker.write_text('')
    config = prefix / 'share' / 'ood_seg_ros' / 'config'
    config.mkdir(parents=True)
    for name in ('ood.yaml', 'fastdds.xml'):
        (config / name).write_text((root / 'config' / name).read_text())
    return prefix


def read_rss_kb(pid):
    """Resident set size of process ``pid`` in kB (from /proc/<pid>/status)."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    raise RuntimeError(f'no VmRSS for pid {pid}')


# -- launch stand-ins ---------------------------------------------------------------------
class _Action:
    """A recorded launch action: constructor arguments kept as attributes."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class LaunchDescription(_Action):
    """Stand-in for launch.LaunchDescription."""

    @property
    def entities(self):
        """Return the actions in the description."""
        return list(self.args[0]) if self.args else []


class DeclareLaunchArgument(_Action):
    """Stand-in for launch.actions.DeclareLaunchArgument."""

    @property
    def name(self):
        """Argument name."""
        return self.args[0] if self.args else self.kwargs['name']


class OpaqueFunction(_Action):
    """Stand-in for launch.actions.OpaqueFunction."""


class LaunchConfiguration(_Action):
    """Stand-in for launch.substitutions.LaunchConfiguration."""

    def perform(self, context):
        """Value of the launch argument in ``context``."""
        return context.launch_configurations[self.args[0]]


class NodeAction(_Action):
    """Stand-in for launch_ros.actions.Node."""


class LifecycleNodeAction(NodeAction):
    """Stand-in for launch_ros.actions.LifecycleNode."""


class Shutdown(_Action):
    """Stand-in for launch.actions.Shutdown."""


class LaunchContext:
    """Stand-in for launch.LaunchContext: only the evaluated launch arguments."""

    def __init__(self, configurations):
        self.launch_configurations = dict(configurations)


def load_launch_file(path):
    """
    Import a ``*.launch.py`` file with stand-in launch / launch_ros modules.

    The package's own ``launch/`` folder would shadow ``launch`` as a namespace
    package, so the stand-ins are injected into sys.modules for the import only.
    """
    mods = {}
    for name in ('launch', 'launch.actions', 'launch.substitutions', 'launch_ros',
                 'launch_ros.actions'):
        mods[name] = types.ModuleType(name)
    mods['launch'].LaunchDescription = LaunchDescription
    mods['launch'].LaunchContext = LaunchContext
    mods['launch.actions'].DeclareLaunchArgument = DeclareLaunchArgument
    mods['launch.actions'].OpaqueFunction = OpaqueFunction
    mods['launch.actions'].Shutdown = Shutdown
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch_ros.actions'].Node = NodeAction
    mods['launch_ros.actions'].LifecycleNode = LifecycleNodeAction
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        spec = importlib.util.spec_from_file_location('ood_launch_under_test', str(path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


def evaluate_launch(path, **arguments):
    """Run generate_launch_description with ``arguments``; (declared args, Node actions)."""
    module = load_launch_file(path)
    description = module.generate_launch_description()
    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    unknown = set(arguments) - set(declared)
    if unknown:
        raise ValueError(f'undeclared launch arguments {sorted(unknown)}')
    config = {name: a.kwargs.get('default_value', '') for name, a in declared.items()}
    config.update(arguments)
    context = LaunchContext(config)
    nodes = []
    for action in description.entities:
        if isinstance(action, OpaqueFunction):
            nodes += [a for a in action.kwargs['function'](context) if isinstance(a, NodeAction)]
        elif isinstance(action, NodeAction):
            nodes.append(action)
    return declared, nodes


def launch_ros_command(node, executable, tmpdir):
    """Build the command line launch_ros runs for a Node action (dicts -> temp YAML)."""
    import yaml
    kw = node.kwargs
    cmd = [executable] + list(kw.get('arguments', [])) + ['--ros-args']
    if kw.get('name'):
        cmd += ['-r', f'__node:={kw["name"]}']
    if kw.get('namespace'):      # launch_ros makes a relative namespace absolute
        cmd += ['-r', f'__ns:=/{kw["namespace"].lstrip("/")}']
    for i, params in enumerate(kw.get('parameters', [])):
        if isinstance(params, dict):
            fd, name = tempfile.mkstemp(suffix='.yaml', prefix=f'launch_params_{i}_',
                                        dir=str(tmpdir))
            os.close(fd)        # one file per command: several nodes share tmpdir
            path = Path(name)
            path.write_text(yaml.dump({'/**': {'ros__parameters': params}},
                                      default_flow_style=False))
            params = str(path)
        cmd += ['--params-file', str(params)]
    for src, dst in kw.get('remappings', []):
        cmd += ['-r', f'{src}:={dst}']
    return cmd


def launch_ros_env(node, base=None):
    """Environment launch_ros gives the Node action's process (``additional_env``)."""
    env = dict(os.environ if base is None else base)
    env.update(node.kwargs.get('additional_env') or {})
    return env


# -- driver (runs inside the network namespace) -----------------------------------------
class Client:
    """An rclpy node that feeds frames to ood_node and records its outputs."""

    def __init__(self, ns='', camera='/cam/image', node=None):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import (DurabilityPolicy, QoSProfile, qos_profile_sensor_data,
                               ReliabilityPolicy)
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String
        from sensor_msgs.msg import CameraInfo
        self.rclpy = rclpy
        self.ns = ns
        self.node = node or rclpy.create_node('ood_test_client')
        self.keep = True
        self.got = {k: {} for k in OUTPUTS}
        self.count = 0
        self.last_heatmap = None
        self.label_info = []
        self.diags = []
        out_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.topics = {key: output_topic(key, ns) for key in OUTPUTS}
        for key, topic in self.topics.items():
            self.node.create_subscription(Image, topic, self._recorder(key), out_qos)
        self.camera_infos = {}
        self.node.create_subscription(
            CameraInfo, output_topic('camera_info', ns),
            lambda m: self.camera_infos.setdefault(
                (m.header.stamp.sec, m.header.stamp.nanosec), m), out_qos)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, output_topic('label_info', ns),
                                      lambda m: self.label_info.append(json.loads(m.data)),
                                      latched)
        self.node.create_subscription(DiagnosticArray, output_topic('diagnostics'),
                                      self._on_diag, 10)
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {
            ('raw', True): self.node.create_publisher(Image, camera, reliable),
            ('raw', False): self.node.create_publisher(Image, camera,
                                                       qos_profile_sensor_data),
            ('compressed', True): self.node.create_publisher(
                CompressedImage, camera + '/compressed', reliable),
            ('compressed', False): self.node.create_publisher(
                CompressedImage, camera + '/compressed', qos_profile_sensor_data),
        }
        info_topic = camera.rsplit('/', 1)[0] + '/camera_info'
        self.info_pub = self.node.create_publisher(CameraInfo, info_topic, reliable)
        self.CameraInfo = CameraInfo
        self.Image, self.CompressedImage = Image, CompressedImage
        self._seq = 0

    def _recorder(self, key):
        def record(msg):
            stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            if key == 'heatmap':
                self.count += 1
                self.last_heatmap = stamp
            if self.keep:
                self.got[key][stamp] = msg
        return record

    def _on_diag(self, msg):
        for status in msg.status:
            if status.name.startswith(self.ns.lstrip('/') + '/ood_node' if self.ns
                                      else 'ood_node'):
                values = {kv.key: kv.value for kv in status.values}
                self.diags.append({'level': int.from_bytes(status.level, 'little')
                                   if isinstance(status.level, bytes) else int(status.level),
                                   'message': status.message, 'values': values,
                                   'name': status.name,
                                   't': time.monotonic()})
        del self.diags[:-20]

    def spin_until(self, cond, timeout):
        """Spin until ``cond()`` is true; False on timeout."""
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                return False
            self.rclpy.spin_once(self.node, timeout_sec=0.02)
        return True

    def header(self, frame_id):
        """Make a fresh header: stamp = now (unique), the given frame_id."""
        from std_msgs.msg import Header
        self._seq += 1
        h = Header(frame_id=frame_id)
        h.stamp = self.node.get_clock().now().to_msg()
        h.stamp.nanosec = (h.stamp.nanosec // 1000) * 1000 + self._seq % 1000
        return h

    def image(self, header, arr, encoding, step=None, data=None, height=None, width=None):
        """Make a sensor_msgs/Image from an array (or explicit fields for bad frames)."""
        msg = self.Image()
        msg.header = header
        msg.height = arr.shape[0] if height is None else height
        msg.width = arr.shape[1] if width is None else width
        msg.encoding = encoding
        row = arr.shape[1] * (arr.shape[2] if arr.ndim == 3 else 1) * arr.itemsize
        msg.step = row if step is None else step
        if data is None:
            if msg.step > row:
                pad = np.zeros((arr.shape[0], msg.step - row), np.uint8)
                data = np.concatenate([arr.reshape(arr.shape[0], row), pad], 1).tobytes()
            else:
                data = arr.tobytes()
        msg.data = data
        return msg

    def compressed(self, header, data, fmt='jpeg'):
        """Make a sensor_msgs/CompressedImage with raw bytes."""
        msg = self.CompressedImage()
        msg.header = header
        msg.format = fmt
        msg.data = data
        return msg

    def publish(self, msg, reliable=True):
        """Publish a frame on the raw or compressed input topic."""
        kind = 'compressed' if isinstance(msg, self.CompressedImage) else 'raw'
        self.pubs[(kind, reliable)].publish(msg)

    def process(self, msg, reliable=True, outputs=OUTPUTS, timeout=4.0, tries=3):
        """Publish ``msg`` until every output with its stamp arrived; the outputs or None."""
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        for _ in range(tries):
            self.publish(msg, reliable)
            if self.spin_until(lambda: all(stamp in self.got[k] for k in outputs), timeout):
                return {k: self.got[k][stamp] for k in outputs}
        return None

    def call(self, srv_type, name, request, timeout=60.0, resend=None):
        """
        Call a service and wait for the response.

        ``resend`` (s): an idempotent request is sent again after this long without a
        response. Right after discovery a server may not yet know the client's reply
        reader, and DDS drops that first response (seen on a loaded 2-core machine).
        """
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f'service {name} not available')
        end = time.monotonic() + timeout
        futures = []
        while time.monotonic() < end and not any(f.done() for f in futures):
            futures.append(client.call_async(request))
            wait = min(resend or timeout, end - time.monotonic())
            self.spin_until(lambda: any(f.done() for f in futures), wait)
        self.node.destroy_client(client)
        done = [f for f in futures if f.done()]
        if not done:
            raise RuntimeError(f'service {name}: no response within {timeout} s')
        return done[0].result()

    def set_parameters(self, **values):
        """Set node parameters one call each; [(successful, reason)]."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        out = []
        for name, value in values.items():
            req = SetParameters.Request()
            req.parameters = [Parameter(name, value=value).to_parameter_msg()]
            res = self.call(SetParameters, f'{self.ns}/ood_node/set_parameters', req,
                            resend=5.0)
            out.append([res.results[0].successful, res.results[0].reason])
        return out

    def lifecycle_state(self):
        """Label of the node's lifecycle state."""
        from lifecycle_msgs.srv import GetState
        return self.call(GetState, f'{self.ns}/ood_node/get_state', GetState.Request(),
                         resend=5.0).current_state.label

    def change_state(self, transition_id, timeout=120.0):
        """Trigger a lifecycle transition (activate loads the model); True on success."""
        from lifecycle_msgs.srv import ChangeState
        req = ChangeState.Request()
        req.transition.id = transition_id
        return bool(self.call(ChangeState, f'{self.ns}/ood_node/change_state', req,
                              timeout).success)

    def get_parameters(self, *names):
        """Read node parameters as ``ros2 param get`` does: {name: value}."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python
        req = GetParameters.Request(names=list(names))
        res = self.call(GetParameters, f'{self.ns}/ood_node/get_parameters', req,
                        resend=5.0)
        return {n: parameter_value_to_python(v) for n, v in zip(names, res.values)}

    def wait_diag(self, pred, timeout=10.0):
        """Return the first diagnostics message from now on that satisfies ``pred``."""
        start = time.monotonic()
        found = []

        def check():
            for d in self.diags:
                if d['t'] >= start and pred(d):
                    found.append(d)
                    return True
            return False
        self.spin_until(check, timeout)
        return found[0] if found else None

    def wait_ready(self, transport, timeout=90.0):
        """Wait until the node subscribed, its outputs matched and label info arrived."""
        pub = self.pubs[(transport, True)]
        subs = [s for s in self.node.subscriptions if s.topic_name in self.topics.values()]
        return self.spin_until(
            lambda: pub.get_subscription_count() > 0 and bool(self.label_info) and
            all(s.get_publisher_count() > 0 for s in subs), timeout)


def _save_outputs(arrays, name, outs):
    for key, msg in outs.items():
        dtype = {'32FC1': np.float32, 'mono16': np.uint16}.get(msg.encoding, np.uint8)
        ch = 3 if msg.encoding == 'bgr8' else 1
        arr = np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width, ch)
        arrays[f'{name}/{key}'] = arr[:, :, 0] if ch == 1 else arr


def _headers(outs):
    return {k: [m.header.frame_id, m.header.stamp.sec, m.header.stamp.nanosec,
                m.encoding, m.step, m.width, m.height, int(m.is_bigendian)]
            for k, m in outs.items()}


def scenario_raw(client, node, spec, result, arrays):
    """Raw transport: encodings, QoS, parameters, bad frames, memory."""
    result['ready'] = client.wait_ready('raw')
    if not result['ready']:
        return
    result['label_info_first'] = client.label_info[-1]
    frames = result['frames'] = {}
    good = [('rgb', 'rgb8', True, None), ('bgr', 'bgr8', True, None),
            ('mono', 'mono8', True, None), ('padded', 'rgb8', True, 5)]
    for i, (name, enc, reliable, pad) in enumerate(good):
        rgb = sample_frame(i)
        arr = {'rgb8': rgb, 'bgr8': rgb[:, :, ::-1].copy(),
               'mono8': rgb[:, :, 0].copy()}[enc]
        step = None if pad is None else arr.shape[1] * 3 + pad
        hdr = client.header(f'cam_{name}')
        outs = client.process(client.image(hdr, arr, enc, step=step), reliable)
        frames[name] = {'seed': i, 'encoding': enc, 'frame_id': hdr.frame_id,
                        'stamp': [hdr.stamp.sec, hdr.stamp.nanosec],
                        'headers': _headers(outs) if outs else None}
        if outs:
            _save_outputs(arrays, name, outs)

    # run-time parameters
    result['param_ok'] = client.set_parameters(segment_threshold=spec['threshold2'],
                                               heatmap_score='moose_mi')
    hdr = client.header('cam_after')
    outs = client.process(client.image(hdr, sample_frame(10), 'rgb8'))
    if outs:
        _save_outputs(arrays, 'after_param', outs)
    result['param_bad'] = client.set_parameters(segment_threshold=1.5, heatmap_score='nope',
                                                backend='onnxruntime')
    client.spin_until(lambda: False, 0.3)
    result['label_info_last'] = client.label_info[-1]
    hdr = client.header('cam_after_bad')
    outs = client.process(client.image(hdr, sample_frame(10), 'rgb8'))
    if outs:
        _save_outputs(arrays, 'after_bad_param', outs)

    # bad frames, each followed by a good one
    rgb = sample_frame(20)
    big = np.zeros((4320, 7680, 3), np.uint8)
    bad = [('encoding', client.image(client.header('b'), rgb[:, :, :2].copy().view(np.uint16),
                                     '16UC1')),
           ('encoding', client.image(client.header('b'), rgb[:, :, 0].copy(), 'bayer_rggb8')),
           ('encoding', client.image(client.header('b'), rgb[:, :, :2].copy(), 'yuv422')),
           ('empty', client.image(client.header('b'), rgb[:0, :0], 'rgb8')),
           ('step', client.image(client.header('b'), rgb, 'rgb8', step=80 * 3 - 3,
                                 data=rgb.tobytes()[:60 * (80 * 3 - 3)])),
           ('truncated', client.image(client.header('b'), rgb, 'rgb8',
                                      data=rgb.tobytes()[:-100])),
           ('too_large', client.image(client.header('b'), big, 'rgb8'))]
    del big
    result['bad_kinds'] = [k for k, _ in bad]
    recovered = 0
    for i, (_, msg) in enumerate(bad):
        client.publish(msg, True)
        client.spin_until(lambda: False, 0.05)
        if client.process(client.image(client.header(f'good_{i}'), rgb, 'rgb8')):
            recovered += 1
    bad.clear()
    result['recovered'] = recovered
    want = {}
    for kind in result['bad_kinds']:
        want[kind] = want.get(kind, 0) + 1
    diag = client.wait_diag(lambda d: all(
        d['values'].get(f'errors_{k}') == str(n) for k, n in want.items()), timeout=10)
    result['diag_after_bad'] = diag or (client.diags[-1] if client.diags else None)

    # memory over many frames: no outputs kept, lock-step
    client.keep = False
    small = [client.image(client.header('m'), sample_frame(30 + i, (64, 64)), 'rgb8')
             for i in range(2)]

    def run(n):
        done = 0
        for i in range(n):
            msg = small[i % 2]
            msg.header = client.header('m')
            target = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            for _ in range(3):
                client.publish(msg, True)
                if client.spin_until(lambda: client.last_heatmap == target, 2.0):
                    done += 1
                    break
        return done
    run(spec['mem_warmup'])
    rss0 = read_rss_kb(node.pid)
    t0 = time.monotonic()
    result['mem_frames'] = run(spec['mem_frames'])
    result['mem_seconds'] = time.monotonic() - t0
    result['rss_kb'] = [rss0, read_rss_kb(node.pid)]
    result['diag_final'] = client.wait_diag(lambda d: True, timeout=5)


def scenario_compressed(client, node, spec, result, arrays):
    """Compressed transport on a lifecycle node: JPEG/PNG, corrupt data, deactivate."""
    import cv2
    result['ready'] = client.wait_ready('compressed')
    if not result['ready']:
        return
    result['state'] = client.lifecycle_state()
    frames = result['frames'] = {}
    inputs = [('jpeg', '.jpg', False), ('png', '.png', True)]
    for i, (name, ext, reliable) in enumerate(inputs):
        rgb = sample_frame(40 + i)
        data = cv2.imencode(ext, rgb[:, :, ::-1])[1].tobytes()
        arrays[f'{name}/input'] = np.frombuffer(data, np.uint8)
        hdr = client.header(f'cam_{name}')
        outs = client.process(client.compressed(hdr, data, ext[1:]), reliable)
        frames[name] = {'frame_id': hdr.frame_id, 'stamp': [hdr.stamp.sec, hdr.stamp.nanosec],
                        'headers': _headers(outs) if outs else None}
        if outs:
            _save_outputs(arrays, name, outs)
    good = cv2.imencode('.jpg', sample_frame(50)[:, :, ::-1])[1].tobytes()
    big = cv2.imencode('.jpg', np.full((4320, 7680, 3), 90, np.uint8))[1].tobytes()
    bad = [('decode', good[:len(good) // 2]), ('too_large', big), ('empty', b''),
           ('decode', bytes(np.random.default_rng(0).integers(0, 256, 999, np.uint8)))]
    result['bad_kinds'] = [k for k, _ in bad]
    counts, recovered = {}, 0
    for i, (kind, data) in enumerate(bad):
        counts[kind] = counts.get(kind, 0) + 1
        n = counts[kind]
        client.publish(client.compressed(client.header('b'), data), True)
        # depth 1: wait until the node counted the bad frame before the next one
        client.wait_diag(lambda d: d['values'].get(f'errors_{kind}') == str(n), timeout=5)
        if client.process(client.compressed(client.header(f'good_{i}'), good)):
            recovered += 1
    result['recovered'] = recovered
    result['diag_after_bad'] = client.wait_diag(lambda d: True, timeout=5)
    # lifecycle: deactivate -> ERROR diagnostics, no output; activate -> output again
    result['deactivate'] = client.change_state(4)       # TRANSITION_DEACTIVATE
    result['state_inactive'] = client.lifecycle_state()
    result['diag_inactive'] = client.wait_diag(lambda d: True, timeout=5)
    result['inactive_output'] = client.process(
        client.compressed(client.header('inactive'), good), timeout=1.0, tries=1) is not None
    result['activate'] = client.change_state(3)         # TRANSITION_ACTIVATE
    client.wait_ready('compressed', timeout=30)
    result['active_output'] = client.process(
        client.compressed(client.header('reactivated'), good)) is not None


LARGE_SIZES = [(480, 640), (720, 1280), (1080, 1920)]


def camera_info_msg(client, header, size):
    """Make a CameraInfo with the given header and (H, W), a plausible pinhole model."""
    info = client.CameraInfo()
    info.header = header
    info.height, info.width = size
    info.distortion_model = 'plumb_bob'
    info.d = [0.1, -0.2, 0.0, 0.0, 0.0]
    f = float(size[1])
    info.k = [f, 0.0, size[1] / 2, 0.0, f, size[0] / 2, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, size[1] / 2, 0.0, 0.0, f, size[0] / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def scenario_multi(clients, nodes, spec, result, arrays):
    """
    Two cameras, two namespaced nodes: /left (plain) and /right (lifecycle, no autostart).

    Left: camera-size frames published once each (reliable and best effort) with their
    camera_info, one frame over max_frame_pixels. Right: configured and activated from
    here, its parameters read back, reset to the bundle values, then shut down by a
    lifecycle transition, after which its process must exit by itself.
    """
    left, right = clients['left'], clients['right']
    # right: externally managed lifecycle node, unconfigured until told otherwise
    result['right_state0'] = right.lifecycle_state()
    result['right_configure'] = right.change_state(1)       # TRANSITION_CONFIGURE
    result['right_state1'] = right.lifecycle_state()
    result['right_activate'] = right.change_state(3)        # TRANSITION_ACTIVATE
    result['right_state2'] = right.lifecycle_state()
    result['ready'] = left.wait_ready('raw') and right.wait_ready('raw')
    if not result['ready']:
        return
    names = ('heatmap_score', 'segment_threshold')
    result['params_effective'] = right.get_parameters(*names)
    result['params_set'] = right.set_parameters(segment_threshold=0.3,
                                                heatmap_score='moose_mi')
    result['params_after_set'] = right.get_parameters(*names)
    result['params_reset'] = right.set_parameters(segment_threshold=0.0, heatmap_score='')
    result['params_after_reset'] = right.get_parameters(*names)
    result['label_info_after_reset'] = right.label_info[-1]

    # camera-size frames to the left node, each published once; a frame to the right
    # camera between them must not show up on the left outputs, nor the left ones there
    frames = result['large'] = []
    for i, size in enumerate(LARGE_SIZES):
        for reliable in (True, False):
            rgb = sample_frame(100 + i, size)
            hdr = left.header(f'left_{size[1]}x{size[0]}_{"rel" if reliable else "be"}')
            left.info_pub.publish(camera_info_msg(left, hdr, size))
            t0 = time.monotonic()
            outs = left.process(left.image(hdr, rgb, 'rgb8'), reliable,
                                timeout=spec['large_timeout'], tries=1)
            stamp = (hdr.stamp.sec, hdr.stamp.nanosec)
            left.spin_until(lambda: stamp in left.camera_infos, 2.0)
            info = left.camera_infos.get(stamp)
            frames.append({'size': list(size), 'reliable': reliable, 'frame_id': hdr.frame_id,
                           'delivered': outs is not None,
                           'seconds': time.monotonic() - t0,
                           'heatmap_hw': [outs['heatmap'].height, outs['heatmap'].width]
                           if outs else None,
                           'camera_info': [info.header.frame_id, info.header.stamp.sec,
                                           info.header.stamp.nanosec, info.height,
                                           info.width, list(info.k)] if info else None,
                           'stamp': list(stamp)})
            if outs and i == 0 and reliable:
                _save_outputs(arrays, 'left_large', {'heatmap': outs['heatmap']})
        hdr = right.header(f'right_{i}')
        outs = right.process(right.image(hdr, sample_frame(200 + i), 'rgb8'))
        result.setdefault('right_frames', []).append(
            [hdr.frame_id, outs is not None and outs['heatmap'].header.frame_id])
    # over max_frame_pixels: must arrive and be counted as too_large
    big = np.zeros((spec['too_large'][0], spec['too_large'][1], 3), np.uint8)
    left.publish(left.image(left.header('left_too_large'), big, 'rgb8'), True)
    del big
    result['diag_left'] = left.wait_diag(
        lambda d: d['values'].get('errors_too_large') == '1', timeout=15)
    result['diag_right'] = right.wait_diag(lambda d: True, timeout=5)
    left.spin_until(lambda: False, 0.5)
    result['left_output_ids'] = sorted({m.header.frame_id for k in left.got
                                        for m in left.got[k].values()})
    result['right_output_ids'] = sorted({m.header.frame_id for k in right.got
                                         for m in right.got[k].values()})
    # lifecycle shutdown from active: the right process ends by itself
    result['right_shutdown'] = right.change_state(7)       # TRANSITION_ACTIVE_SHUTDOWN
    try:
        result['right_exit'] = nodes['right'].proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        result['right_exit'] = 'still running'


def drive(spec_path):
    """Start the node(s), run the scenario named in the spec, stop them, write results."""
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec['out'])
    out.mkdir(parents=True, exist_ok=True)
    cmds = spec.get('cmds') or {'main': spec['cmd']}
    envs = spec.get('envs') or {}
    result, arrays = {'cmd': spec.get('cmd'), 'cmds': cmds}, {}
    nodes = {}
    for name, cmd in cmds.items():
        # a node without a profile in its environment: main() must choose the package's;
        # it gets SIGKILL when this driver dies
        nodes[name] = NodeProcess(cmd, log=out / f'{name}.log',
                                  env=node_env(envs.get(name), unset=DDS_PROFILE_VARS),
                                  parent_death=signal.SIGKILL)
    if spec.get('camera_profile'):      # the camera side, configured as the README says
        for var in DDS_PROFILE_VARS:
            os.environ[var] = spec['camera_profile']
    import rclpy
    rclpy.init()
    if spec['scenario'] == 'multi':
        shared = rclpy.create_node('ood_test_cameras')
        clients = {name: Client(ns=f'/{name}', camera=f'/{name}/camera/image_raw',
                                node=shared) for name in cmds}
    else:
        clients = {'main': Client()}
    try:
        if spec['scenario'] == 'multi':
            scenario_multi(clients, nodes, spec, result, arrays)
        else:
            {'raw': scenario_raw, 'compressed': scenario_compressed}[spec['scenario']](
                clients['main'], nodes['main'], spec, result, arrays)
    except Exception as exc:  # noqa: B902 - report everything to the test
        result['driver_error'] = f'{type(exc).__name__}: {exc}'
    finally:
        alive, codes = {}, {}
        for name, node in nodes.items():
            alive[name] = node.running()
            code = node.stop(((getattr(signal, spec['signal']), 30.0),))
            codes[name] = 'timeout' if code is None else code
        result['node_alive_before_signal'] = alive.get('main', all(alive.values()))
        result['alive_before_signal'] = alive
        result['returncode'] = codes.get('main')
        result['returncodes'] = codes
        next(iter(clients.values())).node.destroy_node()
        rclpy.try_shutdown()
        result['logs'] = {name: (out / f'{name}.log').read_text()[-20000:] for name in cmds}
        result['log'] = result['logs'].get('main', '\n'.join(result['logs'].values()))
        np.savez(out / 'frames.npz', **arrays)
        (out / 'result.json').write_text(json.dumps(result, default=str))
    return 0


if __name__ == '__main__':
    os.environ.setdefault('RCUTILS_LOGGING_BUFFERED_STREAM', '0')
    sys.exit(drive(sys.argv[1]))
