"""
:class:`ood_seg_ros.ros.rebuild.Rebuilder` and the node's shutdown.

A fake node stands in for rclpy's: its guard condition records triggers and raises when
triggered after it was destroyed (rclpy's handle would be freed memory by then). Checked:
a build delivered before ``destroy`` wakes the executor once; a build that finishes after
``destroy`` never touches the guard; requests after ``destroy`` start nothing; ``destroy``
twice is harmless.
"""

import threading

from ood_seg_ros.ros.rebuild import Rebuilder


class _Guard:
    def __init__(self, callback):
        self.callback, self.triggers, self.destroyed = callback, 0, False

    def trigger(self):
        assert not self.destroyed, 'guard condition triggered after it was destroyed'
        self.triggers += 1


class _Node:
    def __init__(self):
        self.guards, self.destroyed = [], []

    def create_guard_condition(self, callback):
        self.guards.append(_Guard(callback))
        return self.guards[-1]

    def destroy_guard_condition(self, guard):
        guard.destroyed = True
        self.destroyed.append(guard)


def _rebuilder(build):
    node, done = _Node(), []
    rb = Rebuilder(node, build, lambda key, pipe, error: done.append((key, pipe, error)))
    return node, rb, done


def test_a_finished_build_wakes_the_executor_and_is_delivered():
    node, rb, done = _rebuilder(lambda recipe: f'pipe-{recipe}')
    rb.request('msp', 1)
    rb._thread.join(timeout=10)
    guard = node.guards[0]
    assert guard.triggers == 1
    guard.callback()                  # what the executor runs on the trigger
    assert done == [('msp', 'pipe-1', None)]


def test_a_build_finishing_after_destroy_never_touches_the_guard():
    started, release = threading.Event(), threading.Event()

    def build(recipe):
        started.set()
        release.wait(timeout=10)
        return 'late'
    node, rb, done = _rebuilder(build)
    rb.request('energy', 1)
    assert started.wait(timeout=10)
    thread = rb._thread
    rb.destroy()                      # the node shuts down while the build runs
    release.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    guard = node.guards[0]
    assert guard.destroyed and guard.triggers == 0 and done == []
    rb.request('msp', 2)              # after destroy: nothing starts
    assert rb._thread is None and rb.pending() is None
    rb.destroy()
    assert node.destroyed == [guard]
