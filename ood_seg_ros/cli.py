"""The ``ood-seg`` command: one subcommand per offline job."""

import argparse
import os
import signal
import sys
from typing import Iterable, Optional

from .commands import COMMANDS
from .commands.base import Command
from .errors import exit_status, Terminated


def build_parser(commands: Optional[Iterable[Command]] = None) -> argparse.ArgumentParser:
    """Build the argument parser with one subparser per command (default: every one)."""
    parser = argparse.ArgumentParser(
        prog='ood-seg', description='Out-of-distribution segmentation tools.')
    sub = parser.add_subparsers(dest='command', required=True)
    for command in commands if commands is not None else (c() for c in COMMANDS):
        cmd = sub.add_parser(command.name, help=command.description,
                             description=command.description)
        command.add_arguments(cmd)
        cmd.set_defaults(_command=command)
    return parser


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None, commands: Optional[Iterable[Command]] = None) -> int:
    """
    Entry point of the ``ood-seg`` console script.

    SIGTERM is handled like Ctrl-C: the running command unwinds, so a bag being written
    gets its metadata.yaml (readable), and the exit status is 143 (130 for SIGINT).
    """
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        status = exit_status(lambda: args._command.main(args))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if argv is None and status in (130, 143):
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """
    End an interrupted ``ood-seg`` process at once: the command has already unwound.

    Its outputs are closed (bags finalised, no temporary file left, export children
    stopped); the interpreter's teardown of torch and ONNX Runtime took seconds more on
    a loaded machine, past the time a signal must take.
    """
    from .export import abort_exports
    abort_exports()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == '__main__':
    sys.exit(main())
