"""
The data protocol, enforced: nothing is fitted on frames a bundle was trained on.

Training uses the dataset's ``train`` split only; ``val`` (and OoD sets pasted into it) and
the real anomaly sets are for early stopping, selection, calibration and the meta
classifier; ``test`` is for reporting only. A bundle records the splits each training stage
used, per dataset (``info.train_<stage>.config``: ``dataset`` = ``kind:folder name`` and
``train_splits``; summarised in ``info.trained_data`` and ``info.trained_splits``); an OoD
set built by ``make-ood-set`` records its source dataset and split in ``info.json``.

Records written before datasets had kinds name no dataset: they are CamVid's (the only
kind then), and a dataset named by kind only matches every folder of that kind.
"""

import json
from pathlib import Path
from typing import Dict, Iterable, Set, Tuple

from ..errors import OodSegError

LEGACY_KIND = 'camvid'


def stage_dataset(cfg: dict) -> str:
    """``kind:name`` of the data a training stage's config names (legacy: camvid)."""
    dataset = cfg.get('dataset') or ''
    if isinstance(dataset, str) and dataset:
        return dataset
    legacy = cfg.get('camvid') or ''
    return f'{LEGACY_KIND}:{Path(legacy).name if isinstance(legacy, str) else ""}'


def trained_data(info: dict) -> Dict[str, Set[str]]:
    """Return ``{kind:name: splits}`` any training stage of a bundle saw (from its ``info``)."""
    out: Dict[str, Set[str]] = {}
    recorded = info.get('trained_data')
    if isinstance(recorded, dict):
        for key, splits in recorded.items():
            out.setdefault(key, set()).update(splits or [])
    legacy = info.get('trained_splits')
    if isinstance(legacy, list) and legacy and not recorded:
        out.setdefault(f'{LEGACY_KIND}:', set()).update(legacy)
    for key, stage in info.items():
        if key.startswith('train_') and isinstance(stage, dict):
            cfg = stage.get('config', {})
            if isinstance(cfg, dict):
                out.setdefault(stage_dataset(cfg), set()).update(
                    cfg.get('train_splits', []) or [])
    return out


def trained_splits(info: dict) -> Set[str]:
    """Return the splits any training stage of a bundle saw, of any dataset."""
    return set().union(*trained_data(info).values()) if info else set()


def same_dataset(a: str, b: str) -> bool:
    """Whether two ``kind:name`` records can be one dataset (a missing name matches any)."""
    kind_a, _, name_a = a.partition(':')
    kind_b, _, name_b = b.partition(':')
    return kind_a == kind_b and (name_a == name_b or not name_a or not name_b)


def dataset_source(root) -> Tuple[str, str]:
    """``(kind:name, split)`` an OoD set was pasted into; ('', '') for other data (real)."""
    path = Path(root) / 'info.json'
    if not path.is_file():
        return '', ''
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OodSegError(f'{path} is not valid JSON: {exc}') from None
    if not isinstance(doc, dict):
        return '', ''
    split = doc.get('split', '')
    dataset = doc.get('dataset', '') or f'{LEGACY_KIND}:'
    if not isinstance(split, str) or not split:
        return '', ''
    return (dataset if isinstance(dataset, str) else f'{LEGACY_KIND}:'), split


def dataset_source_split(root) -> str:
    """Return the split an OoD set was pasted into ('' for other data, e.g. real)."""
    return dataset_source(root)[1]


def check_held_out(bundle_info: dict, roots: Iterable, purpose: str) -> None:
    """Raise OodSegError when a dataset in ``roots`` comes from a split the bundle trained on."""
    for root in roots:
        hit = trained_on(bundle_info, root)
        if hit:
            dataset, split, trained, splits = hit
            raise OodSegError(
                f'refusing to {purpose} on {Path(root).name}: it is built from '
                f'{dataset.rstrip(":")} {split!r}, which this bundle was trained on '
                f'(trained: {trained.rstrip(":")} {", ".join(sorted(splits))}); use '
                f'held-out data such as the real sets')


def trained_on(bundle_info: dict, root):
    """
    Return (dataset, split, trained dataset, its splits) if ``root`` holds trained frames.

    None when the set was not built from a split the bundle trained on (or from no split).
    """
    dataset, split = dataset_source(root)
    if not split:
        return None
    for trained, splits in trained_data(bundle_info).items():
        if split in splits and same_dataset(dataset, trained):
            return dataset, split, trained, splits
    return None


def selection_notes(bundle_info: dict, roots: Iterable) -> dict:
    """
    Per selection-only set (folder name): '' or why its figures are optimistic.

    Choosing among fixed scores is allowed on any validation set; a set built from
    frames the bundle trained on is recorded as such, since its in-distribution pixels
    look more familiar to the network than unseen frames would.
    """
    notes = {}
    for root in roots:
        hit = trained_on(bundle_info, root)
        notes[Path(root).name] = (
            f'built from {hit[0].rstrip(":")} {hit[1]!r}, which this bundle trained on '
            f'(optimistic; used to rank scores only)' if hit else '')
    return notes
