"""The ``ood-seg`` command: one subcommand per offline job."""

import argparse
import signal
import sys
from typing import Iterable, Optional

from .errors import exit_now, exit_status, Terminated
from .tools.commands import COMMANDS
from .tools.commands.base import Command


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
        from .runtime.onnx_cache import abort_exports
        exit_now(status, [abort_exports])   # the command has unwound: skip the teardown
    return status


if __name__ == '__main__':
    sys.exit(main())
