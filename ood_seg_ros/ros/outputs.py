"""
Publishers of ``ood_node`` and the messages they carry.

Every output is a relative name (:mod:`ood_seg_ros.imagecodec.topics`), RELIABLE, KEEP_LAST 1,
and carries the input header unchanged; an output without subscribers is not computed
or sent; images are serialised straight to CDR (:func:`image_cdr`):

- ``ood/heatmap`` 32FC1 in [0, 1] at input size; ``ood/semantic`` mono8 class ids;
- ``ood/segments/mask`` mono16 ids of the kept segments (0 = none);
- ``ood/camera_info``: the input camera's CameraInfo, unchanged;
- ``ood/segments`` ``vision_msgs/Detection2DArray``: one Detection2D per kept segment,
  ``id`` = its value in the mask, hypothesis ``class_id`` 'ood' with ``score`` = the
  meta classifier's P(true OoD), bbox in pixels (centre of the end-exclusive box
  (x0 + x1) / 2, size x1 - x0);
- ``ood/heatmap/color`` bgr8 overlay (:func:`ood_seg_ros.viz.overlay`, frame size);
- ``ood/label_info`` TRANSIENT_LOCAL: ``vision_msgs/LabelInfo`` (semantic class ids and
  names, threshold = segment threshold). Without vision_msgs the same topic carries a
  ``std_msgs/String`` with the JSON of :func:`label_info_json` and ``ood/segments`` is
  not published.
"""

import json
from typing import Dict, Optional

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from ..imagecodec import topics
from ..imagecodec.image_codec import image_cdr
from ..viz import overlay

OUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
IMAGE_TOPICS = {key: topics.OUTPUTS[key] for key in topics.IMAGE_OUTPUTS + ('color',)}


def load_vision_msgs() -> Optional[dict]:
    """Import the vision_msgs classes the node uses; None when the package is missing."""
    try:    # optional ROS package: the image outputs work without it
        from vision_msgs.msg import (Detection2D, Detection2DArray, LabelInfo,
                                     ObjectHypothesisWithPose, VisionClass)
    except ImportError:
        return None
    return {'Detection2D': Detection2D, 'Detection2DArray': Detection2DArray,
            'LabelInfo': LabelInfo, 'ObjectHypothesisWithPose': ObjectHypothesisWithPose,
            'VisionClass': VisionClass}


def detections_from_segments(header, segments, detection_array_cls, detection_cls,
                             hypothesis_cls):
    """
    vision_msgs Detection2DArray of the kept segments (message classes as arguments).

    One Detection2D per kept segment: ``id`` = str(mask value), one hypothesis
    (class_id 'ood', score = meta classifier P(true OoD)), bbox centre and size in
    pixels of the end-exclusive box (x0, y0, x1, y1).
    """
    array = detection_array_cls()
    array.header = header
    for seg in segments:
        if not seg.kept:
            continue
        det = detection_cls()
        det.header = header
        det.id = str(seg.id)
        x0, y0, x1, y1 = seg.bbox
        det.bbox.center.position.x = (x0 + x1) / 2.0
        det.bbox.center.position.y = (y0 + y1) / 2.0
        det.bbox.center.theta = 0.0
        det.bbox.size_x = float(x1 - x0)
        det.bbox.size_y = float(y1 - y0)
        hyp = hypothesis_cls()
        hyp.hypothesis.class_id = 'ood'
        hyp.hypothesis.score = float(seg.meta_score)
        det.results.append(hyp)
        array.detections.append(det)
    return array


def label_info_json(class_names, threshold: float, score: str) -> str:
    """Class map as JSON (the ood/label_info payload when vision_msgs is missing)."""
    return json.dumps({'class_map': {str(i): n for i, n in enumerate(class_names)},
                       'threshold': float(threshold), 'heatmap_score': score,
                       'segment_class_id': 'ood'})


class Outputs:
    """The node's output publishers (plain or lifecycle) and what they publish."""

    def __init__(self, node, lifecycle: bool, vision: Optional[dict]):
        """Create every output publisher on ``node``; ``vision``: load_vision_msgs()."""
        self.node, self.lifecycle, self.vision = node, lifecycle, vision
        make = node.create_lifecycle_publisher if lifecycle else node.create_publisher
        self.pubs: Dict[str, object] = {key: make(Image, topic, OUT_QOS)
                                        for key, topic in IMAGE_TOPICS.items()}
        self.pubs['camera_info'] = make(CameraInfo, topics.OUT_CAMERA_INFO, OUT_QOS)
        if vision is not None:
            self.pubs['segments'] = make(vision['Detection2DArray'], topics.SEGMENTS,
                                         OUT_QOS)
            self.pubs['label_info'] = make(vision['LabelInfo'], topics.LABEL_INFO,
                                           LATCHED_QOS)
        else:
            node.get_logger().warning(
                'vision_msgs is not installed: ood/segments is not published and '
                'ood/label_info carries a std_msgs/String JSON; install '
                'ros-<distro>-vision-msgs for Detection2DArray and LabelInfo')
            self.pubs['label_info'] = make(String, topics.LABEL_INFO, LATCHED_QOS)

    def destroy(self) -> None:
        """Destroy every publisher."""
        for pub in self.pubs.values():
            if self.lifecycle:
                self.node.destroy_lifecycle_publisher(pub)
            else:
                self.node.destroy_publisher(pub)
        self.pubs = {}

    def _wanted(self, key: str) -> bool:
        pub = self.pubs.get(key)
        return pub is not None and pub.get_subscription_count() > 0

    def camera_info(self, msg: CameraInfo) -> None:
        """Republish the camera's CameraInfo unchanged (header kept) on ood/camera_info."""
        if self._wanted('camera_info'):
            self.pubs['camera_info'].publish(msg)

    def result(self, header, frame, res, publish_color: bool) -> None:
        """Publish a FrameResult with the input ``header``, only what is subscribed."""
        pubs = self.pubs
        if self._wanted('heatmap'):
            pubs['heatmap'].publish(image_cdr(header, res.heatmap, '32FC1'))
        if self._wanted('mask'):
            pubs['mask'].publish(image_cdr(header, res.instances, 'mono16'))
        if self._wanted('semantic'):
            pubs['semantic'].publish(image_cdr(header, res.semantic, 'mono8'))
        if self._wanted('segments'):
            v = self.vision
            pubs['segments'].publish(detections_from_segments(
                header, res.segments, v['Detection2DArray'], v['Detection2D'],
                v['ObjectHypothesisWithPose']))
        if publish_color and self._wanted('color'):
            boxes = [s.bbox for s in res.segments if s.kept]
            pubs['color'].publish(image_cdr(header, overlay(frame, res.heatmap, boxes),
                                            'bgr8'))

    def label_info(self, pipeline, stamp) -> None:
        """Publish the class map and threshold of ``pipeline`` (latched)."""
        pub = self.pubs.get('label_info')
        if pub is None or pipeline is None:
            return
        p = pipeline
        if self.vision is not None:
            msg = self.vision['LabelInfo']()
            msg.header.stamp = stamp
            for i, name in enumerate(p.class_names):
                vc = self.vision['VisionClass']()
                vc.class_id = i
                vc.class_name = name
                msg.class_map.append(vc)
            msg.threshold = float(p.threshold)
        else:
            msg = String(data=label_info_json(p.class_names, p.threshold, p.score_name))
        pub.publish(msg)
