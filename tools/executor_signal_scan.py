#!/usr/bin/env python3
"""
Where a raised signal inside rclpy's executor keeps the DDS participant alive.

Usage: tools/executor_signal_scan.py lines [--plain]
       tools/executor_signal_scan.py random --handler raising|deferred [--trials N]

The measurements behind ``ood_seg_ros/ros/stop_signals.py`` (README, "Limits"). Each
trial builds a context, a lifecycle node (``--plain``: a plain node) with a subscription
and a publisher, and a ``SingleThreadedExecutor``, interrupts the executor with
KeyboardInterrupt, tears everything down as ``ood_node`` does, and checks whether the
trial's Fast DDS shared-memory segment is still in ``/dev/shm`` with its lock held by
this process (a participant kept alive: at exit the segment stays there).

- ``lines``: one ``spin_once(0)``, interrupted at its k-th executed Python line (executor,
  ``contextlib``, event handlers) for k = 1, 2, ... until a spin ends without reaching k.
  Prints each line that keeps the participant, then the count.
- ``random``: SIGALRM at a random moment (1-20 ms) of a busy ``spin_once(0)`` loop; the
  handler raises at once (``raising``, the node before the fix) or is recorded during
  ``spin_once`` and raised after it (``deferred``, :class:`StopSignals`).

Prints JSON on its last line. Run it from the repository's virtual environment; each
run uses a random ROS domain of its own (100-199), so that concurrent runs and nodes
stay apart.
"""

import argparse
import json
import os
from pathlib import Path
import random
import signal
import sys

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'test')]
import dds_shm  # noqa: E402  (test/: the segments in /dev/shm, which ones are ours)
from ood_seg_ros.ros.stop_signals import StopSignals  # noqa: E402

TRACED = ('executors.py', 'contextlib.py', 'event_handler.py', 'waitable.py')
DOMAIN = random.Random().randrange(100, 200)   # a domain of its own: no other process


def _build(name, lifecycle):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN, signal_handler_options=SignalHandlerOptions.NO)
    node = (LifecycleNode if lifecycle else Node)(name, context=context)
    node.create_subscription(String, 'scan_in', lambda msg: None, 1)
    node.create_publisher(String, 'scan_out', 1)
    if lifecycle:
        node.trigger_configure()
        node.trigger_activate()
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return context, node, executor


def _trial(name, lifecycle, interrupt):
    """Build, ``interrupt(executor)``, tear down; whether the participant was kept."""
    before = dds_shm.owned()
    context, node, executor = _build(name, lifecycle)
    try:
        interrupt(executor)
    except KeyboardInterrupt:
        pass
    executor.shutdown()
    node.destroy_node()
    if lifecycle:
        node._state_machine.destroy_when_not_in_use()
    rclpy.try_shutdown(context=context)
    kept = dds_shm.owned() - before
    dds_shm.remove(kept)    # a later trial must not count it again (the mapping stays)
    return bool(kept)


def scan_lines(lifecycle):
    """Interrupt one spin_once at each executed line in turn; the lines that keep it."""
    kept, k = [], 0
    while True:
        k += 1
        where = []

        def interrupt(executor, k=k, where=where):
            count = [0]

            def local(frame, event, arg):
                if event == 'line':
                    count[0] += 1
                    if count[0] == k:
                        where.append(f'{os.path.basename(frame.f_code.co_filename)}:'
                                     f'{frame.f_lineno}')
                        raise KeyboardInterrupt
                return local

            sys.settrace(lambda frame, event, arg:
                         local if frame.f_code.co_filename.endswith(TRACED) else None)
            try:
                executor.spin_once(timeout_sec=0)
            finally:
                sys.settrace(None)

        leaked = _trial(f'scan{k}', lifecycle, interrupt)
        if not where:
            break
        if leaked:
            kept.append(where[0])
            print(k, where[0], flush=True)
    return {'lines': k - 1, 'lines_keeping_the_participant': len(kept),
            'by_line': {w: kept.count(w) for w in sorted(set(kept))}}


def _raise(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def scan_random(handler, trials, seed=0):
    """SIGALRM at a random moment of a busy spin loop; how many trials keep it."""
    rng = random.Random(seed)
    stop = StopSignals()
    # the loop is ood_node's; with the raising handler its deferral never records anything
    previous = signal.signal(signal.SIGALRM, stop.handle if handler == 'deferred' else _raise)
    kept = 0
    try:
        for t in range(trials):
            stop.pending = None

            def interrupt(executor):
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.001, 0.02))
                while True:
                    with stop.deferred():
                        executor.spin_once(timeout_sec=0)

            kept += _trial(f'random{t}', True, interrupt)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return {'handler': handler, 'trials': trials, 'trials_keeping_the_participant': kept}


def main(argv=None):
    """Parse the mode and print the JSON result."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    sub = p.add_subparsers(dest='mode', required=True)
    lines = sub.add_parser('lines')
    lines.add_argument('--plain', action='store_true', help='a plain node, not lifecycle')
    rnd = sub.add_parser('random')
    rnd.add_argument('--handler', choices=('raising', 'deferred'), required=True)
    rnd.add_argument('--trials', type=int, default=100)
    args = p.parse_args(argv)
    if args.mode == 'lines':
        res = scan_lines(not args.plain)
    else:
        res = scan_random(args.handler, args.trials)
    print(json.dumps(res))


if __name__ == '__main__':
    main()
