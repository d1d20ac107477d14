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


# The node's outputs by key (the keys tools and tests use), and the image outputs a
# consumer records (``color`` is published only while subscribed).
OUTPUTS = {'heatmap': HEATMAP, 'mask': MASK, 'semantic': SEMANTIC, 'color': COLOR,
           'segments': SEGMENTS, 'label_info': LABEL_INFO, 'camera_info': OUT_CAMERA_INFO,
           'diagnostics': DIAGNOSTICS}
IMAGE_OUTPUTS = ('heatmap', 'mask', 'semantic')


def output_topic(key: str, namespace: str = '/') -> str:
    """Return the absolute name of the node output ``key`` for a node in ``namespace``."""
    return absolute(OUTPUTS[key], namespace or '/')
