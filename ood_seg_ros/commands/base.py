"""The contract of an ``ood-seg`` subcommand (the ros2cli verb pattern)."""

import argparse


class Command:
    """
    One subcommand: a name, a help line, and fixed ``add_arguments`` / ``main`` methods.

    ``main`` returns the exit status; an :class:`ood_seg_ros.errors.OodSegError` it raises
    becomes one ``error:`` line and status 2 (see :func:`ood_seg_ros.cli.main`). Modules
    keep their top levels light and import their engines inside ``main``: building the
    parser instantiates every command, and ``ood-seg --help`` should not wait for torch.
    """

    name: str = ''
    description: str = ''

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's options to ``parser``."""

    def main(self, args: argparse.Namespace) -> int:
        """Run the command with the parsed ``args``; return the exit status."""
        raise NotImplementedError
