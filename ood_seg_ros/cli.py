"""The ``ood-seg`` command: one subcommand per offline job."""

import argparse
import importlib
import sys

from .errors import OodSegError

# subcommand name -> module under ood_seg_ros.commands
COMMANDS = {
    'bench': 'bench',
    'train-base': 'train',
    'train-probes': 'train',
    'train-entropy': 'train',
    'train-meta': 'train_meta',
    'sml-stats': 'sml_stats',
    'eval': 'evaluate',
    'export': 'export',
    'make-ood-set': 'make_ood_set',
    'make-bag': 'make_bag',
    'bag-eval': 'bag_eval',
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog='ood-seg', description='Out-of-distribution segmentation tools.')
    sub = parser.add_subparsers(dest='command', required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f'ood_seg_ros.commands.{module_name}')
        except ModuleNotFoundError as exc:
            if exc.name == f'ood_seg_ros.commands.{module_name}':
                continue  # subcommand not part of this build
            raise
        help_text = getattr(module, 'HELP', '')
        if isinstance(help_text, dict):
            help_text = help_text.get(name, '')
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        add = module.add_arguments
        if add.__code__.co_argcount == 2:
            add(cmd, name)
        else:
            add(cmd)
        cmd.set_defaults(_module=module, _name=name)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so open outputs (bags) are closed and finalised."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    """
    Entry point of the ``ood-seg`` console script.

    SIGTERM is handled like Ctrl-C: the running command unwinds, so a bag being written
    gets its metadata.yaml (readable), and the exit status is 143 (130 for SIGINT).
    """
    import signal
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args._module.run(args) or 0)
    except OodSegError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except Terminated:
        print('terminated', file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == '__main__':
    sys.exit(main())
