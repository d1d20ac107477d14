"""
ood_seg_ros: out-of-distribution segmentation for ROS 2 camera streams.

The core (model, scores, segments, meta classifier, metrics, pipeline) is ROS-free;
``node.py`` is the thin rclpy layer on top.
"""

__version__ = '0.1.0'
