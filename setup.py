"""Packaging of the ament_python package ood_seg_ros."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'ood_seg_ros'
# what ood_seg_ros/tools/ imports beyond the node's dependencies (requirements.txt too)
TOOLS_EXTRA = ['scikit-learn>=1.4', 'matplotlib>=3.8', 'tqdm>=4.66', 'rosbags>=0.10']

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.xml')),
        (f'share/{PACKAGE}/models/camvid_lite0', glob('models/camvid_lite0/*.*')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='ood_seg_ros developers',
    maintainer_email='ood-seg-ros@example.org',
    description='Out-of-distribution segmentation for ROS 2: DeepLabv3+ with MOoSe probes '
                'and PGN scores, segment meta classification.',
    license='Apache-2.0',
    # the node needs none of these (package.xml: what it imports); the offline tools
    # (ood-seg) need 'tools'; fleet-eval runs on Ray, every other command works without it
    extras_require={'test': ['pytest'], 'fleet': ['ray>=2.9'],
                    'tools': TOOLS_EXTRA},
    entry_points={
        'console_scripts': [
            'ood-seg = ood_seg_ros.cli:main',
            'ood_node = ood_seg_ros.ros.main:main',
        ],
    },
)
