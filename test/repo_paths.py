"""Paths the tests share: the repository, its sample bag, and ``../shared/data`` beside it."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BAG = ROOT / 'test' / 'data' / 'sample.bag'
SHARED_DATA = ROOT.parent / 'shared' / 'data'
CAMVID = SHARED_DATA / 'camvid'
COCO = SHARED_DATA / 'coco128_seg'


def load_tool(name):
    """Import the script ``tools/<name>.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
