"""Paths the tests share: the repository, its sample bag, and ``../shared/data`` beside it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BAG = ROOT / 'test' / 'data' / 'sample.bag'
SHARED_DATA = ROOT.parent / 'shared' / 'data'
CAMVID = SHARED_DATA / 'camvid'
COCO = SHARED_DATA / 'coco128_seg'
