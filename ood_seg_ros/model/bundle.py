"""
Model bundle: a folder with everything needed to rebuild and run the network.

Layout::

    <bundle>/bundle.json   format version, ModelConfig, runtime settings (default heatmap
                           score, its normalisation, segment threshold / min size),
                           provenance (how it was trained), metrics
    <bundle>/weights.pt    state dict (float16 or float32 tensors)
    <bundle>/meta.json     meta classifier (plain JSON), optional
    <bundle>/derived/      generated artefacts: ONNX graphs, TensorRT engines (ignored by git)

:class:`Bundle` is the folder with its ``bundle.json`` read and validated once; pass it
down instead of the path (it is path-like, so ``Path(bundle)`` still gives the folder)
and every reader takes the parsed document from it. :func:`write_bundle_json` and
:func:`update_bundle_json` are the one writer: validated, then atomic.
"""

from dataclasses import dataclass, field
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from .backbones import check_state, load_imagenet
from .config import ModelConfig
from .deeplab import OodSegNet
from ..errors import OodSegError
from ..files import atomic_write_text
from ..schema import validate_bundle

FORMAT_VERSION = 1
BUNDLE_JSON = 'bundle.json'
WEIGHTS = 'weights.pt'
META_JSON = 'meta.json'


def meta_file(region: str = 'all') -> str:
    """File name of the meta classifier of a heatmap region mode (``all``: meta.json)."""
    return META_JSON if region == 'all' else f'meta_{region}.json'


@dataclass(frozen=True, eq=False)
class Bundle:
    """
    A bundle folder and its ``bundle.json``, read and validated once (:meth:`read`).

    Path-like (``os.fspath`` gives the folder): hand it to anything that takes a bundle
    path; :func:`read_bundle_json` and :func:`load_bundle` take the document from it
    instead of reading the file again.
    """

    path: Path
    doc: dict

    @classmethod
    def read(cls, path) -> 'Bundle':
        """Read and check ``<path>/bundle.json``."""
        return cls(Path(path), _read_bundle_file(Path(path)))

    @classmethod
    def of(cls, bundle) -> 'Bundle':
        """Return ``bundle`` when it is a Bundle already, else read the folder it names."""
        return bundle if isinstance(bundle, Bundle) else cls.read(bundle)

    def __fspath__(self) -> str:
        """Return the folder, so that ``Path(bundle)`` and ``open`` work on it."""
        return os.fspath(self.path)

    def __str__(self) -> str:
        """Return the folder (as in log lines and error messages)."""
        return str(self.path)

    @property
    def config(self) -> dict:
        """Return the ``config`` section (the network: architecture, classes, input size)."""
        return self.doc['config']

    @property
    def runtime(self) -> dict:
        """Return the ``runtime`` section (heatmap score, normalisation, thresholds)."""
        return self.doc.get('runtime', {})

    @property
    def info(self) -> dict:
        """Return the free-form ``info`` section (provenance, metrics)."""
        return self.doc.get('info', {})

    @property
    def input_size(self) -> Tuple[int, int]:
        """Return the bundle's own network input size (H, W)."""
        return tuple(int(v) for v in self.config['input_size'])

    def model_config(self) -> ModelConfig:
        """Return the checked :class:`ModelConfig` of ``config``."""
        return ModelConfig.from_dict(self.config, source=str(self.path / BUNDLE_JSON))

    def meta_path(self, region: str = 'all') -> Path:
        """Path of the meta classifier of a region mode (it may not exist)."""
        return self.path / meta_file(region)


@dataclass
class LoadedBundle:
    """A bundle with its network loaded: config, network and settings."""

    path: Optional[Path]
    config: ModelConfig
    model: OodSegNet
    runtime: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def meta_path(self) -> Optional[Path]:
        """Path of the meta classifier JSON when the bundle has one."""
        if self.path is None:
            return None
        p = self.path / META_JSON
        return p if p.exists() else None

    @property
    def derived_dir(self) -> Path:
        """Folder for generated artefacts (ONNX, engines); see :func:`derived_dir`."""
        return derived_dir(self.path)


def derived_dir(bundle_path) -> Path:
    """
    Return the folder for a bundle's generated artefacts (ONNX graphs, TensorRT engines).

    ``<bundle>/derived`` when the bundle folder is writable; otherwise (a bundle installed
    read-only, e.g. under /opt/ros) a per-user cache:
    ``$XDG_CACHE_HOME/ood_seg_ros/<bundle name>-<hash of its path>/derived``.
    """
    bundle_path = Path(bundle_path).resolve()
    local = bundle_path / 'derived'
    if os.access(local if local.exists() else bundle_path, os.W_OK):
        return local
    cache = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache')
    tag = hashlib.sha1(str(bundle_path).encode()).hexdigest()[:10]
    return cache / 'ood_seg_ros' / f'{bundle_path.name}-{tag}' / 'derived'


def save_bundle(path, model: OodSegNet, runtime: dict = None, info: dict = None,
                half: bool = True) -> Path:
    """Write ``model`` (weights, optionally as float16) and settings to folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    torch.save(state, path / WEIGHTS)
    doc = {'format_version': FORMAT_VERSION, 'config': model.config.to_dict(),
           'runtime': runtime or {}, 'info': info or {}}
    write_bundle_json(path, doc)
    return path


# What ``ood-seg eval --calibrate``, ``train-meta`` and ``sml-stats`` fit on the outputs of
# one set of weights: a bundle trained from another (probes, entropy stage) must not
# carry them over, or it runs stale constants silently.
CALIBRATED_RUNTIME = ('heatmap_score', 'normalisation', 'segment_threshold', 'calibration',
                      'sizes', 'calibrated_size', 'meta_threshold', 'meta_pgn_names',
                      'heatmap_region')


def save_retrained_bundle(path, model: OodSegNet, runtime: dict = None,
                          info: dict = None) -> Tuple[Path, list]:
    """
    Save weights trained from another bundle without that bundle's fitted constants.

    The init bundle's ``runtime`` keeps only what no fit produced (``min_segment_px``,
    ``obstacle``, ``score_options``, ...); ``config.sml_stats`` (training-split score
    statistics of the old weights) is left out, so scores that need them are unavailable
    until ``ood-seg sml-stats``. Returns (path, the dropped names, e.g.
    ``['config.sml_stats', 'runtime.heatmap_score']``).
    """
    runtime = dict(runtime or {})
    dropped = [f'runtime.{k}' for k in CALIBRATED_RUNTIME if k in runtime]
    kept = {k: v for k, v in runtime.items() if k not in CALIBRATED_RUNTIME}
    path = save_bundle(path, model, runtime=kept, info=info)
    if model.config.sml_stats is not None:
        update_bundle_json(path, lambda doc: doc['config'].update(sml_stats=None))
        dropped.insert(0, 'config.sml_stats')
    return path, dropped


def write_bundle_json(path, doc: dict) -> Path:
    """
    Check ``doc`` against the schema, then replace ``<path>/bundle.json`` atomically.

    A bad document raises OodSegError before anything is written; a writer killed
    half-way leaves the old file whole (:func:`ood_seg_ros.files.atomic_write_text`).
    """
    target = Path(path) / BUNDLE_JSON
    validate_bundle(doc, str(target))
    ModelConfig.from_dict(doc['config'], source=str(target))
    return atomic_write_text(target, json.dumps(doc, indent=2) + '\n')


def update_bundle_json(path, change: Callable[[dict], None]) -> dict:
    """Read ``<path>/bundle.json``, let ``change`` edit the document, write it back."""
    doc = _read_bundle_file(Path(path))
    change(doc)
    write_bundle_json(path, doc)
    return doc


def read_bundle_json(path) -> dict:
    """Return the checked ``bundle.json`` of a bundle folder (of a Bundle: no read)."""
    if isinstance(path, Bundle):
        return path.doc
    return _read_bundle_file(Path(path))


def _read_bundle_file(path: Path) -> dict:
    """Read and check ``bundle.json`` of bundle folder ``path`` (the one reader)."""
    if not path.is_dir():
        raise OodSegError(f'model bundle {path} does not exist or is not a folder')
    jpath = path / BUNDLE_JSON
    try:
        doc = json.loads(jpath.read_text())
    except FileNotFoundError:
        raise OodSegError(f'model bundle {path} has no {BUNDLE_JSON}') from None
    except (OSError, ValueError) as exc:
        raise OodSegError(f'{jpath} is not valid JSON: {exc}') from exc
    if not isinstance(doc, dict):
        raise OodSegError(f'{jpath}: expected a JSON object at the top level, got '
                          f'{type(doc).__name__}')
    if doc.get('format_version') != FORMAT_VERSION:
        raise OodSegError(f'{jpath}: format_version {doc.get("format_version")!r}, '
                          f'this package reads {FORMAT_VERSION}')
    return validate_bundle(doc, str(jpath))


def load_bundle(path, outputs=None, device='cpu') -> LoadedBundle:
    """Load a bundle folder (or :class:`Bundle`); the weights must match its config."""
    doc = read_bundle_json(path)
    path = Path(path)
    config = ModelConfig.from_dict(doc['config'], source=str(path / BUNDLE_JSON))
    model = OodSegNet(config, outputs)
    wpath = path / WEIGHTS
    check_weights_archive(wpath, model.state_dict())
    try:
        state = torch.load(wpath, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise OodSegError(f'model bundle {path} has no {WEIGHTS}') from None
    except Exception as exc:  # noqa: B902 - corrupt file of any kind
        raise OodSegError(f'cannot read {wpath}: {exc}') from exc
    check_state(model, state, str(wpath), 'does not match its config')
    check_finite(state, wpath)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in state.items()})
    model.eval().to(device)
    return LoadedBundle(path, config, model, doc.get('runtime', {}), doc.get('info', {}))


# torch.save's zip layout: <archive>/data.pkl (the pickled structure, small),
# <archive>/data/<n> (one entry per tensor storage), plus small bookkeeping entries
PICKLE_BYTES_PER_TENSOR = 512
ARCHIVE_SLACK_BYTES = 1 << 20


def check_weights_archive(wpath, expected: dict) -> None:
    """
    Refuse a weights file whose zip entries are larger than the config's tensors.

    Reads only the zip's directory (declared uncompressed sizes), before torch.load
    reads (and allocates) anything: a zip bomb (a few MB holding GiB of zeros) or a file
    for another, larger network gives one line instead of a memory blow-up. The storage
    entries together may hold the ``expected`` tensors in float32, the rest a pickle of
    bounded size. A file that is not a zip is left to torch.load to report.
    """
    import zipfile
    try:
        with zipfile.ZipFile(wpath) as archive:
            entries = archive.infolist()
    except FileNotFoundError:
        return
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    tensors = sum(int(v.numel()) * 4 for v in expected.values())
    storage = sum(e.file_size for e in entries if '/data/' in e.filename)
    other = sum(e.file_size for e in entries if '/data/' not in e.filename)
    allowed_other = ARCHIVE_SLACK_BYTES + PICKLE_BYTES_PER_TENSOR * len(expected)
    if storage > tensors + ARCHIVE_SLACK_BYTES or other > allowed_other:
        big = max(entries, key=lambda e: e.file_size)
        raise OodSegError(
            f'{wpath}: its zip entries unpack to {(storage + other) / 2 ** 20:.0f} MiB '
            f'(largest {big.filename}: {big.file_size / 2 ** 20:.0f} MiB), but the '
            f"config's {len(expected)} tensors take {tensors / 2 ** 20:.0f} MiB; refused "
            f'before reading it (a damaged or forged weights file)')


def check_finite(state: dict, where) -> None:
    """Raise OodSegError naming the tensors of ``state`` that hold NaN or inf values."""
    bad = [f'{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})'
           for k, v in state.items()
           if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
        raise OodSegError(f'{where}: non-finite (NaN/inf) weights in {", ".join(bad[:3])}'
                          f'{more}; the network would output garbage: retrain or restore it')


def build_model(config: ModelConfig, imagenet: bool = True) -> OodSegNet:
    """Build a fresh network; the backbone ImageNet-initialised when ``imagenet``."""
    model = OodSegNet(config)
    if imagenet:
        load_imagenet(model.backbone, config.backbone)
    return model


DEFAULT_BUNDLE = 'camvid_lite0'


def default_bundle_path() -> Optional[Path]:
    """
    Return the default bundle folder, or None when it is not installed.

    Looks for ``models/camvid_lite0`` in the source tree, else the installed
    ``share/ood_seg_ros/models/camvid_lite0``.
    """
    here = Path(__file__).resolve().parents[2] / 'models' / DEFAULT_BUNDLE
    if (here / BUNDLE_JSON).exists():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('ood_seg_ros')) / 'models' / DEFAULT_BUNDLE
        if (share / BUNDLE_JSON).exists():
            return share
    except (ImportError, LookupError, ValueError):
        pass
    return None
