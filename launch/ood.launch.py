"""
Start ood_node: ``ros2 launch ood_seg_ros ood.launch.py image_topic:=/camera/image_raw``.

Launch arguments:
- ``params_file``: node parameters (default: the package's ``config/ood.yaml``);
- ``image_topic``: camera topic remapped to the node's ``image`` (and
  ``<image_topic>/compressed`` to ``image/compressed``); a relative name resolves in
  ``namespace``;
- ``camera_info_topic``: remapped to the node's ``camera_info`` (empty: beside the image,
  ``<folder of image_topic>/camera_info``, e.g. ``/camera/camera_info``);
- ``namespace``: the node's namespace; its outputs follow (``/left/ood/heatmap``);
- ``lifecycle``: true starts a launch_ros ``LifecycleNode`` (parameter ``lifecycle``);
  ``autostart:=false`` then leaves it unconfigured for a lifecycle manager;
- ``exit_on_error``: true makes the node exit (code 1) when the model cannot be loaded;
  params-file default false: the node stays up with ERROR diagnostics;
- ``autostart``, ``exit_on_error``: empty keeps the params file's value;
- ``model``, ``backend``, ``input_transport``: override the parameters file when not
  empty (model = ``model_path``, a bundle folder);
- ``use_sim_time``: true when replaying a bag with ``--clock``.

The node is required: when it exits the launch shuts down, and when it exits with a
non-zero code (1: no model with ``exit_on_error``, 2: bad parameters) ``ros2 launch``
returns non-zero too (an error raised in the exit handler makes the launch service
return 1), so CI sees the failure.

Fast DDS: unless ``FASTRTPS_DEFAULT_PROFILES_FILE`` or ``FASTDDS_DEFAULT_PROFILES_FILE``
is set, the node runs with the package's ``config/fastdds.xml`` (32 MiB shared-memory
segment: camera-size frames are not lost). Give the camera driver the same profile.
"""

import os
import posixpath

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

PACKAGE = 'ood_seg_ros'
# launch argument -> node parameter, set only when the argument is not empty
OVERRIDES = {'model': 'model_path', 'backend': 'backend',
             'input_transport': 'input_transport'}
DDS_PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')


def _true(value):
    return value.strip().lower() in ('true', '1', 'yes')


def camera_info_topic(image_topic):
    """Return the camera_info topic beside ``image_topic`` (ROS camera convention)."""
    return posixpath.join(posixpath.dirname(image_topic.rstrip('/')), 'camera_info')


def on_node_exit(event, context):
    """
    Exit handler of the required node: shut the launch down; fail it on a non-zero code.

    An exception raised while launch handles an event is logged ("Caught exception in
    launch") and makes ``LaunchService.run()`` and so ``ros2 launch`` return 1.
    """
    if event.returncode:
        raise RuntimeError(f'ood_node exited with code {event.returncode} (see its log '
                           f'above)')
    return [Shutdown(reason='ood_node exited')]


def _node(context):
    """Build the Node (or LifecycleNode) action from the evaluated launch arguments."""
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {param: arg(name) for name, param in OVERRIDES.items() if arg(name)}
    overrides['use_sim_time'] = _true(arg('use_sim_time'))
    # lifecycle decides the action type, so it always sets the parameter
    overrides['lifecycle'] = lifecycle = _true(arg('lifecycle'))
    for name in ('autostart', 'exit_on_error'):
        if arg(name):
            overrides[name] = _true(arg(name))
    topic = arg('image_topic')
    info = arg('camera_info_topic') or camera_info_topic(topic)
    kwargs = {
        'package': PACKAGE,
        'executable': 'ood_node',
        'name': 'ood_node',
        'namespace': arg('namespace'),
        'output': 'screen',
        'emulate_tty': True,
        'parameters': [arg('params_file'), overrides],
        'remappings': [('image', topic), ('image/compressed', topic + '/compressed'),
                       ('camera_info', info)],
    }
    if not any(os.environ.get(var) for var in DDS_PROFILE_VARS):
        profile = os.path.join(get_package_share_directory(PACKAGE), 'config', 'fastdds.xml')
        kwargs['additional_env'] = {var: profile for var in DDS_PROFILE_VARS}
    kwargs['on_exit'] = on_node_exit
    return [(LifecycleNode if lifecycle else Node)(**kwargs)]


# name, default value (None: the package's config/ood.yaml), description
ARGUMENTS = (
    ('params_file', None, 'YAML file with the ood_node parameters'),
    ('image_topic', '/camera/image_raw', 'input image topic (compressed: '
                                         '<image_topic>/compressed)'),
    ('camera_info_topic', '', 'camera info topic (empty: camera_info beside image_topic)'),
    ('namespace', '', 'node namespace; outputs are <namespace>/ood/...'),
    ('model', '', 'model bundle folder (empty: from params_file)'),
    ('backend', '', 'auto, torch, onnxruntime or tensorrt (empty: from params_file)'),
    ('input_transport', '', 'raw or compressed (empty: from params_file)'),
    ('use_sim_time', 'false', 'use the /clock topic (bag replay)'),
    ('lifecycle', 'false', 'true: a managed lifecycle node (LifecycleNode)'),
    ('autostart', '', 'lifecycle node: true configures and activates it at start, false '
                      'waits for a lifecycle manager (empty: from params_file, default true)'),
    ('exit_on_error', '', 'true: exit (and shut the launch down) when the model cannot be '
                          'loaded (empty: from params_file, default false)'),
)


def generate_launch_description():
    """Launch arguments and the ood_node action."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), 'config', 'ood.yaml')
    return LaunchDescription([
        *(DeclareLaunchArgument(name, description=text,
                                default_value=default_params if value is None else value)
          for name, value, text in ARGUMENTS),
        OpaqueFunction(function=_node),
    ])
