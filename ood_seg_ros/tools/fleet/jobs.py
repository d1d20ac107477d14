"""
The bags and bundles of a fleet evaluation, their content hashes, and the jobs.

Bags are given as bag folders (with ``metadata.yaml``), folders holding bag folders,
globs of either, and list files (one path per line, ``#`` comments, relative paths from
the list's folder). A named path that does not exist becomes a failed bag, not an error:
the others still count. A job is one bag (or one chunk of it) with one bundle; its key
is the SHA-256 of the bag's content, the bundle's content and the settings, so a rerun
finds the jobs already done and a changed bag or bundle is evaluated again.
"""

from dataclasses import asdict, dataclass, field
import glob
import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ...errors import OodSegError

# bundle files that decide its outputs (derived graphs and engines are not content)
BUNDLE_FILES = ('bundle.json', 'weights.pt', 'meta.json')
_GLOB_CHARS = set('*?[')


def _bags_in(path: Path) -> List[Path]:
    """Return ``path`` if it is a bag (folder with metadata.yaml, bag file), else its bags."""
    if path.is_file() or (path / 'metadata.yaml').is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if (p / 'metadata.yaml').is_file())
        return found or [path]      # a folder without bags: reported as a bad bag
    return [path]


def expand_bags(specs: Sequence[str], list_files: Sequence[str] = ()) -> List[Path]:
    """Return the bags named by ``specs`` (folders, globs) and ``list_files``, deduplicated."""
    names: List[Path] = []
    for spec in specs:
        if _GLOB_CHARS & set(spec):
            matches = sorted(glob.glob(spec))
            if not matches:
                raise OodSegError(f'no bag matches {spec!r}')
            names += [Path(m) for m in matches]
        else:
            names.append(Path(spec))
    for lf in list_files:
        lf = Path(lf)
        try:
            lines = lf.read_text().splitlines()
        except OSError as exc:
            raise OodSegError(f'cannot read the bag list {lf}: {exc.strerror}') from None
        for line in lines:
            line = line.split('#', 1)[0].strip()
            if line:
                p = Path(line)
                names.append(p if p.is_absolute() else lf.parent / p)
    bags, seen = [], set()
    for name in names:
        for bag in _bags_in(name):
            key = bag.resolve()
            if key not in seen:
                seen.add(key)
                bags.append(bag)
    if not bags:
        raise OodSegError('no bags given (folders, globs or --bag-list)')
    return bags


def content_hash(path: Path, only: Optional[Sequence[str]] = None) -> str:
    """Return the SHA-256 of the files under ``path`` (names and bytes; ``only``: these names)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob('*') if p.is_file()
                       and (only is None or p.name in only))
    if not files:
        raise OodSegError(f'{path} has no files to hash')
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b'\0')
        with open(f, 'rb') as fh:
            for block in iter(lambda: fh.read(1 << 20), b''):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Settings:
    """What besides the bag and the bundle decides a job's figures."""

    backend: str = 'auto'
    device: str = 'auto'
    score: Optional[str] = None
    threshold: Optional[float] = None
    component_threshold: Optional[float] = None
    image_topic: Optional[str] = None
    gt_topic: str = '/camera/ood_gt'
    track: str = 'anomaly'
    worst: int = 4


@dataclass(frozen=True)
class Job:
    """One bag (or its chunk ``start`` to ``stop`` - 1) with one bundle."""

    bag: str
    bag_hash: str
    bundle: str
    bundle_hash: str
    label: str
    settings: Settings
    chunk: Optional[Tuple[int, int]] = None
    frames: int = 0                 # image messages in the job (metadata), for progress
    key: str = field(default='', compare=False)

    def with_key(self) -> 'Job':
        """Return this job with its cache key filled in."""
        doc = {'bag': self.bag_hash, 'bundle': self.bundle_hash, 'chunk': self.chunk,
               'settings': asdict(self.settings)}
        key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
        return Job(**{**self.__dict__, 'key': key})

    @property
    def name(self) -> str:
        """Return a short readable name: bag folder name and chunk."""
        chunk = f'[{self.chunk[0]}:{self.chunk[1]}]' if self.chunk else ''
        return Path(self.bag).name + chunk


def image_count(bag: Path, settings: Settings) -> int:
    """Return the number of image messages of the bag's input topic (0 when unreadable)."""
    from ..data.bags import bag_info, IMAGE_TYPE
    try:
        topics = bag_info(bag)['topics']
    except OodSegError:
        return 0
    if settings.image_topic:
        return int(topics.get(settings.image_topic, {}).get('count', 0))
    counts = [v['count'] for t, v in topics.items()
              if v['type'] == IMAGE_TYPE and t != settings.gt_topic]
    return int(counts[0]) if len(counts) == 1 else 0


def make_jobs(bags: Sequence[Path], bundles: Dict[str, Path], settings: Settings,
              chunk_frames: int = 0) -> Tuple[List[Job], List[dict]]:
    """
    Return (jobs, bad bags): one job per bag (or chunk of ``chunk_frames``) per bundle.

    Bundles: {label: folder}. A bag that does not exist or cannot be hashed is a bad bag
    ({'bag', 'reason'}), reported and left out.
    """
    bundle_hashes = {label: content_hash(path, BUNDLE_FILES) for label, path in bundles.items()}
    jobs, bad = [], []
    for bag in bags:
        if not bag.exists():
            bad.append({'bag': str(bag), 'reason': f'bag {bag} does not exist'})
            continue
        try:
            bag_hash = content_hash(bag)
        except (OSError, OodSegError) as exc:
            bad.append({'bag': str(bag), 'reason': f'cannot read bag {bag}: {exc}'})
            continue
        n = image_count(bag, settings)
        chunks = [None]
        if chunk_frames and n > chunk_frames:
            chunks = [(s, min(n, s + chunk_frames)) for s in range(0, n, chunk_frames)]
        for label, path in bundles.items():
            for chunk in chunks:
                frames = n if chunk is None else chunk[1] - chunk[0]
                jobs.append(Job(str(bag), bag_hash, str(path), bundle_hashes[label], label,
                                settings, chunk, frames).with_key())
    return jobs, bad
