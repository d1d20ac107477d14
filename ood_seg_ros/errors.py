"""The one exception type the package raises for bad input, config or files."""

import sys
from typing import Callable, Optional


class OodSegError(Exception):
    """
    A user-facing error: one line that says what is wrong and where.

    The CLI prints it as ``error: <message>`` and exits with status 2; the node logs
    it (rate-limited), counts it in diagnostics and keeps running.
    """

    def __init__(self, message: str):
        super().__init__(' '.join(str(message).split()))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so open outputs (bags) are closed and finalised."""


def exit_now(status: int, cleanups=()) -> None:
    """
    End the process at once after a command or the node has shut down.

    What it owns is released by then (outputs closed, bags finalised, the rclpy context
    shut down); ``cleanups`` run first (e.g. stopping ONNX export children). The
    interpreter's teardown of torch, ONNX Runtime and Fast DDS took seconds more on a
    loaded machine, past the time a signal must take.
    """
    import os
    for cleanup in cleanups:
        cleanup()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def exit_status(run: Callable[[], Optional[int]], interrupted: str = 'interrupted') -> int:
    """
    Run ``run()`` and turn how it ends into a process exit status, with one stderr line.

    Its own status (None: 0); :class:`OodSegError`: ``error: <message>``, 2;
    :class:`Terminated`: 143; Ctrl-C: ``interrupted``, 130.
    """
    try:
        return int(run() or 0)
    except OodSegError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except Terminated:
        print('terminated', file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
