"""
The int8 QDQ graph in the bundle's cache, as the runtime sees it.

Its name, its settings and whether it may be used. Making it (calibration on dataset
frames, quantisation) is an offline tool: :mod:`ood_seg_ros.tools.quantize`.

The graph lies beside the fp32 one in ``<bundle>/derived/``
(``model_<outputs hash>_<H>x<W>_int8-<target>.onnx``) with a JSON sidecar that records
its source hash: the fp32 graph's source hash, the calibration record and the code of
the quantiser. A stale graph (other weights, outputs, size, quantiser) or a forged one
(a graph copied in with a rewritten sidecar: the hash embedded in the graph differs) is
refused with one line naming the command that makes it.
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from ..errors import OodSegError

LOG = logging.getLogger(__name__)
_NOTED = set()      # graphs whose calibration count has been logged (once per process)

PRECISIONS = ('fp32', 'fp16', 'int8')
# activation encoding per consumer of the graph (see tools/quantize.py)
TARGETS = {'cpu': ('uint8 asymmetric', 'QUInt8', False),
           'tensorrt': ('int8 symmetric', 'QInt8', True)}
# 60, not 20: the default heatmap's AP moved by at most 0.008 from fp32 on the real
# validation sets, against 0.016 with 20 frames (the model card's int8 section)
CALIB_FRAMES = 60
CALIB_SPLIT = 'train'
MAKE_HINT = 'ood-seg export --int8 --camvid CAMVID_ROOT (or --dataset KIND:PATH)'
# the quantiser's source: hashed (read as bytes, not imported) into the graph's source hash
QUANTIZER = Path(__file__).resolve().parents[1] / 'tools' / 'quantize.py'


def int8_path(bundle_path, outputs: Sequence[str], input_size, target: str = 'cpu') -> Path:
    """``<derived>/model_<outputs hash>_<H>x<W>_int8-<target>.onnx``, beside the fp32 one."""
    from .onnx_cache import default_onnx_path
    fp32 = default_onnx_path(bundle_path, outputs, input_size)
    return fp32.with_name(fp32.name.replace('_fp32.onnx', f'_int8-{target}.onnx'))


def code_sha256() -> str:
    """SHA-256 of the quantiser's code: a changed recipe makes the int8 graph again."""
    try:
        return hashlib.sha256(QUANTIZER.read_bytes()).hexdigest()
    except OSError:     # an install without the tools: graphs are checked by their hashes
        return 'no-quantizer'


def int8_source(fp32_source: str, record: dict) -> str:
    """Content hash of an int8 graph: fp32 graph source, calibration record, quantiser."""
    text = json.dumps({'fp32_source_sha256': fp32_source, 'calibration': record,
                       'quantize_code_sha256': code_sha256()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def recorded_calibration(path) -> Optional[dict]:
    """Return the calibration record in the sidecar of ``path`` (None: it has none)."""
    from .onnx_cache import onnx_sidecar
    try:
        doc = json.loads(onnx_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    return doc.get('calibration') if isinstance(doc, dict) else None


def int8_mismatch(path, fp32_source: str, record: Optional[dict] = None) -> Optional[str]:
    """
    Say why ``path`` is not the int8 graph of ``fp32_source``; None: it is.

    ``record`` None accepts the calibration its sidecar records (a loader that has no
    frames); a given record must be the recorded one.
    """
    from .onnx_cache import onnx_mismatch
    have = recorded_calibration(path)
    if record is not None and have is not None and have != record:
        return 'calibrated on other frames or settings'
    return onnx_mismatch(path, int8_source(fp32_source, record or have or {}))


def cached_int8(bundle_path, outputs: Sequence[str], input_size,
                target: str = 'cpu') -> Path:
    """Return the cached int8 graph for these settings; one OodSegError line if unusable."""
    from .onnx_cache import canonical_outputs, source_sha256
    if target not in TARGETS:
        raise OodSegError(f'int8 target {target!r} is not one of {", ".join(TARGETS)}')
    outs = canonical_outputs(outputs)
    size = tuple(int(v) for v in input_size)
    path = int8_path(bundle_path, outs, size, target)
    reason = int8_mismatch(path, source_sha256(bundle_path, outs, size))
    if reason:
        raise unusable(path, reason, target)
    note_calibration(path)
    return path


def note_calibration(path) -> None:
    """
    Warn once when a reused int8 graph was calibrated on other than :data:`CALIB_FRAMES`.

    Loaders accept any recorded calibration (the graph is valid); a graph made before the
    default changed would otherwise be measured and run without a word.
    """
    frames = (recorded_calibration(path) or {}).get('frames')
    if frames is None or frames == CALIB_FRAMES or str(path) in _NOTED:
        return
    _NOTED.add(str(path))
    LOG.warning('int8 graph %s was calibrated on %d %s frames, the default is %d: make it '
                'again with ood-seg export --int8 --calib-frames %d --camvid CAMVID_ROOT',
                Path(path).name, frames, CALIB_SPLIT, CALIB_FRAMES, CALIB_FRAMES)


def unusable(path: Path, reason: str, target: str = 'cpu') -> OodSegError:
    """Return the one-line error for a missing or stale int8 graph, naming its command."""
    fmt = ' --int8-target tensorrt' if target == 'tensorrt' else ''
    return OodSegError(f'no usable int8 graph {path.name}: {reason}; make it with '
                       f'{MAKE_HINT.replace(" --int8", " --int8" + fmt)} (calibrates on '
                       f'{CALIB_FRAMES} {CALIB_SPLIT} frames)')
