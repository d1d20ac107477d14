"""
Subscriptions of ``ood_node``: the camera image (raw or compressed) and camera_info.

``image`` (``sensor_msgs/Image``) or, with ``input_transport: compressed``,
``image/compressed`` (``sensor_msgs/CompressedImage``): QoS KEEP_LAST ``qos_depth``
with ``qos_reliability`` (default best effort, depth 1: matches reliable and
best-effort publishers and always processes the newest frame). Frames are converted by
:mod:`ood_seg_ros.imagecodec.image_codec`. ``camera_info`` (beside the image, remapped with
it) gets a deeper best-effort queue so none is dropped while a frame is processed.
"""

from typing import Callable

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..imagecodec import topics
from ..imagecodec.image_codec import compressed_to_rgb, image_to_rgb

RELIABILITY = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
               'reliable': ReliabilityPolicy.RELIABLE}
INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)
# Subscription callbacks receive the message info (publication sequence numbers) where
# rclpy supports it; otherwise dropped frames are not counted.
_WITH_INFO = hasattr(Subscription, 'CallbackType')


class Inputs:
    """The image and camera_info subscriptions of one node."""

    def __init__(self, node, cfg: dict, on_frame: Callable, on_camera_info: Callable):
        """Subscribe; ``on_frame(msg, info, convert)`` gets each image and its converter."""
        self.node, self.max_pixels = node, cfg['max_frame_pixels']
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg['qos_depth'],
                         reliability=RELIABILITY[cfg['qos_reliability']],
                         durability=DurabilityPolicy.VOLATILE)
        if cfg['input_transport'] == 'compressed':
            msg_type, topic, convert = CompressedImage, topics.COMPRESSED_IMAGE, self.compressed
        else:
            msg_type, topic, convert = Image, topics.IMAGE, self.raw
        if _WITH_INFO:
            def callback(msg, info):
                on_frame(msg, info, convert)
        else:
            def callback(msg):
                on_frame(msg, None, convert)
        self.image = node.create_subscription(msg_type, topic, callback, qos)
        self.camera_info = node.create_subscription(CameraInfo, topics.CAMERA_INFO,
                                                    on_camera_info, INFO_QOS)
        node.get_logger().info(f'subscribed to {self.image.topic_name} '
                               f'({cfg["qos_reliability"]}, depth {cfg["qos_depth"]}) and '
                               f'{self.camera_info.topic_name}')

    def raw(self, msg: Image) -> np.ndarray:
        """RGB frame of a raw Image; FrameError on bad input."""
        return image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                            self.max_pixels, msg.is_bigendian)

    def compressed(self, msg: CompressedImage) -> np.ndarray:
        """RGB frame of a CompressedImage; FrameError on bad input."""
        return compressed_to_rgb(msg.data, self.max_pixels, msg.format)

    def destroy(self) -> None:
        """Destroy both subscriptions."""
        self.node.destroy_subscription(self.image)
        self.node.destroy_subscription(self.camera_info)
