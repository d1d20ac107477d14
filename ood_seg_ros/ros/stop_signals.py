"""
SIGINT / SIGTERM in the ``ood_node`` process: unwind at once, but never mid-bookkeeping.

A signal's Python handler raises :class:`KeyboardInterrupt` so that long work (ONNX
export, warm-up, a frame's inference) stops at once instead of after the phase. Raised at
an arbitrary point of the executor's own code, it can leave rclpy in a broken state: the
executor builds each wait set with ``ExitStack.enter_context(handle)``, and an exception
between a handle's ``__enter__`` and the registration of its ``__exit__`` leaves that
handle "in use" for ever. The node and its DDS participant then cannot be destroyed, and
the process leaves its Fast DDS shared-memory segment in ``/dev/shm`` (32 MiB with
``config/fastdds.xml``) until a reboot.

So while the executor runs (:meth:`StopSignals.deferred`), a signal is only recorded,
and raised when ``spin_once`` returns (at most ``SPIN_WAKE_S`` later). Inside a callback,
the node's long work runs under :meth:`StopSignals.interruptible`, where the signal
raises at once again: callbacks of subscriptions, services and timers run after the
executor has released the handles of its wait set.
"""

from contextlib import contextmanager
import signal
from typing import Optional


class StopSignals:
    """The process's SIGINT / SIGTERM handler and when it may raise."""

    def __init__(self):
        self.pending: Optional[str] = None
        self._deferring = False
        self._interruptible = False

    def install(self) -> None:
        """Handle SIGINT and SIGTERM in Python (main thread) with :meth:`handle`."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        """Raise :class:`KeyboardInterrupt`, or record the signal while deferring."""
        name = signal.Signals(signum).name
        if self._deferring and not self._interruptible:
            self.pending = name
            return
        raise KeyboardInterrupt(name)

    def _raise_pending(self) -> None:
        if self.pending is not None:
            raise KeyboardInterrupt(self.pending)

    @contextmanager
    def deferred(self):
        """Record signals inside the block; raise a recorded one when it ends."""
        outer, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = outer
        self._raise_pending()

    @contextmanager
    def interruptible(self):
        """Let signals raise inside the block (long work in a callback); raise a recorded one."""
        self._raise_pending()
        outer, self._interruptible = self._interruptible, True
        try:
            yield
        finally:
            self._interruptible = outer


# The process has one set of signal handlers; the node marks its long work with this one.
STOP = StopSignals()


@contextmanager
def held_signals(signums=(signal.SIGINT, signal.SIGTERM)):
    """
    Hold ``signums`` for the block, whatever their handlers, and deliver the first after it.

    For a process that spins an rclpy executor under handlers that raise (the ``ood-seg``
    tools: KeyboardInterrupt, ``Terminated``): wrap each ``spin_once`` in it. Main thread
    only (``signal.signal``).
    """
    got = []
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in signums}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if got:
        signal.raise_signal(got[0])
