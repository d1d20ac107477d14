"""
rosbag2 files of image streams, written and read with ``rosbags`` (pure Python, no ROS).

Bags are written with metadata version 8 (ROS 2 Humble's reader cannot parse version 9's
QoS field; Jazzy reads 4 to 9), MCAP (default) or sqlite3 storage. Images are
``sensor_msgs/msg/Image`` messages with ``step = width * bytes per pixel`` and
``is_bigendian = 0``, in the encodings of :data:`ood_seg_ros.imagecodec.image_codec.ENCODINGS`
(serialised and read by that module); an optional ground-truth OoD mask stream (mono8,
0 in-distribution, 1 OoD, 255 void) carries the same header stamps as the frames it
labels.

Reading accepts a bag folder (``metadata.yaml`` + storage files) or a bare ``.mcap`` /
``.db3`` file; any unreadable, missing or corrupt input raises :class:`OodSegError` naming
the path.
"""

import functools
import os
from pathlib import Path
import shutil
import struct
import time
from types import SimpleNamespace
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np

from ...errors import OodSegError
from ...imagecodec.image_codec import deserialize_image, encoding_of, ImageHeader, raw_to_array
from ...imagecodec.image_codec import image_cdr as _image_cdr

IMAGE_TYPE = 'sensor_msgs/msg/Image'
DIAGNOSTICS_TYPE = 'diagnostic_msgs/msg/DiagnosticArray'
DEFAULT_IMAGE_TOPIC = '/camera/image'
DEFAULT_GT_TOPIC = '/camera/ood_gt'
BAG_VERSION = 8
STORAGES = ('mcap', 'sqlite3')


@functools.lru_cache(maxsize=1)
def typestore():
    """Return the cached rosbags type store of ROS 2 Jazzy (Image is as in Humble)."""
    from rosbags.typesys import get_typestore, Stores
    return get_typestore(Stores.ROS2_JAZZY)


def ns_to_stamp(stamp_ns: int) -> tuple:
    """Split nanoseconds since the epoch into (sec, nanosec)."""
    stamp_ns = int(stamp_ns)
    return stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000


class BagMessage(NamedTuple):
    """
    One image from a bag: ``stamp_ns`` is the bag (log) time, ``image`` a numpy array.

    ``image`` keeps the channel order of ``header.encoding``: (H, W) for one channel, else
    (H, W, C); dtype uint8, uint16 (mono16 / 16UC1) or float32 (32FC1).
    """

    topic: str
    stamp_ns: int
    header: ImageHeader
    image: np.ndarray


# ---------------------------------------------------------------------------------------
# Message conversion
# ---------------------------------------------------------------------------------------

def image_cdr(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> bytes:
    """CDR bytes of a ``sensor_msgs/msg/Image`` of an array (bag writing; stamp in ns)."""
    enc = encoding_of(encoding)
    image = np.asarray(image)
    shape_ok = (image.ndim == 2 and enc.channels == 1) or (
        image.ndim == 3 and image.shape[2] == enc.channels)
    if image.dtype != enc.dtype or not shape_ok:
        raise OodSegError(f'image of dtype {image.dtype} and shape {image.shape} does not '
                          f'fit encoding {encoding} ({np.dtype(enc.dtype).name}, '
                          f'{enc.channels} channel(s))')
    sec, nanosec = ns_to_stamp(stamp_ns)
    header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec),
                             frame_id=frame_id)
    return _image_cdr(header, image, encoding)


def decode_image_cdr(raw: bytes, source: str = 'message') -> tuple:
    """Deserialise CDR bytes of an Image: (ImageHeader, numpy array as BagMessage.image)."""
    try:
        h, data = deserialize_image(raw)
        return h, raw_to_array(h.encoding, h.height, h.width, h.step, data, h.is_bigendian)
    except OodSegError as exc:
        raise OodSegError(f'{source}: cannot read {IMAGE_TYPE}: {exc}') from None


def raw_header_stamp_ns(raw: bytes) -> int:
    """Return the header stamp (ns) of any CDR message that starts with a std_msgs/Header."""
    if len(raw) < 12:
        raise OodSegError(f'CDR message of {len(raw)} bytes is too short for a header')
    order = '<' if raw[1] & 1 else '>'     # encapsulation 0x0001 CDR_LE, 0x0000 CDR_BE
    sec, nanosec = struct.unpack_from(order + 'iI', raw, 4)
    return sec * 1_000_000_000 + nanosec


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

class BagWriter:
    """A rosbag2 writer (metadata version 8) for raw CDR messages; a context manager."""

    def __init__(self, path, storage: str = 'mcap', atomic: bool = False):
        """
        Prepare writing bag folder ``path`` (must not exist) with ``storage``.

        ``atomic``: write to a hidden temporary folder next to ``path`` and rename it to
        ``path`` only when the bag is complete; on an error the partial bag is removed,
        so a rerun does not fail with "exists already". The bag is written as
        ``.<name>.partial-<pid>/<name>``, so its data file already has the final name
        (``<name>.mcap``, as ``ros2 bag record`` names it).
        """
        if storage not in STORAGES:
            raise OodSegError(f'unknown bag storage {storage!r}; use mcap or sqlite3')
        self.final_path = Path(path)
        self.atomic = bool(atomic)
        self.scratch = self.final_path.with_name(
            f'.{self.final_path.name}.partial-{os.getpid()}') if atomic else None
        self.path = self.scratch / self.final_path.name if atomic else self.final_path
        self.storage = storage
        self._writer = None
        self._connections = {}

    def __enter__(self) -> 'BagWriter':
        """Open the bag for writing."""
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
        if self.final_path.exists():
            raise OodSegError(f'output bag {self.final_path} exists already; remove it or '
                              f'choose another path')
        if self.atomic:
            if self.scratch.exists():
                shutil.rmtree(self.scratch)     # left by a killed run of this pid
            self.scratch.mkdir(parents=True)
        plugin = StoragePlugin.MCAP if self.storage == 'mcap' else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=plugin)
            self._writer.open()
        except (WriterError, OSError) as exc:
            if self.atomic:
                shutil.rmtree(self.scratch, ignore_errors=True)
            raise OodSegError(f'cannot create bag {self.final_path}: {exc}') from None
        return self

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Register ``topic`` with message type ``msgtype`` (e.g. sensor_msgs/msg/Image)."""
        if topic in self._connections:
            return
        ts = typestore()
        if msgtype not in ts.types:
            raise OodSegError(f'message type {msgtype} is unknown to the rosbags type store')
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=ts)

    def has_topic(self, topic: str) -> bool:
        """Return whether ``topic`` was registered."""
        return topic in self._connections

    def write(self, topic: str, timestamp_ns: int, raw: bytes) -> None:
        """Write one serialised message at log time ``timestamp_ns``."""
        try:
            self._writer.write(self._connections[topic], int(timestamp_ns), raw)
        except KeyError:
            raise OodSegError(f'topic {topic} was not added to bag {self.path}') from None
        except OSError as exc:
            raise OodSegError(f'cannot write bag {self.path}: {exc}') from None

    def __exit__(self, *exc_info) -> None:
        """Close the bag and write metadata.yaml."""
        if self._writer is not None and self._writer.storage is not None:
            try:
                self._writer.close()
            except OSError as exc:
                if exc_info[0] is None:
                    if self.atomic:
                        shutil.rmtree(self.scratch, ignore_errors=True)
                    raise OodSegError(f'cannot finish bag {self.final_path}: {exc}') from None
        if not self.atomic:
            return
        if exc_info[0] is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            return
        try:
            os.rename(self.path, self.final_path)
            self.scratch.rmdir()
        except OSError as exc:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise OodSegError(f'cannot move the finished bag to {self.final_path}: '
                              f'{exc.strerror}') from None


def write_image_bag(out_dir, frames: Iterable, rate_hz: float,
                    topic: str = DEFAULT_IMAGE_TOPIC, frame_id: str = 'camera',
                    gt_masks: Optional[Iterable] = None, gt_topic: str = DEFAULT_GT_TOPIC,
                    storage: str = 'mcap', start_ns: Optional[int] = None) -> dict:
    """
    Write frames (and optional GT masks) as a rosbag2 bag; return a summary dict.

    frames: iterable of (name, rgb uint8 (H, W, 3)), written as rgb8 on ``topic``;
    frame i is stamped ``start_ns + round(i * 1e9 / rate_hz)`` (header and log time;
    ``start_ns`` defaults to now). gt_masks: iterable of uint8 (H, W) masks with values
    0 / 1 / 255, one per frame, written as mono8 on ``gt_topic`` with the frame's stamp.
    """
    rate_hz = float(rate_hz)
    if not rate_hz > 0:
        raise OodSegError(f'rate must be > 0 Hz, got {rate_hz}')
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    out_dir = Path(out_dir)
    gt_iter = iter(gt_masks) if gt_masks is not None else None
    n = 0
    names = []
    size = None
    with BagWriter(out_dir, storage, atomic=True) as bag:
        bag.add_topic(topic, IMAGE_TYPE)
        if gt_iter is not None:
            bag.add_topic(gt_topic, IMAGE_TYPE)
        for n_done, (name, rgb) in enumerate(frames):
            rgb = np.asarray(rgb)
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or not rgb.size:
                raise OodSegError(f'frame {name}: expected non-empty uint8 (H, W, 3) RGB, '
                                  f'got {rgb.dtype} {rgb.shape}')
            if size is not None and rgb.shape != size:
                raise OodSegError(f'frame {name} is {rgb.shape[1]}x{rgb.shape[0]}, earlier '
                                  f'frames are {size[1]}x{size[0]} (WxH)')
            size = rgb.shape
            stamp = start_ns + int(round(n_done * 1e9 / rate_hz))
            bag.write(topic, stamp, image_cdr(rgb, 'rgb8', stamp, frame_id))
            if gt_iter is not None:
                mask = next(gt_iter, None)
                if mask is None:
                    raise OodSegError(f'no GT mask for frame {name}: fewer masks than frames')
                mask = np.asarray(mask)
                if mask.shape != rgb.shape[:2] or mask.dtype != np.uint8:
                    raise OodSegError(f'GT mask of frame {name} is {mask.dtype} {mask.shape}, '
                                      f'expected uint8 {rgb.shape[:2]}')
                bad = (mask != 0) & (mask != 1) & (mask != 255)
                if bad.any():
                    raise OodSegError(f'GT mask of frame {name} has values '
                                      f'{np.unique(mask[bad])[:5].tolist()}, expected 0/1/255')
                bag.write(gt_topic, stamp, image_cdr(mask, 'mono8', stamp, frame_id))
            names.append(str(name))
            n = n_done + 1
    total = sum(p.stat().st_size for p in out_dir.rglob('*') if p.is_file())
    return {'path': str(out_dir), 'storage': storage, 'version': BAG_VERSION,
            'n_frames': n, 'topic': topic, 'gt_topic': gt_topic if gt_iter else None,
            'width': size[1] if size else 0, 'height': size[0] if size else 0,
            'rate_hz': rate_hz, 'start_ns': start_ns, 'size_bytes': total,
            'first': names[0] if names else None, 'last': names[-1] if names else None}


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

def _open_reader(path):
    from rosbags.rosbag2 import Reader
    path = Path(path)
    if not path.exists():
        raise OodSegError(f'bag {path} does not exist')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: B902 - rosbags raises many kinds on corrupt files
        raise OodSegError(f'{path} is not a readable rosbag2 bag (folder with '
                          f'metadata.yaml, .mcap or .db3): {exc}') from None
    return reader


def bag_info(path) -> dict:
    """Return {'topics': {name: {'type', 'count'}}, 'message_count', 'start_ns', ...}."""
    reader = _open_reader(path)
    try:
        topics = {}
        for c in reader.connections:
            t = topics.setdefault(c.topic, {'type': c.msgtype, 'count': 0})
            t['count'] += int(c.msgcount)
        return {'path': str(path), 'topics': topics, 'message_count': reader.message_count,
                'start_ns': reader.start_time, 'duration_ns': reader.duration}
    except Exception as exc:  # noqa: B902
        raise OodSegError(f'cannot read the metadata of bag {path}: {exc}') from None
    finally:
        reader.close()


def iter_raw_messages(path, topics=None, bad: Optional[list] = None) -> Iterator[tuple]:
    """
    Yield (topic, msgtype, log time ns, raw CDR bytes) in log-time order.

    Corrupt storage (a truncated file) raises OodSegError, or, with a ``bad`` list, is
    recorded there (``{'topic': None, 'reason': ...}``) and ends the iteration: the
    messages read so far are kept.
    """
    reader = _open_reader(path)
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if not conns:
            return
        it = reader.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: B902 - truncated / corrupt storage
                if bad is None:
                    raise OodSegError(f'bag {path} is corrupt: {exc}') from None
                bad.append({'topic': None, 'stamp_ns': None,
                            'reason': f'corrupt storage, reading stopped: {exc}'[:300]})
                return
            conn, stamp, raw = item
            yield conn.topic, conn.msgtype, int(stamp), bytes(raw)
    finally:
        reader.close()


def read_image_bag(path, topics=None, bad: Optional[list] = None) -> Iterator[BagMessage]:
    """
    Yield every sensor_msgs/Image of a bag as BagMessage, in log-time order.

    ``topics`` optionally restricts the topics; messages of other types are skipped.
    With a ``bad`` list, a message that does not decode (corrupt CDR) or a requested
    topic of another type is recorded there and skipped instead of raising.
    """
    for topic, msgtype, stamp, raw in iter_raw_messages(path, topics, bad):
        if msgtype != IMAGE_TYPE:
            if bad is not None and topics is not None:
                bad.append({'topic': topic, 'stamp_ns': stamp,
                            'reason': f'{msgtype} is not {IMAGE_TYPE}'})
            continue
        try:
            header, image = decode_image_cdr(raw, f'bag {path}, topic {topic}')
        except OodSegError as exc:
            if bad is None:
                raise
            bad.append({'topic': topic, 'stamp_ns': stamp, 'reason': str(exc)[:300]})
            continue
        yield BagMessage(topic, stamp, header, image)


def image_topics(path) -> list:
    """Return the sorted names of the bag's sensor_msgs/Image topics."""
    return sorted(t for t, v in bag_info(path)['topics'].items() if v['type'] == IMAGE_TYPE)
