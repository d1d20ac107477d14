"""
Background pipeline rebuilds of ``ood_node``: a parameter change never stops the output.

A run-time parameter that the running pipeline cannot apply in place (a heatmap score
its graph does not compute) needs a new pipeline, and building one (weights, ONNX
export, a TensorRT engine, warm-up) takes seconds to minutes. :class:`Rebuilder` builds
it in a worker thread while the running pipeline keeps processing frames, so the
parameter call is answered at once. When a build is done the node's executor is woken
through a guard condition and ``on_done`` runs there, between two frame callbacks: the
swap is atomic for the node's single-threaded executor.

The latest request wins: a request made while a build runs is built next (the running
build's result is dropped), :meth:`Rebuilder.cancel` drops what is pending.
:meth:`Rebuilder.destroy` (from the node's ``destroy_node``) removes the guard condition
under the same lock the worker triggers it under, and a build that finishes after it is
dropped: a worker must never trigger a guard condition that the node's shutdown has freed.
"""

import threading
import time
from typing import Callable, Optional


class _Job:
    """One rebuild request: what it is for (``key``), how to build, when it was asked."""

    def __init__(self, key: str, recipe):
        self.key, self.recipe, self.since = key, recipe, time.monotonic()


class Rebuilder:
    """Build pipelines in a worker thread; deliver the latest in the node's executor."""

    def __init__(self, node, build: Callable, on_done: Callable):
        """
        Build with ``build(recipe)`` in a worker thread, deliver to ``on_done``.

        ``build`` returns the new pipeline (or raises); ``on_done(key, pipeline, error)``
        runs in ``node``'s executor.
        """
        self._build, self._on_done = build, on_done
        self._lock = threading.Lock()
        self._wanted: Optional[_Job] = None
        self._built: Optional[_Job] = None
        self._ready = None
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._node = node
        self._guard = node.create_guard_condition(self._deliver)

    def request(self, key: str, recipe) -> None:
        """Ask for a pipeline built from ``recipe``; replaces any pending request."""
        with self._lock:
            if self._closed:
                return
            self._wanted = _Job(key, recipe)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name='ood_rebuild',
                                                daemon=True)
                self._thread.start()

    def cancel(self) -> None:
        """Drop the pending request (a build in progress finishes unused)."""
        with self._lock:
            self._wanted = None

    def pending(self):
        """Return (key, seconds since requested) of the pending request, or None."""
        job = self._wanted
        return None if job is None else (job.key, time.monotonic() - job.since)

    def _run(self) -> None:
        while True:
            with self._lock:
                job = self._wanted
                if job is None or job is self._built:
                    self._thread = None
                    return
            try:
                pipe, error = self._build(job.recipe), None
            except Exception as exc:  # noqa: B902 - reported to the node, which keeps running
                pipe, error = None, exc
            with self._lock:
                self._built = job
                if self._wanted is job and not self._closed:
                    self._ready = (job, pipe, error)
                    self._guard.trigger()

    def _deliver(self) -> None:
        """Guard-condition callback (executor thread): hand a finished build to the node."""
        with self._lock:
            ready, self._ready = self._ready, None
            if ready is None or ready[0] is not self._wanted:
                return
            self._wanted = None
        job, pipe, error = ready
        self._on_done(job.key, pipe, error)

    def destroy(self) -> None:
        """Drop what is pending and remove the guard condition; later builds are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wanted = None
            self._node.destroy_guard_condition(self._guard)
