"""
The data protocol, enforced: nothing is fitted on frames a bundle was trained on.

Training uses CamVid ``train`` only; ``val`` (and OoD sets pasted into it) and the real
anomaly sets are for early stopping, selection, calibration and the meta classifier;
``test`` is for reporting only. A bundle records the CamVid splits each training stage
used (``info.train_<stage>.config.train_splits``, summarised in ``info.trained_splits``);
an OoD set built by ``make-ood-set`` records its source split in ``info.json``.
"""

import json
from pathlib import Path
from typing import Iterable, Set

from .errors import OodSegError


def trained_splits(info: dict) -> Set[str]:
    """Return the CamVid splits any training stage of a bundle saw (from its ``info``)."""
    splits = set(info.get('trained_splits', []) or [])
    for key, stage in info.items():
        if key.startswith('train_') and isinstance(stage, dict):
            cfg = stage.get('config', {})
            if isinstance(cfg, dict):
                splits.update(cfg.get('train_splits', []) or [])
    return splits


def dataset_source_split(root) -> str:
    """Return the CamVid split an OoD set was pasted into ('' for other data, e.g. real)."""
    path = Path(root) / 'info.json'
    if not path.is_file():
        return ''
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OodSegError(f'{path} is not valid JSON: {exc}') from None
    split = doc.get('split', '') if isinstance(doc, dict) else ''
    return split if isinstance(split, str) else ''


def check_held_out(bundle_info: dict, roots: Iterable, purpose: str) -> None:
    """Raise OodSegError when a dataset in ``roots`` comes from a split the bundle trained on."""
    seen = trained_splits(bundle_info)
    for root in roots:
        split = dataset_source_split(root)
        if split and split in seen:
            raise OodSegError(
                f'refusing to {purpose} on {Path(root).name}: it is built from CamVid '
                f'{split!r}, which this bundle was trained on (trained splits: '
                f'{", ".join(sorted(seen))}); use held-out data such as the real sets')


def selection_notes(bundle_info: dict, roots: Iterable) -> dict:
    """
    Per selection-only set (folder name): '' or why its figures are optimistic.

    Choosing among fixed scores is allowed on any validation set; a set built from
    frames the bundle trained on is recorded as such, since its in-distribution pixels
    look more familiar to the network than unseen frames would.
    """
    seen = trained_splits(bundle_info)
    notes = {}
    for root in roots:
        split = dataset_source_split(root)
        notes[Path(root).name] = (
            f'built from CamVid {split!r}, which this bundle trained on (optimistic; '
            f'used to rank scores only)' if split and split in seen else '')
    return notes
