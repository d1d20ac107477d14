"""
Every encoding the node rejects is counted as ``encoding``, whatever the frame size.

Sizes here stay below 512 KiB; frames above that depend on the Fast DDS profile of
issue 11 (large messages) and are tested there once it is merged.
"""

import numpy as np
import pytest

codec = pytest.importorskip('ood_seg_ros.imagecodec.image_codec')

ENCODINGS = ['32FC1', '16UC1', 'bayer_rggb8', 'bayer_bggr16', 'yuv422', 'yuv422_yuy2',
             'mono16', 'x' * 10240, '']


@pytest.mark.parametrize('encoding', ENCODINGS, ids=lambda e: e[:12] or 'empty')
@pytest.mark.parametrize('size', [(1, 1), (60, 80), (300, 400)])      # up to 480 kB
def test_unsupported_encoding_is_counted_as_encoding(encoding, size):
    h, w = size
    data = bytes(h * w * 4)
    with pytest.raises(codec.FrameError) as err:
        codec.image_to_rgb(encoding, h, w, w * 4, data)
    assert err.value.kind == 'encoding'
    assert len(str(err.value)) < 200          # a 10 kB encoding string is not echoed


def test_supported_encodings_still_convert():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(codec.image_to_rgb('rgb8', 2, 3, 9, rgb.tobytes()), rgb)
    assert np.array_equal(codec.image_to_rgb('bgr8', 2, 3, 9, rgb[:, :, ::-1].tobytes()), rgb)
