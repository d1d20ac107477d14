"""
Subcommands of the ``ood-seg`` CLI.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Keep module top levels light (no torch import): every module
is imported to build ``ood-seg --help``.
"""
