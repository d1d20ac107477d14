"""
Camera images, ROS-free: raw and compressed image fields to RGB, and Image CDR bytes.

One table, :data:`ENCODINGS`, says for every ``sensor_msgs/Image`` encoding the package
reads its pixel layout and how it becomes an RGB camera frame; the live node
(:func:`image_to_rgb`) and the offline bag reader (``data.bags`` with
:func:`array_to_rgb`) both use it, so they accept the same frames. Adding an encoding is
one line there.

CDR: :func:`image_cdr` writes a ``sensor_msgs/Image`` as little-endian CDR (as rmw
writes it, for ``publisher.publish(bytes)`` and bag writing) and :func:`deserialize_image`
reads one back (little- or big-endian CDR), without ROS or rosbags.
"""

from dataclasses import dataclass
import struct
import sys
from typing import NamedTuple, Optional, Tuple

import cv2
import numpy as np

from . import MAX_FRAME_PIXELS
from .image_headers import check_compressed, CompressedFrameError
from ..errors import OodSegError

RGB = -1    # the array is RGB already: no conversion


class Encoding(NamedTuple):
    """Pixel layout of an encoding and its conversion to RGB (None: not a camera frame)."""

    dtype: type
    channels: int
    to_rgb: Optional[int]       # cv2 colour conversion code, or RGB


ENCODINGS = {
    'rgb8': Encoding(np.uint8, 3, RGB),
    'bgr8': Encoding(np.uint8, 3, cv2.COLOR_BGR2RGB),
    'mono8': Encoding(np.uint8, 1, cv2.COLOR_GRAY2RGB),
    'rgba8': Encoding(np.uint8, 4, cv2.COLOR_RGBA2RGB),
    'bgra8': Encoding(np.uint8, 4, cv2.COLOR_BGRA2RGB),
    '8UC1': Encoding(np.uint8, 1, cv2.COLOR_GRAY2RGB),
    '8UC3': Encoding(np.uint8, 3, RGB),            # channel order read as RGB
    'mono16': Encoding(np.uint16, 1, None),          # instance masks
    '16UC1': Encoding(np.uint16, 1, None),
    '32FC1': Encoding(np.float32, 1, None),          # heatmaps
}
FRAME_ENCODINGS = tuple(name for name, enc in ENCODINGS.items() if enc.to_rgb is not None)


class FrameError(OodSegError):
    """A frame that cannot be processed; ``kind`` names the diagnostics counter."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageHeader:
    """The std_msgs/Header of an Image (stamp, frame_id) plus its layout fields."""

    sec: int
    nanosec: int
    frame_id: str
    encoding: str
    height: int
    width: int
    step: int
    is_bigendian: int

    @property
    def stamp_ns(self) -> int:
        """Return the header stamp in nanoseconds since the epoch."""
        return self.sec * 1_000_000_000 + self.nanosec


def _shown(encoding: str) -> str:
    """Show the encoding in a message; a 10 kB string is not echoed."""
    return repr(encoding) if len(encoding) <= 40 else \
        f'{encoding[:40]!r}... ({len(encoding)} characters)'


def encoding_of(encoding: str, frame: bool = False) -> Encoding:
    """Table entry of ``encoding``; ``frame``: it must convert to RGB. Else FrameError."""
    enc = ENCODINGS.get(encoding)
    if enc is None or (frame and enc.to_rgb is None):
        known = FRAME_ENCODINGS if frame else tuple(ENCODINGS)
        raise FrameError('encoding', f'unsupported image encoding {_shown(encoding)} '
                         f'(use {", ".join(known)})')
    return enc


def raw_to_array(encoding: str, height: int, width: int, step: int, data,
                 is_bigendian: int = 0) -> np.ndarray:
    """
    Pixels of raw Image fields as (H, W) or (H, W, C) in the encoding's dtype.

    Rows may be padded (``step`` > width x bytes per pixel); 8-bit data is not copied.
    Raises :class:`FrameError` with kind encoding, empty, step, truncated or data_size.
    """
    enc = encoding_of(encoding)
    if height == 0 or width == 0:
        raise FrameError('empty', f'empty image ({width}x{height})')
    itemsize = np.dtype(enc.dtype).itemsize
    row = width * enc.channels * itemsize
    if step < row:
        raise FrameError('step', f'image step {step} is less than width x bytes per '
                         f'pixel = {row}')
    buf = np.frombuffer(data, np.uint8)
    if buf.size != step * height:
        kind = 'truncated' if buf.size < step * height else 'data_size'
        raise FrameError(kind, f'image data has {buf.size} bytes, step x height = '
                         f'{step * height} ({width}x{height} {encoding})')
    rows = buf.reshape(height, step)[:, :row]
    if itemsize > 1:
        order = '>' if is_bigendian else '<'
        rows = np.ascontiguousarray(rows).view(np.dtype(enc.dtype).newbyteorder(order))
        rows = rows.astype(enc.dtype, copy=False)
    shape = (height, width) if enc.channels == 1 else (height, width, enc.channels)
    return rows.reshape(shape)


def array_to_rgb(array: np.ndarray, encoding: str) -> np.ndarray:
    """Convert an array of ``encoding`` (from :func:`raw_to_array`) to RGB uint8 (H, W, 3)."""
    code = encoding_of(encoding, frame=True).to_rgb
    return array if code == RGB else cv2.cvtColor(array, code)


def image_to_rgb(encoding: str, height: int, width: int, step: int, data,
                 max_pixels: int = MAX_FRAME_PIXELS, is_bigendian: int = 0) -> np.ndarray:
    """
    Convert raw Image fields to an RGB uint8 (height, width, 3) array.

    Raises :class:`FrameError` with kind encoding (not a camera frame encoding), empty,
    too_large (over ``max_pixels``), step, truncated or data_size.
    """
    encoding_of(encoding, frame=True)
    if height * width > max_pixels:
        raise FrameError('too_large', f'image of {width}x{height} exceeds max_frame_pixels '
                         f'= {max_pixels}')
    return array_to_rgb(raw_to_array(encoding, height, width, step, data, is_bigendian),
                        encoding)


def compressed_to_rgb(data, max_pixels: int = MAX_FRAME_PIXELS,
                      fmt: str = '') -> np.ndarray:
    """
    Decode PNG/JPEG/WebP bytes to RGB uint8 (H, W, 3); FrameError on bad input.

    The header is checked first (:func:`ood_seg_ros.imagecodec.image_headers.check_compressed`:
    accepted codec, ``fmt`` = CompressedImage.format, declared size) so nothing
    oversized or of another codec reaches the decoder.
    """
    raw = bytes(data)
    try:
        check_compressed(raw, fmt, max_pixels)
    except CompressedFrameError as exc:
        raise FrameError(exc.kind, str(exc)) from None
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise FrameError('decode', f'cannot decode compressed image ({len(raw)} bytes)')
    if img.shape[0] * img.shape[1] > max_pixels:
        raise FrameError('too_large', f'image of {img.shape[1]}x{img.shape[0]} exceeds '
                         f'max_frame_pixels = {max_pixels}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_cdr(header, array: np.ndarray, encoding: str) -> bytes:
    """
    Serialise a sensor_msgs/Image of a (H, W) or (H, W, C) array to CDR bytes.

    ``header``: anything with ``stamp.sec``, ``stamp.nanosec`` and ``frame_id`` (a
    std_msgs/Header), copied unchanged. Little-endian CDR as rmw writes it: the pixel data
    is copied once (no Python message, no second serialisation). ``step`` = width x bytes
    per pixel, ``is_bigendian`` 0.
    """
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == '>' or (array.dtype.byteorder == '=' and sys.byteorder == 'big'):
        array = array.astype(array.dtype.newbyteorder('<'))
    h, w = array.shape[:2]
    step = w * array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    frame_id = header.frame_id.encode() + b'\0'
    enc = encoding.encode() + b'\0'
    head = bytearray(b'\x00\x01\x00\x00')           # CDR_LE encapsulation
    head += struct.pack('<iII', header.stamp.sec, header.stamp.nanosec, len(frame_id))
    head += frame_id
    head += bytes(-(len(head) - 4) % 4)               # alignment counts after the 4 bytes
    head += struct.pack('<III', h, w, len(enc)) + enc + b'\0'   # ..., is_bigendian = 0
    head += bytes(-(len(head) - 4) % 4)
    head += struct.pack('<II', step, array.nbytes)
    return b''.join((head, memoryview(array).cast('B')))


class _Reader:
    """Sequential CDR reader; alignment counts from the end of the 4-byte encapsulation."""

    def __init__(self, raw: bytes):
        if len(raw) < 4 or raw[0] != 0 or raw[1] not in (0, 1):
            raise OodSegError('not CDR data (bad encapsulation header)')
        self.raw, self.pos = raw, 4
        self.order = '<' if raw[1] == 1 else '>'

    def take(self, fmt: str, size: int):
        self.pos += -(self.pos - 4) % size
        value = struct.unpack_from(self.order + fmt, self.raw, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take('I', 4)
        text = self.raw[self.pos:self.pos + n]
        if n == 0 or len(text) != n or text[-1] != 0:
            raise OodSegError(f'bad CDR string of {n} bytes at offset {self.pos}')
        self.pos += n
        return text[:-1].decode()


def deserialize_image(raw: bytes) -> Tuple[ImageHeader, np.ndarray]:
    """
    Read the CDR bytes of a sensor_msgs/Image: (ImageHeader, data as uint8 array).

    The data array is a view of ``raw`` (no copy); OodSegError on malformed bytes.
    """
    try:
        r = _Reader(raw)
        sec, nanosec = r.take('i', 4), r.take('I', 4)
        frame_id = r.string()
        height, width = r.take('I', 4), r.take('I', 4)
        encoding = r.string()
        is_bigendian, step, size = r.take('B', 1), r.take('I', 4), r.take('I', 4)
    except (struct.error, UnicodeDecodeError) as exc:
        raise OodSegError(f'truncated or malformed Image CDR: {exc}') from None
    if r.pos + size > len(raw):
        raise OodSegError(f'Image CDR declares {size} data bytes, {len(raw) - r.pos} follow')
    data = np.frombuffer(raw, np.uint8, size, r.pos)
    return ImageHeader(sec, nanosec, frame_id, encoding, height, width, step,
                       is_bigendian), data
