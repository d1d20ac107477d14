"""
Start ood_node: ``ros2 launch ood_seg_ros ood.launch.py image_topic:=/camera/image_raw``.

Launch arguments:
- ``params_file``: node parameters (default: the package's ``config/ood.yaml``);
- ``image_topic``: camera topic remapped to the node's ``image`` (and
  ``<image_topic>/compressed`` to ``image/compressed``);
- ``model``, ``backend``, ``input_transport``: override the parameters file when not
  empty (model = ``model_path``, a bundle folder);
- ``use_sim_time``: true when replaying a bag with ``--clock``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'ood_seg_ros'
# launch argument -> node parameter, set only when the argument is not empty
OVERRIDES = {'model': 'model_path', 'backend': 'backend',
             'input_transport': 'input_transport'}


def _node(context):
    """Build the Node action from the evaluated launch arguments."""
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {param: arg(name) for name, param in OVERRIDES.items() if arg(name)}
    overrides['use_sim_time'] = arg('use_sim_time').lower() in ('true', '1', 'yes')
    topic = arg('image_topic')
    return [Node(
        package=PACKAGE,
        executable='ood_node',
        name='ood_node',
        output='screen',
        emulate_tty=True,
        parameters=[arg('params_file'), overrides],
        remappings=[('image', topic), ('image/compressed', topic + '/compressed')],
    )]


def generate_launch_description():
    """Launch arguments and the ood_node action."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), 'config', 'ood.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML file with the ood_node parameters'),
        DeclareLaunchArgument('image_topic', default_value='/camera/image_raw',
                              description='input image topic (compressed: '
                                          '<image_topic>/compressed)'),
        DeclareLaunchArgument('model', default_value='',
                              description='model bundle folder (empty: from params_file)'),
        DeclareLaunchArgument('backend', default_value='',
                              description='auto, torch, onnxruntime or tensorrt '
                                          '(empty: from params_file)'),
        DeclareLaunchArgument('input_transport', default_value='',
                              description='raw or compressed (empty: from params_file)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use the /clock topic (bag replay)'),
        OpaqueFunction(function=_node),
    ])
