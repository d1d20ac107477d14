"""
Topic names of ``ood_node``, defined once.

Inputs and outputs are relative names, resolved in the node's namespace (a node under
``/left`` publishes ``/left/ood/heatmap``); :func:`absolute` gives the name in a
namespace (root by default), as tools that talk to the node from outside use it.
``/diagnostics`` is global, as in every ROS node.
"""

IMAGE = 'image'
COMPRESSED_IMAGE = 'image/compressed'
CAMERA_INFO = 'camera_info'

HEATMAP = 'ood/heatmap'
MASK = 'ood/segments/mask'
SEMANTIC = 'ood/semantic'
COLOR = 'ood/heatmap/color'
SEGMENTS = 'ood/segments'
LABEL_INFO = 'ood/label_info'
OUT_CAMERA_INFO = 'ood/camera_info'
DIAGNOSTICS = '/diagnostics'


def absolute(topic: str, namespace: str = '/') -> str:
    """Return ``topic`` resolved in ``namespace`` ('ood/heatmap' -> '/ood/heatmap')."""
    if topic.startswith('/'):
        return topic
    return '/' + '/'.join(p for p in (namespace.strip('/'), topic) if p)
