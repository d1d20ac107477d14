"""
Estimate of the camera frames the node never received, for ``/diagnostics``.

Lost frames leave no trace in the subscription (best effort, depth 1): the estimate
comes from the header stamps and from message sizes. :class:`InputLossMonitor` keeps the
camera's period, the median of the recent stamp differences that are not gaps (within
``QUARTILE_SPAN`` times their lower quartile, so loss does not stretch the period), and
counts a difference of more than ``GAP_PERIODS`` periods as ``round(gap / period) - 1``
lost frames. Jitter of a fifth of the period gives no false loss; when most frames are
lost the period may come out as a multiple and the count low, yet still a WARN.
Stamps going backwards (a bag loop, a restarted camera) restart the estimate; zero
stamps are ignored; a difference over ``max_gap_s`` is a pause, not loss. Frames
larger than the transport limit the node knows (:func:`transport_limit_bytes`) are
counted too: they travel as fragmented UDP and most of their kind are lost.
"""

from collections import deque
import os
import re
from typing import Dict, Optional, Tuple

import numpy as np

GAP_PERIODS = 1.5           # a stamp difference over this many periods is a gap
QUARTILE_SPAN = 1.75       # differences within this times their lower quartile: no gaps
WARN_FRACTION = 0.05        # estimated loss over a window that makes diagnostics WARN
PERIOD_HISTORY = 64         # stamp differences the period is estimated from
MIN_DIFFS = 8               # differences needed before gaps are counted
FASTDDS_DEFAULT_SEGMENT = 512 * 1024    # Fast DDS default shared-memory segment, bytes
PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')
SHM_DIR = '/dev/shm'        # where Fast DDS puts its segments on Linux
HINT = ('input frames are being lost ({what}). Large images need the Fast DDS profile '
        'config/fastdds.xml in the camera driver too: export '
        'FASTRTPS_DEFAULT_PROFILES_FILE=$(ros2 pkg prefix ood_seg_ros)/share/ood_seg_ros/'
        'config/fastdds.xml in the driver environment (README section "Large messages (DDS)")')


def transport_limit_bytes(environ=None) -> Optional[int]:
    """
    Return the largest message the node's DDS transport carries whole, or None (unknown).

    Fast DDS (``RMW_IMPLEMENTATION`` unset or ``rmw_fastrtps_*``): the ``segment_size``
    of the profile named by ``FASTRTPS_DEFAULT_PROFILES_FILE`` /
    ``FASTDDS_DEFAULT_PROFILES_FILE`` (the package's ``config/fastdds.xml`` unless the
    user chose one; None when the profile names no segment size), else the default
    512 KiB segment. Other RMWs: None.
    """
    environ = os.environ if environ is None else environ
    rmw = environ.get('RMW_IMPLEMENTATION', '')
    if rmw and not rmw.startswith('rmw_fastrtps'):
        return None
    profile = next((environ[v] for v in PROFILE_VARS if environ.get(v)), None)
    if profile is None:
        return FASTDDS_DEFAULT_SEGMENT
    try:
        with open(profile, encoding='utf-8') as f:
            sizes = re.findall(r'<segment_size>\s*(\d+)\s*</segment_size>', f.read())
    except OSError:
        return None
    return max(int(s) for s in sizes) if sizes else None


def shm_shortfall(segment_bytes: Optional[int], shm_dir: str = SHM_DIR) -> Optional[str]:
    """
    Return one line when ``shm_dir`` has less room than one DDS segment, else None.

    ``segment_bytes``: the participant's shared-memory segment (:func:`transport_limit_bytes`;
    None: unknown, no check). Every participant of the node's Fast DDS profile takes one
    in ``/dev/shm``; where it does not fit, large messages cannot go over shared memory.
    Segments of killed processes stay there until removed, and containers start with a
    small ``/dev/shm`` (64 MiB in Docker).
    """
    if not segment_bytes:
        return None
    try:
        stat = os.statvfs(shm_dir)
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    if free >= segment_bytes:
        return None
    return (f'{shm_dir} has {free / 2 ** 20:.0f} MiB free, less than one '
            f'{segment_bytes / 2 ** 20:.0f} MiB Fast DDS shared-memory segment: large '
            f'messages may not fit in shared memory and be lost or late over UDP. '
            f'`fastdds shm clean` removes the segments killed processes left; a container '
            f'needs a larger {shm_dir} (docker run --shm-size=512m)')


class InputLossMonitor:
    """Lost-frame estimate of one input stream from header stamps and message sizes."""

    def __init__(self, limit_bytes: Optional[int] = None, max_gap_s: float = 5.0):
        """Watch a stream; ``limit_bytes`` is the transport limit (None: unknown)."""
        self.limit_bytes, self.max_gap_ns = limit_bytes, int(max_gap_s * 1e9)
        self.received = self.lost = self.oversize = 0
        self._mark = (0, 0, 0)      # received, lost, oversize at the last window()
        self._restart()

    def _restart(self) -> None:
        self._last_ns: Optional[int] = None
        self._diffs = deque(maxlen=PERIOD_HISTORY)
        self.period_ns: Optional[float] = None

    def _estimate_period(self) -> Optional[float]:
        if len(self._diffs) < MIN_DIFFS:
            return None
        d = np.asarray(self._diffs, dtype=np.float64)
        return float(np.median(d[d <= QUARTILE_SPAN * np.percentile(d, 25)]))

    def _lost_in(self, diff_ns: int) -> int:
        if diff_ns <= GAP_PERIODS * self.period_ns:
            return 0
        return max(int(round(diff_ns / self.period_ns)) - 1, 0)

    def update(self, stamp_ns: int, nbytes: int) -> int:
        """Count one received frame; return the frames estimated lost before it."""
        self.received += 1
        if self.limit_bytes is not None and nbytes > self.limit_bytes:
            self.oversize += 1
        if stamp_ns <= 0:
            return 0
        last, self._last_ns = self._last_ns, stamp_ns
        if last is None or stamp_ns == last:
            return 0
        if stamp_ns < last:         # a bag loop or a restarted camera
            self._restart()
            self._last_ns = stamp_ns
            return 0
        diff = stamp_ns - last
        if diff > self.max_gap_ns:  # a pause of the camera, not loss
            return 0
        self._diffs.append(diff)
        known = self.period_ns is not None
        self.period_ns = self._estimate_period()
        if self.period_ns is None:
            return 0
        # when the period first becomes known, the differences seen so far count too
        lost = sum(self._lost_in(d) for d in ((diff,) if known else self._diffs))
        self.lost += lost
        return lost

    def window(self) -> Tuple[Dict[str, str], Optional[str]]:
        """
        Return the diagnostics values and a WARN message (or None) since the last call.

        WARN when the estimated loss over the window exceeds ``WARN_FRACTION`` of the
        frames sent, or when frames above the transport limit arrived.
        """
        recv, lost, over = (self.received - self._mark[0], self.lost - self._mark[1],
                            self.oversize - self._mark[2])
        self._mark = (self.received, self.lost, self.oversize)
        fraction = lost / (lost + recv) if lost + recv else 0.0
        total = self.lost / (self.lost + self.received) if self.lost + self.received else 0.0
        values = {
            'input_lost_estimate': str(self.lost),
            'input_loss_fraction': f'{total:.3f}',
            'input_loss_fraction_window': f'{fraction:.3f}',
            'input_period_ms': ('nan' if self.period_ns is None
                                else f'{self.period_ns / 1e6:.3f}'),
            'input_over_transport_limit': str(self.oversize),
            'input_transport_limit_bytes': ('unknown' if self.limit_bytes is None
                                            else str(self.limit_bytes)),
        }
        problems = []
        if fraction > WARN_FRACTION:
            problems.append(f'about {100 * fraction:.0f} % of input frames lost '
                            f'(header stamp gaps)')
        if over:
            problems.append(f'{over} input frames over the {self.limit_bytes} B '
                            f'transport limit')
        return values, '; '.join(problems) or None
