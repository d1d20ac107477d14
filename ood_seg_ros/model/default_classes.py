"""
The classes of a bundle that names none: SegNet's 11 CamVid classes.

Bundles written before bundles owned their classes carry no ``class_names``; the node
reads them with these. The ``camvid`` dataset kind (:mod:`ood_seg_ros.tools.data.camvid`)
takes its names and colours from here, so that they are written once and the node needs
no dataset code.
"""

CAMVID_CLASSES = (
    'Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car',
    'Pedestrian', 'Bicyclist')
DEFAULT_CLASS_NAMES = CAMVID_CLASSES     # of a bundle that names none
# SegNet's CamVid colours (RGB) of the 11 classes
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128),
                  (60, 40, 222), (128, 128, 0), (192, 128, 128), (64, 64, 128),
                  (64, 0, 128), (64, 64, 0), (0, 128, 192))
