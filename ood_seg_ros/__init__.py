"""
ood_seg_ros: out-of-distribution segmentation for ROS 2 camera streams.

The core (model, scores, segments, meta classifier, metrics, pipeline) is ROS-free;
``ros/`` is the thin rclpy layer on top.
"""

import os
import sys

__version__ = '0.1.0'

# Torch's OpenMP threads wait passively (sleep) between parallel regions instead of
# spinning: on a CPU shared with other processes spinning threads make the multi-threaded
# torch backend many times slower than one thread (README, "Speed on a shared CPU").
# OpenMP reads this once, when torch is imported, so it is set here, before any module of
# the package imports torch; a value set by the user wins.
TORCH_IMPORTED_FIRST = 'torch' in sys.modules and 'OMP_WAIT_POLICY' not in os.environ
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
