"""The contract of an ``ood-seg`` subcommand (the ros2cli verb pattern)."""

import argparse
import json
import re


class Command:
    """
    One subcommand: a name, a help line, and fixed ``add_arguments`` / ``main`` methods.

    The name comes from the class name (``MakeOodSetCommand`` is ``make-ood-set``) and the
    help line from the first line of the class docstring, as ros2cli takes a verb's.

    ``main`` returns the exit status; an :class:`ood_seg_ros.errors.OodSegError` it raises
    becomes one ``error:`` line and status 2 (see :func:`ood_seg_ros.cli.main`). Modules
    keep their top levels light and import their engines inside ``main``: building the
    parser instantiates every command, and ``ood-seg --help`` should not wait for torch.
    """

    name: str = ''
    description: str = ''

    def __init_subclass__(cls, **kwargs):
        """Derive ``name`` and ``description`` of a subclass from its name and docstring."""
        super().__init_subclass__(**kwargs)
        words = re.findall(r'[A-Z][a-z0-9]*', cls.__name__.removesuffix('Command'))
        cls.name = '-'.join(w.lower() for w in words)
        cls.description = (cls.__doc__ or '').strip().splitlines()[0].rstrip('.')

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's options to ``parser``."""

    def main(self, args: argparse.Namespace) -> int:
        """Run the command with the parsed ``args``; return the exit status."""
        raise NotImplementedError


def add_bundle_option(parser: argparse.ArgumentParser, purpose: str = '') -> None:
    """``--bundle``: required when ``purpose`` says what for, else the package default."""
    if purpose:
        parser.add_argument('--bundle', required=True, help=purpose)
    else:
        parser.add_argument('--bundle', default=None,
                            help='model bundle folder (default: the package default bundle)')


def add_json_option(parser: argparse.ArgumentParser, what: str = 'the result') -> None:
    """``--json``: print ``what`` as JSON instead of the text summary."""
    parser.add_argument('--json', action='store_true', help=f'print {what} as JSON')


def print_result(result: dict, as_json: bool) -> None:
    """Print a command's result: one JSON object, or one aligned ``key: value`` per line."""
    if as_json:
        print(json.dumps(result))
        return
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        shown = ', '.join(map(str, value)) if isinstance(value, list) else value
        print(f'{key:>{width}}: {shown}')


OBSTACLE_OPTIONS = (   # flag, argparse keywords
    ('--heatmap-region', {'default': None, 'choices': ['all', 'drivable'], 'help': (
        'all: the whole frame; drivable: the score weighted by the drivable-area prior, '
        'segments must touch the road (calibration and meta classifier of that mode); '
        "default: the bundle's (runtime.heatmap_region, else all)")}),
    ('--band', {'action': 'store_true',
                'help': 'second, high-resolution pass over the road band, fused in'}),
    ('--band-rows', {'default': None, 'help': 'band TOP:BOTTOM as fractions of the frame '
                     "height, or auto (from the drivable region); default: the bundle's"}),
    ('--band-width', {'type': int, 'default': None, 'help': (
        "network width of the band pass at most; 0: the frame's own")}),
    ('--flip', {'action': 'store_true',
                'help': 'average with the horizontally mirrored frame (2x the network)'}),
    ('--contrast', {'type': float, 'default': None, 'metavar': 'GAIN', 'help': (
        "small-object contrast: add GAIN x the score's excess over its local box mean "
        "(raises small obstacles, lowers large anomalies' AP); 0: off; default: the "
        "bundle's (off)")}),
    ('--contrast-window', {'type': int, 'default': None, 'metavar': 'K', 'help': (
        'box-mean window of --contrast, odd, decoder pixels (default 9)')}),
)


def add_obstacle_options(parser: argparse.ArgumentParser) -> None:
    """Obstacle mode: ``--heatmap-region``, ``--band`` (+ rows, width), ``--flip``, contrast."""
    for flag, keywords in OBSTACLE_OPTIONS:
        parser.add_argument(flag, **keywords)


def obstacle_kw(args: argparse.Namespace) -> dict:
    """Pipeline keywords of the obstacle options (see :func:`add_obstacle_options`)."""
    return {'region': args.heatmap_region, 'band': args.band, 'band_rows': args.band_rows,
            'band_width': args.band_width, 'flip': args.flip, 'contrast': args.contrast,
            'contrast_window': args.contrast_window}


def check_fit_contrast(doc: dict, args: argparse.Namespace, what: str) -> None:
    """
    Refuse ``--contrast`` / ``--contrast-window`` other than the bundle's for a fit.

    Calibration and the meta classifier are stored per region and size, not per contrast:
    constants fitted at another contrast than ``runtime.obstacle``'s would be read by a
    pipeline that does not apply it. Set the bundle's contrast first.
    """
    from ...errors import OodSegError
    from ...obstacle import ObstacleSettings
    own = ObstacleSettings.from_runtime(doc.get('runtime', {}))
    asked = ObstacleSettings.from_runtime(doc.get('runtime', {}), contrast=args.contrast,
                                          contrast_window=args.contrast_window)
    if asked.contrast_spec != own.contrast_spec:
        raise OodSegError(
            f'{what} at --contrast {asked.contrast:g} (window {asked.contrast_window}) but '
            f'the bundle runs {own.contrast:g} (window {own.contrast_window}): its constants '
            f'would not match; set runtime.obstacle.contrast / contrast_window in '
            f'bundle.json first (tools/obstacle_sweep.py --apply does)')


def check_out_dir(out, inputs=()) -> None:
    """
    Check an ``--out`` folder before any work: creatable, a folder, not inside an input.

    Raises OodSegError with one line when ``out`` is an existing file, cannot be created
    (``/proc/x``, no permission) or is one of ``inputs`` (a bag, a bundle, a data folder)
    or inside one: results are never written into what is being evaluated. Creates it.
    """
    from pathlib import Path
    from ...errors import OodSegError
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OodSegError(f'--out {out} exists and is not a folder; give a folder')
    target = out.resolve()
    for given in inputs:
        if given is None:
            continue
        src = Path(given).resolve()
        if target == src or src in target.parents:
            raise OodSegError(f'--out {out} is inside the input {given}; write the results '
                              f'elsewhere')
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / '.ood_seg_write_check'
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OodSegError(f'--out {out}: cannot write there ({exc.strerror or exc})') from None
