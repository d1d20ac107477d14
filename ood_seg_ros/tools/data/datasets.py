"""
The registry of labelled dataset kinds, and ``KIND:PATH`` dataset specs.

Every command that reads in-distribution data takes ``--dataset KIND:PATH`` (e.g.
``cityscapes:/data/cityscapes``, ``folder:/data/mine``); ``--camvid PATH`` is short for
``--dataset camvid:PATH``. Adding a kind is one module with a
:class:`ood_seg_ros.tools.data.labelled.LabelledDataset` subclass plus one line in ``KINDS``.
"""

from pathlib import Path
from typing import Optional, Tuple

from .camvid import CamVid
from .cityscapes import Cityscapes
from .folder import FolderDataset
from .labelled import ClassInfo, LabelledDataset
from ...errors import OodSegError

KINDS = {
    'camvid': CamVid,
    'cityscapes': Cityscapes,
    'folder': FolderDataset,
}
DEFAULT_KIND = 'camvid'     # the classes of a config or bundle that names none


def default_classes() -> ClassInfo:
    """Classes of the default kind (bundles written before bundles owned their classes)."""
    return KINDS[DEFAULT_KIND].CLASSES


def parse_spec(spec: str) -> Tuple[str, str]:
    """``'cityscapes:/data/cs'`` -> ('cityscapes', '/data/cs'); OodSegError otherwise."""
    kind, sep, path = str(spec).partition(':')
    if not sep or not path:
        raise OodSegError(f'dataset must be KIND:PATH (kinds: {", ".join(KINDS)}), '
                          f'got {spec!r}')
    if kind not in KINDS:
        raise OodSegError(f'unknown dataset kind {kind!r} in {spec!r} (kinds: '
                          f'{", ".join(KINDS)})')
    return kind, path


def open_dataset(spec) -> LabelledDataset:
    """
    Open a dataset from a ``KIND:PATH`` spec (or pass a dataset through).

    A ``pathlib.Path`` or a string without ``:`` is a folder of the default kind (the
    callers from before dataset kinds).
    """
    if isinstance(spec, LabelledDataset):
        return spec
    if isinstance(spec, Path) or ':' not in str(spec):
        return KINDS[DEFAULT_KIND](spec)
    kind, path = parse_spec(spec)
    return KINDS[kind](path)


def add_dataset_option(parser, required: bool = True, group=None) -> None:
    """``--dataset KIND:PATH`` and its short alias ``--camvid PATH`` (one of them)."""
    group = group or parser.add_mutually_exclusive_group(required=required)
    group.add_argument('--dataset', default=None, metavar='KIND:PATH',
                       help=f'in-distribution dataset, KIND one of {", ".join(KINDS)} '
                            f'(e.g. cityscapes:/data/cityscapes)')
    group.add_argument('--camvid', default=None, metavar='PATH',
                       help='short for --dataset camvid:PATH')


def dataset_spec(args) -> Optional[str]:
    """Return the ``KIND:PATH`` of parsed ``--dataset`` / ``--camvid`` options, None without."""
    if getattr(args, 'dataset', None):
        parse_spec(args.dataset)
        return args.dataset
    if getattr(args, 'camvid', None):
        return f'camvid:{args.camvid}'
    return None
