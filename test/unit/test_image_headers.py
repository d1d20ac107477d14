"""
Compressed frames: the header of every accepted codec is checked before decoding.

Decompression bombs (tiny files declaring huge images) of every accepted codec are refused
from the header alone; other codecs OpenCV would decode are refused; the declared
``CompressedImage.format`` must agree with the data. Sizes are checked against the
encoder's own output (OpenCV), not against this module.
"""

import struct

import cv2
import numpy as np
from ood_seg_ros.imagecodec.image_headers import check_compressed, compressed_size, \
    CompressedFrameError, declared_format, signature
import pytest


def _encode(ext, w=80, h=60, quality=None):
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)
    flags = [] if quality is None else [cv2.IMWRITE_WEBP_QUALITY, quality]
    ok, buf = cv2.imencode(ext, img[:, :, 0] if ext == '.pgm' else img, flags)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize('ext, quality', [('.png', None), ('.jpg', None), ('.webp', 80),
                                          ('.webp', 101)])
def test_header_sizes_match_the_encoder(ext, quality):
    for w, h in ((80, 60), (333, 17)):
        data = _encode(ext, w, h, quality)
        assert compressed_size(data) == (w, h), ext
        codec, size = check_compressed(data)
        assert size == (w, h) and codec == {'.jpg': 'jpeg'}.get(ext, ext[1:])


def _webp_bomb(w=16383, h=16383):
    """Build a VP8X WebP header declaring a w x h canvas (a few bytes, as the 10 kB attack)."""
    body = b'VP8X' + struct.pack('<I', 10) + b'\0\0\0\0' + (w - 1).to_bytes(3, 'little') + \
        (h - 1).to_bytes(3, 'little') + bytes(10000)
    return b'RIFF' + struct.pack('<I', len(body) + 4) + b'WEBP' + body


def _png_bomb():
    data = bytearray(_encode('.png'))
    data[16:24] = struct.pack('>II', 100000, 100000)
    return bytes(data)


def _lossless_webp_bomb():
    data = bytearray(_encode('.webp', quality=101))
    assert data[12:16] == b'VP8L'
    bits = 0x3FFF | (0x3FFF << 14)
    data[21:25] = (bits | (int.from_bytes(data[21:25], 'little') & ~((1 << 28) - 1))
                   ).to_bytes(4, 'little')
    return bytes(data)


@pytest.mark.parametrize('make', [_webp_bomb, _png_bomb, _lossless_webp_bomb])
def test_bombs_are_refused_from_the_header(make):
    with pytest.raises(CompressedFrameError, match='exceeds max_frame_pixels') as err:
        check_compressed(make(), max_pixels=4096 * 4096)
    assert err.value.kind == 'too_large'


@pytest.mark.parametrize('ext', ['.bmp', '.tiff', '.ppm', '.pgm', '.jp2', '.hdr'])
def test_codecs_without_a_header_check_are_refused(ext):
    try:
        data = _encode(ext)
    except cv2.error:
        pytest.skip(f'OpenCV cannot write {ext} here')
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(CompressedFrameError) as err:
        check_compressed(data)
    assert err.value.kind == 'format' and signature(data) not in ('png', 'jpeg', 'webp')


def test_declared_format_is_honoured():
    png, jpg = _encode('.png'), _encode('.jpg')
    assert declared_format('') is None
    assert declared_format('bgr8; jpeg compressed bgr8') == 'jpeg'
    assert declared_format('rgb8; compressed png') == 'png' and declared_format('JPG') == 'jpeg'
    check_compressed(jpg, 'jpeg')
    check_compressed(png, 'rgb8; compressed png')
    for data, fmt in ((png, 'jpeg'), (jpg, 'png'), (jpg, 'tiff'),
                      (png, '16UC1; compressedDepth png'), (jpg, 'x' * 10000)):
        with pytest.raises(CompressedFrameError) as err:
            check_compressed(data, fmt)
        assert err.value.kind == 'format' and len(str(err.value)) < 300


def test_garbage_empty_and_unreadable_headers():
    for data, kind in ((b'', 'empty'), (b'abc' * 50, 'decode'),
                       (b'\xff\xd8\xff' + bytes(5), 'decode'),
                       (b'RIFF\0\0\0\0WEBPVP8 ' + bytes(20), 'decode')):
        with pytest.raises(CompressedFrameError) as err:
            check_compressed(data)
        assert err.value.kind == kind, data[:12]


def test_node_conversion_refuses_a_webp_bomb_without_decoding():
    codec = pytest.importorskip('ood_seg_ros.imagecodec.image_codec')
    with pytest.raises(codec.FrameError) as err:
        codec.compressed_to_rgb(_webp_bomb(), max_pixels=4096 * 4096, fmt='webp')
    assert err.value.kind == 'too_large'
    rgb = codec.compressed_to_rgb(_encode('.webp', quality=101), fmt='webp')
    assert rgb.shape == (60, 80, 3)
