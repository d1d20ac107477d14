"""
The live node's frame conversion and the offline bag path accept the same encodings.

Every encoding of the one table goes through ``image_to_rgb`` (what the node runs on a
received Image) and through a bag written and read by ``data.bags`` plus
``array_to_rgb`` (what ``ood-seg bag-eval`` runs); both must give the same RGB, equal to
a reference written here with numpy, or both must refuse the encoding.
"""

import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.imagecodec import image_codec as codec
from ood_seg_ros.tools.data import bags
import pytest

H, W = 5, 7
# expected RGB from the encoding's pixels, numpy only
REFERENCE = {
    'rgb8': lambda a: a,
    '8UC3': lambda a: a,
    'bgr8': lambda a: a[..., ::-1],
    'rgba8': lambda a: a[..., :3],
    'bgra8': lambda a: a[..., 2::-1],
    'mono8': lambda a: np.stack([a] * 3, -1),
    '8UC1': lambda a: np.stack([a] * 3, -1),
}
NOT_FRAMES = ('mono16', '16UC1', '32FC1')


def _pixels(encoding, rng):
    enc = codec.ENCODINGS[encoding]
    shape = (H, W) if enc.channels == 1 else (H, W, enc.channels)
    if enc.dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(enc.dtype).max, shape, dtype=enc.dtype)


def _live(encoding, arr, pad=3):
    """Convert as the node does: raw Image fields with padded rows."""
    rows = arr.reshape(H, -1).view(np.uint8)
    data = np.concatenate([rows, np.full((H, pad), 7, np.uint8)], 1)
    return codec.image_to_rgb(encoding, H, W, rows.shape[1] + pad, data.tobytes())


def _offline(encoding, arr, tmp_path):
    """Write an Image to a bag, read it back and convert it as bag-eval does."""
    path = tmp_path / encoding
    with bags.BagWriter(path) as writer:
        writer.add_topic('/cam', bags.IMAGE_TYPE)
        writer.write('/cam', 1, bags.image_cdr(arr, encoding, 1, 'cam'))
    (msg,) = list(bags.read_image_bag(path))
    assert msg.header.encoding == encoding and np.array_equal(msg.image, arr)
    return codec.array_to_rgb(msg.image, msg.header.encoding)


def test_the_table_is_the_reference_set():
    assert set(codec.FRAME_ENCODINGS) == set(REFERENCE)
    assert set(codec.ENCODINGS) == set(REFERENCE) | set(NOT_FRAMES)


@pytest.mark.parametrize('encoding', sorted(REFERENCE))
def test_live_and_offline_give_the_same_rgb(encoding, tmp_path):
    arr = _pixels(encoding, np.random.default_rng(len(encoding)))
    live = _live(encoding, arr)
    offline = _offline(encoding, arr, tmp_path)
    expected = REFERENCE[encoding](arr)
    assert live.dtype == offline.dtype == np.uint8 and live.shape == (H, W, 3)
    assert np.array_equal(live, expected) and np.array_equal(offline, expected)


@pytest.mark.parametrize('encoding', NOT_FRAMES)
def test_live_and_offline_refuse_the_same_encodings(encoding, tmp_path):
    arr = _pixels(encoding, np.random.default_rng(1))
    with pytest.raises(codec.FrameError) as live:
        _live(encoding, arr)
    with pytest.raises(codec.FrameError) as offline:
        _offline(encoding, arr, tmp_path)
    assert live.value.kind == offline.value.kind == 'encoding'


@pytest.mark.parametrize('little_endian', [True, False])
def test_deserialise_matches_rosbags(little_endian):
    ts = bags.typestore()
    Image = ts.types[bags.IMAGE_TYPE]
    Header = ts.types['std_msgs/msg/Header']
    Time = ts.types['builtin_interfaces/msg/Time']
    rng = np.random.default_rng(2)
    for frame_id, enc, step, n in [('', 'rgb8', 9, 18), ('ab', 'mono16', 8, 16),
                                   ('camera_optical', '32FC1', 12, 24)]:
        msg = Image(header=Header(stamp=Time(sec=-3, nanosec=999_999_999), frame_id=frame_id),
                    height=2, width=3, encoding=enc,
                    is_bigendian=int(not little_endian), step=step,
                    data=rng.integers(0, 255, n, dtype=np.uint8))
        raw = bytes(ts.serialize_cdr(msg, bags.IMAGE_TYPE, little_endian=little_endian))
        header, data = codec.deserialize_image(raw)
        assert (header.sec, header.nanosec, header.frame_id, header.encoding, header.height,
                header.width, header.step, header.is_bigendian) == (
            -3, 999_999_999, frame_id, enc, 2, 3, step, int(not little_endian))
        assert np.array_equal(data, msg.data)
    with pytest.raises(OodSegError):
        codec.deserialize_image(raw[:30])


def test_big_endian_16_bit_pixels_are_read():
    arr = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 300
    data = arr.astype('>u2').tobytes()
    got = codec.raw_to_array('mono16', H, W, 2 * W, data, is_bigendian=1)
    assert got.dtype == np.uint16 and np.array_equal(got, arr)
