"""
Frame counters of ``ood_node`` and its ``/diagnostics`` status.

:class:`FrameStats` counts received, processed, dropped and bad frames, keeps the last
processing times and latencies, decides which bad-frame lines are logged (rate-limited
per kind) and builds the DiagnosticStatus: ERROR while no model is loaded or when
network outputs were NaN/inf, WARN over the processing budget or after bad frames.
"""

from collections import deque
import time
from typing import Callable, Dict, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from rclpy.clock import Clock, ClockType

from ..imagecodec import topics

STAT_WINDOW = 256
# publication sequence numbers that mean "not supported by this RMW"
SEQ_UNSUPPORTED = (None, 0, 2 ** 64 - 1)


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float('nan')


def _fmt(x: float) -> str:
    return 'nan' if x != x else f'{x:.3f}'


class FrameStats:
    """Counters, time windows and the rate-limited bad-frame log of one node."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Start counting from zero."""
        self.received = self.processed = self.dropped = 0
        self.errors: Dict[str, int] = {}
        self._errors_at_last = self._nonfinite_at_last = 0
        self._proc_ms = deque(maxlen=STAT_WINDOW)
        self._pipe_ms = deque(maxlen=STAT_WINDOW)
        self._overhead_ms = deque(maxlen=STAT_WINDOW)
        self._latency_ms = deque(maxlen=STAT_WINDOW)
        self._last_seq = None
        self._rate_mark = (time.monotonic(), 0, 0)
        self._log_marks: Dict[str, Tuple[float, int]] = {}

    def count_input(self, info) -> None:
        """Count a received frame; gaps in the publisher's sequence numbers are drops."""
        self.received += 1
        seq = info.get('publication_sequence_number') if isinstance(info, dict) else None
        if seq in SEQ_UNSUPPORTED:
            return
        if self._last_seq is not None and seq > self._last_seq + 1:
            self.dropped += seq - self._last_seq - 1
        self._last_seq = seq    # a smaller number: another or a restarted publisher

    def bad_frame(self, kind: str, message: str, throttle_sec: float) -> Optional[str]:
        """Count a bad frame; return the line to log, per kind at most once per throttle."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        now = time.monotonic()
        mark = self._log_marks.get(kind)
        if mark is not None and now - mark[0] < throttle_sec:
            return None
        # the errors_<kind> count at this line tells how many were not logged since the last
        skipped = self.errors[kind] - 1 - (mark[1] if mark is not None else 0)
        more = f' ({skipped} more since the last report)' if skipped > 0 else ''
        self._log_marks[kind] = (now, self.errors[kind])
        return f'bad input frame ({kind}): {message}{more}'

    def add_processed(self, total_ms: float, pipeline_ms: float,
                      latency_ms: Optional[float]) -> None:
        """Record a processed frame: total and pipeline time, latency (None: no stamp)."""
        self.processed += 1
        self._proc_ms.append(total_ms)
        self._pipe_ms.append(pipeline_ms)
        self._overhead_ms.append(total_ms - pipeline_ms)
        if latency_ms is not None:
            self._latency_ms.append(latency_ms)

    def status(self, name: str, pipeline, model_error: str, cfg: dict) -> DiagnosticStatus:
        """Return the status of the period since the last call: level, message, figures."""
        now = time.monotonic()
        t_last, recv_last, proc_last = self._rate_mark
        dt = max(now - t_last, 1e-6)
        in_rate = (self.received - recv_last) / dt
        out_rate = (self.processed - proc_last) / dt
        self._rate_mark = (now, self.received, self.processed)
        n_err = sum(self.errors.values())
        new_err = n_err - self._errors_at_last
        self._errors_at_last = n_err
        p50 = _percentile(self._proc_ms, 50)
        p95 = _percentile(self._proc_ms, 95)
        budget = cfg['processing_budget_ms']
        p = pipeline
        desc = p.backend.describe() if p is not None else {}
        values = {
            'backend': desc.get('backend', ''), 'device': desc.get('device', ''),
            'precision': desc.get('precision', ''),
            'heatmap_score': p.score_name if p is not None else '',
            'segment_threshold': f'{p.threshold:g}' if p is not None else '',
            'input_transport': cfg['input_transport'],
            'input_rate_hz': _fmt(in_rate), 'output_rate_hz': _fmt(out_rate),
            'processing_p50_ms': _fmt(p50), 'processing_p95_ms': _fmt(p95),
            'pipeline_p50_ms': _fmt(_percentile(self._pipe_ms, 50)),
            'ros_overhead_p50_ms': _fmt(_percentile(self._overhead_ms, 50)),
            'ros_overhead_p95_ms': _fmt(_percentile(self._overhead_ms, 95)),
            'latency_p50_ms': _fmt(_percentile(self._latency_ms, 50)),
            'latency_p95_ms': _fmt(_percentile(self._latency_ms, 95)),
            'processing_budget_ms': _fmt(budget),
            'frames_received': str(self.received), 'frames_processed': str(self.processed),
            'dropped_frames': str(self.dropped), 'errors_total': str(n_err),
        }
        for kind in sorted(self.errors):
            values[f'errors_{kind}'] = str(self.errors[kind])
        values['meta_classifier'] = ('' if p is None else 'on' if p.meta is not None
                                     else 'OFF (no meta.json): every segment kept')
        nonfinite = self.errors.get('nonfinite', 0) - self._nonfinite_at_last
        self._nonfinite_at_last = self.errors.get('nonfinite', 0)
        if p is None:
            level, message = DiagnosticStatus.ERROR, f'no model: {model_error}'
        elif nonfinite:
            level = DiagnosticStatus.ERROR
            message = f'{nonfinite} frames with NaN/inf network outputs in the last period'
        elif p95 == p95 and p95 > budget:
            level = DiagnosticStatus.WARN
            message = f'processing p95 {p95:.1f} ms over budget {budget:g} ms'
        elif new_err:
            level, message = DiagnosticStatus.WARN, f'{new_err} bad frames in the last period'
        else:
            level, message = DiagnosticStatus.OK, 'running'
        status = DiagnosticStatus(level=level, name=f'{name}: OoD segmentation',
                                  message=message, hardware_id=values['device'] or 'none')
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        return status


class DiagnosticsPublisher:
    """``/diagnostics`` publisher and its steady-clock timer (every ``period`` s)."""

    def __init__(self, node, period: float, status: Callable[[], DiagnosticStatus]):
        """Publish ``status()`` of ``node`` every ``period`` s on the global topic."""
        self.node, self.status = node, status
        self.pub = node.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.timer = node.create_timer(period, self.publish,
                                       clock=Clock(clock_type=ClockType.STEADY_TIME))

    def publish(self) -> None:
        """Publish one DiagnosticArray with the node's status."""
        msg = DiagnosticArray()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.status = [self.status()]
        self.pub.publish(msg)

    def destroy(self) -> None:
        """Destroy the timer and the publisher."""
        self.node.destroy_timer(self.timer)
        self.node.destroy_publisher(self.pub)
