"""
TensorRT engine cache: file names, JSON sidecars and the load-or-build decision.

Engines live in ``<bundle>/derived/engines/``. An engine is only valid for the GPU model
(name and compute capability), the TensorRT version, the precision, the input size and
the exact ONNX graph it was built from; all of these form the cache key, which is part
of the file name and stored in a JSON sidecar (``<engine>.json``) together with the
engine's SHA-256, so a copied, renamed, truncated or foreign engine is detected before
TensorRT deserialises it. Pure Python: no TensorRT or CUDA needed.
"""

import json
from pathlib import Path
import re
from typing import List, Tuple

from ..errors import OodSegError
from ..files import atomic_write_text, file_sha256

KEY_FIELDS = ('gpu_name', 'compute_capability', 'tensorrt_version', 'precision',
              'input_size', 'onnx_sha256')
PRECISIONS = ('fp32', 'fp16', 'int8')


def engine_key(onnx_sha256: str, precision: str, input_size, gpu_name: str,
               compute_capability, tensorrt_version: str) -> dict:
    """Build the cache key of an engine (plain JSON values)."""
    if precision not in PRECISIONS:
        raise OodSegError(f'TensorRT precision must be one of {", ".join(PRECISIONS)}, '
                          f'got {precision!r}')
    cc = compute_capability
    if not isinstance(cc, str):
        cc = '.'.join(str(int(v)) for v in cc)
    return {'gpu_name': str(gpu_name), 'compute_capability': cc,
            'tensorrt_version': str(tensorrt_version), 'precision': precision,
            'input_size': [int(input_size[0]), int(input_size[1])],
            'onnx_sha256': str(onnx_sha256)}


def engine_file_name(key: dict) -> str:
    """``<gpu>_sm<cc>_trt<version>_<precision>_<H>x<W>_<onnx hash>.engine``."""
    gpu = re.sub(r'[^A-Za-z0-9]+', '-', key['gpu_name']).strip('-').lower() or 'gpu'
    cc = key['compute_capability'].replace('.', '')
    h, w = key['input_size']
    return (f'{gpu}_sm{cc}_trt{key["tensorrt_version"]}_{key["precision"]}_{h}x{w}_'
            f'{key["onnx_sha256"][:12]}.engine')


def sidecar_path(engine_path) -> Path:
    """Return the path of the JSON sidecar next to an engine file."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + '.json')


def write_sidecar(engine_path, key: dict, **extra) -> Path:
    """Record ``key`` and the engine's SHA-256 next to the engine (atomic write)."""
    doc = {**key, 'engine_sha256': file_sha256(engine_path), **extra}
    return atomic_write_text(sidecar_path(engine_path), json.dumps(doc, indent=2) + '\n')


def key_mismatches(engine_path, key: dict, check_hash: bool = True) -> List[str]:
    """Reasons why the engine at ``engine_path`` does not fit ``key`` (empty: it fits)."""
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    if not side.exists():
        return [f'no sidecar {side.name}']
    try:
        doc = json.loads(side.read_text())
        if not isinstance(doc, dict):
            raise ValueError('not a JSON object')
    except (OSError, ValueError) as exc:
        return [f'unreadable sidecar {side.name} ({exc})']
    reasons = [f'{k}: engine {doc.get(k)!r}, here {key[k]!r}' for k in KEY_FIELDS
               if doc.get(k) != key[k]]
    if not reasons and check_hash and doc.get('engine_sha256') != file_sha256(engine_path):
        reasons.append('engine file does not match the SHA-256 in its sidecar '
                       '(truncated or replaced)')
    return reasons


def plan_engine(engine_path, key: dict, force: bool = False,
                rebuild: bool = True) -> Tuple[str, str]:
    """
    Decide ('load' | 'build', reason) for the engine at ``engine_path``.

    A missing engine is built; a mismatching one is rebuilt, or, with ``rebuild``
    disabled, an OodSegError names every mismatch.
    """
    engine_path = Path(engine_path)
    if force:
        return 'build', 'force_engine_update requested'
    if not engine_path.exists():
        if not rebuild:
            raise OodSegError(f'TensorRT engine {engine_path} does not exist and '
                              f'rebuilding is disabled')
        return 'build', f'no engine {engine_path.name} yet'
    reasons = key_mismatches(engine_path, key)
    if not reasons:
        return 'load', 'cache hit'
    why = '; '.join(reasons)
    if not rebuild:
        raise OodSegError(f'TensorRT engine {engine_path} does not fit this setup ({why}); '
                          f'rebuild it: ood-seg export --format tensorrt '
                          f'--force-engine-update')
    return 'build', why
