"""
Header checks of compressed camera frames before anything is decoded.

OpenCV's ``imdecode`` decodes every format it knows (WebP, TIFF, OpenEXR, PxM, ...) and
allocates the full image first: a 10 kB WebP declaring 16383 x 16383 pixels took 4.3 s
and 2 GB RSS. So only the formats whose header is read here are accepted, PNG, JPEG and
WebP, and the declared size is checked against the pixel limit before decoding. The
``format`` field of ``sensor_msgs/CompressedImage`` (``jpeg``, ``png``,
``bgr8; jpeg compressed bgr8``, ...) is honoured: a payload whose signature is another
format than the one declared is refused, and so is ``compressedDepth``.

ROS-free; the node turns :class:`CompressedFrameError` into its per-kind counters.
"""

from typing import Optional, Tuple

from . import MAX_FRAME_PIXELS
from ..errors import OodSegError

ACCEPTED = ('jpeg', 'png', 'webp')
_ALIASES = {'jpg': 'jpeg', 'jpeg': 'jpeg', 'png': 'png', 'webp': 'webp'}
_OTHER_SIGNATURES = ((b'GIF8', 'gif'), (b'BM', 'bmp'), (b'II*\0', 'tiff'), (b'MM\0*', 'tiff'),
                     (b'v/1\x01', 'openexr'), (b'\0\0\0\x0cjP', 'jpeg2000'),
                     (b'\xff\x4f\xff\x51', 'jpeg2000'), (b'#?RADIANCE', 'hdr'),
                     (b'P1', 'pnm'), (b'P2', 'pnm'), (b'P3', 'pnm'), (b'P4', 'pnm'),
                     (b'P5', 'pnm'), (b'P6', 'pnm'), (b'PF', 'pfm'), (b'Pf', 'pfm'))


class CompressedFrameError(OodSegError):
    """A compressed frame refused before decoding; ``kind`` names the counter."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def signature(data: bytes) -> Optional[str]:
    """Format named by the first bytes: jpeg, png, webp, another known one, or None."""
    if data[:8] == b'\x89PNG\r\n\x1a\n':
        return 'png'
    if data[:3] == b'\xff\xd8\xff':
        return 'jpeg'
    if data[:4] == b'RIFF' and data[8:12] == b'WEBP':
        return 'webp'
    if data[4:12] in (b'ftypavif', b'ftypheic', b'ftypmif1'):
        return 'heif'
    for magic, name in _OTHER_SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def declared_format(fmt: str) -> Optional[str]:
    """
    Codec named by ``CompressedImage.format``; None when empty (then the signature rules).

    ``compressedDepth`` and codecs not in :data:`ACCEPTED` raise CompressedFrameError.
    """
    text = (fmt or '').strip().lower()
    if not text:
        return None
    if 'compresseddepth' in text:
        raise CompressedFrameError('format', f'compressed depth images are not supported '
                                             f'(format {fmt[:60]!r})')
    words = text.replace(';', ' ').replace(',', ' ').split()
    names = {_ALIASES[w] for w in words if w in _ALIASES}
    if len(names) == 1:
        return names.pop()
    raise CompressedFrameError('format', f'unsupported CompressedImage format {fmt[:60]!r} '
                                         f'(accepted: {", ".join(ACCEPTED)})')


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], 'big')
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return (int.from_bytes(data[i + 7:i + 9], 'big'),
                    int.from_bytes(data[i + 5:i + 7], 'big'))
        i += 2 + length
    return None


def _webp_size(data: bytes) -> Optional[Tuple[int, int]]:
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b'VP8 ' and data[23:26] == b'\x9d\x01\x2a':
        return (int.from_bytes(data[26:28], 'little') & 0x3FFF,
                int.from_bytes(data[28:30], 'little') & 0x3FFF)
    if chunk == b'VP8L' and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], 'little')
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b'VP8X':
        return (int.from_bytes(data[24:27], 'little') + 1,
                int.from_bytes(data[27:30], 'little') + 1)
    return None


def compressed_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from a PNG, JPEG or WebP header without decoding; None if unknown."""
    kind = signature(data)
    if kind == 'png' and len(data) >= 24 and data[12:16] == b'IHDR':
        return int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')
    if kind == 'jpeg':
        return _jpeg_size(data)
    if kind == 'webp':
        return _webp_size(data)
    return None


def check_compressed(data: bytes, fmt: str = '', max_pixels: int = MAX_FRAME_PIXELS
                     ) -> Tuple[str, Tuple[int, int]]:
    """
    Return (codec, (width, height)) of a payload that is safe to decode; else raise.

    Kinds: ``empty``; ``format`` (a known but unaccepted codec, or the signature
    contradicts ``fmt``); ``decode`` (unrecognised bytes, or an unreadable header);
    ``too_large`` (declared size over ``max_pixels``, or zero).
    """
    if not data:
        raise CompressedFrameError('empty', 'empty compressed image')
    declared = declared_format(fmt)
    kind = signature(data)
    if kind is None:
        raise CompressedFrameError('decode', f'cannot decode compressed image ({len(data)} '
                                             f'bytes): no PNG, JPEG or WebP signature')
    if kind not in ACCEPTED:
        raise CompressedFrameError('format', f'compressed image is {kind}, not accepted '
                                             f'(accepted: {", ".join(ACCEPTED)})')
    if declared is not None and declared != kind:
        raise CompressedFrameError('format', f'compressed image declared as {fmt[:60]!r} '
                                             f'but its data is {kind}')
    size = compressed_size(data)
    if size is None:
        raise CompressedFrameError('decode', f'cannot read the {kind} header '
                                             f'({len(data)} bytes)')
    w, h = size
    if w == 0 or h == 0:
        raise CompressedFrameError('empty', f'compressed {kind} image of {w}x{h}')
    if w * h > max_pixels:
        raise CompressedFrameError('too_large', f'compressed image of {w}x{h} exceeds '
                                                f'max_frame_pixels = {max_pixels}')
    return kind, size
