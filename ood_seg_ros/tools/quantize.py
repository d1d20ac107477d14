"""
Static int8 quantisation of the exported graph (ONNX Runtime, QDQ) for CPU and TensorRT.

The int8 graph is made from the cached fp32 graph
(:func:`ood_seg_ros.runtime.onnx_cache.ensure_onnx`)
with ``onnxruntime.quantization.quantize_static``:

- **QDQ format**, int8 weights (per output channel, symmetric); activations per tensor
  in one of two :data:`TARGETS`: ``cpu`` uint8 asymmetric (ONNX Runtime's U8S8 kernels)
  and ``tensorrt`` int8 symmetric (TensorRT's explicit quantization accepts only
  zero-point 0 int8 Q/DQ). Measured on the x86 CPU of this project: the symmetric int8
  graph agrees with fp32 on 98-99 % of the pixels when its Q/DQ run as float ops, but
  ONNX Runtime's fused int8 x int8 CPU kernels give 52-63 % (and no speed-up), so the
  CPU gets the uint8 graph (97 %, 0.45x the fp32 time);
- **only the convolutional trunk is quantised**: the nodes under the scopes of
  :data:`TRUNK_SCOPES`, minus :data:`DEFAULT_KEEP_FLOAT` (chosen by measurement, see the
  README). The score head (softmax, energy, PGN, MOoSe aggregation, smoothing) is
  never quantised: it reads fine differences between logits;
- **calibration on CamVid ``train`` frames**: ``frames`` frames evenly spaced over the
  sorted train list (:func:`calibration_frames`), fitted into the input size as the
  pipeline does (letterbox), MinMax ranges.

Where the graph lies and when it may be used is the runtime's part
(:mod:`ood_seg_ros.runtime.int8_graph`); this module makes it, and :func:`int8_maker`
gives the backends a callable that makes a missing or stale one (the node never
calibrates: it only loads a graph made here).
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import OodSegError
from ..runtime.int8_graph import (  # noqa: F401 - the tools' names for them
    CALIB_FRAMES, CALIB_SPLIT, code_sha256, int8_mismatch, int8_path, int8_source,
    MAKE_HINT, note_calibration, PRECISIONS, recorded_calibration, TARGETS, unusable)

LOG = logging.getLogger(__name__)
TRUNK_SCOPES = ('/net/backbone/', '/net/aspp/', '/net/low_project/', '/net/decoder',
                '/net/classifier/', '/net/probes.', '/net/probe_stack/')
# Scopes kept in float inside the trunk (by measurement; see the README's int8 table).
DEFAULT_KEEP_FLOAT: Tuple[str, ...] = ()


def calibration_frames(dataset, count: int = CALIB_FRAMES) -> list:
    """
    ``count`` ``train`` images evenly spaced over the sorted list (first and last in).

    ``dataset``: ``KIND:PATH`` or a CamVid root (see :func:`open_dataset`).
    """
    from .data.datasets import open_dataset
    if count < 1:
        raise OodSegError(f'--calib-frames must be >= 1, got {count}')
    images = sorted(img for img, _ in open_dataset(dataset).list_pairs(CALIB_SPLIT))
    if count >= len(images):
        return images
    index = np.linspace(0, len(images) - 1, count).round().astype(int)
    return [images[i] for i in index]


def calibration_record(frames, keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                       target: str = 'cpu') -> dict:
    """Describe the calibration frames and settings (kept in the sidecar and metadata)."""
    names = [Path(f).name for f in frames]
    return {'split': CALIB_SPLIT, 'frames': len(names),
            'selection': 'evenly spaced over the sorted split list',
            'files_sha256': hashlib.sha256('\n'.join(names).encode()).hexdigest(),
            'first': names[0] if names else None, 'last': names[-1] if names else None,
            'method': 'minmax', 'format': 'QDQ',
            'weights': 'int8 symmetric per channel', 'target': target,
            'activations': TARGETS[target][0],
            'keep_float': sorted(keep_float)}


def trunk_nodes(model, keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT) -> list:
    """Names of the graph's nodes to quantise: trunk scopes, minus the ``keep_float`` ones."""
    def trunk(name):
        return name.startswith(TRUNK_SCOPES) and not any(k in name for k in keep_float)
    return [n.name for n in model.graph.node if n.op_type != 'Constant' and trunk(n.name)]


class FrameReader:
    """Calibration frames for ``quantize_static``: letterboxed, float32 (1, 3, H, W)."""

    def __init__(self, files, input_size, input_name: str = 'image'):
        self.files, self.size, self.input_name = list(files), tuple(input_size), input_name
        self.index = 0

    def get_next(self):
        """Return the next frame as ``{input: array}``, None after the last."""
        from .data.images import read_rgb
        from ..pipeline import Letterbox
        if self.index >= len(self.files):
            return None
        frame = read_rgb(self.files[self.index])
        self.index += 1
        img = Letterbox.fit(frame.shape[:2], self.size).place(frame)
        x = img.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0)
        return {self.input_name: np.ascontiguousarray(x)}

    def rewind(self):
        """Start again at the first frame."""
        self.index = 0


def quantize_graph(fp32_path, out_path, frames, input_size,
                   keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                   metadata: Optional[dict] = None, target: str = 'cpu') -> Path:
    """Quantise ``fp32_path`` into ``out_path`` (QDQ, see the module docstring); atomic."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    model = onnx.load(str(fp32_path))
    nodes = trunk_nodes(model, keep_float)
    if not nodes:
        raise OodSegError(f'{fp32_path}: no node names under {", ".join(TRUNK_SCOPES)}; '
                          f'nothing to quantise')
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f'.{out_path.name}.{os.getpid()}.tmp')
    root = logging.getLogger()       # the quantiser logs one warning per probe weight
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_static(str(fp32_path), str(tmp), FrameReader(frames, input_size),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=getattr(QuantType, TARGETS[target][1]),
                        weight_type=QuantType.QInt8,
                        nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax,
                        # no CalibMaxIntermediateOutputs: ONNX Runtime 1.32 drops the
                        # collected outputs at that count without computing their ranges
                        extra_options={'ActivationSymmetric': TARGETS[target][2],
                                       'WeightSymmetric': True})
        graph = onnx.load(str(tmp))
        del graph.metadata_props[:]
        for k, v in (metadata or {}).items():
            graph.metadata_props.add(key=k, value=v)
        onnx.save(graph, str(tmp))
        os.replace(tmp, out_path)
    finally:
        root.setLevel(level)
        if tmp.exists():
            tmp.unlink()
    return out_path


def ensure_int8(bundle_path, outputs: Sequence[str], input_size, camvid=None,
                calib_frames: int = 0,
                keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT, force: bool = False,
                out_path=None, target: str = 'cpu') -> Path:
    """
    Return the int8 graph for these settings; make it when missing, stale or forced.

    ``target``: ``cpu`` (ONNX Runtime) or ``tensorrt`` (see :data:`TARGETS`).

    Without ``camvid`` (a CamVid root; its ``train`` split calibrates) the cached graph
    is used whatever frames it was calibrated on, and a missing or stale one is one
    OodSegError line naming the command that makes it. With ``camvid`` and
    ``calib_frames`` the graph must be calibrated on exactly those frames and settings,
    else it is made again; ``calib_frames`` 0: any cached calibration, and
    :data:`CALIB_FRAMES` frames when it must be made.
    """
    from ..files import file_sha256
    from ..runtime.onnx_cache import canonical_outputs, ensure_onnx, graph_metadata, \
        onnx_sidecar, source_sha256
    outs = canonical_outputs(outputs)
    size = tuple(int(v) for v in input_size)
    if target not in TARGETS:
        raise OodSegError(f'int8 target {target!r} is not one of {", ".join(TARGETS)}')
    path = Path(out_path) if out_path else int8_path(bundle_path, outs, size, target)
    fp32_source = source_sha256(bundle_path, outs, size)
    frames = calibration_frames(camvid, calib_frames or CALIB_FRAMES) if camvid else None
    record = calibration_record(frames, keep_float, target) if frames else None
    reason = 'forced' if force else int8_mismatch(
        path, fp32_source, record if calib_frames else None)
    if not reason:
        if not calib_frames:
            note_calibration(path)      # any cached calibration: say which one
        return path
    if frames is None:
        raise unusable(path, reason, target)
    fp32 = ensure_onnx(bundle_path, outs, size)
    LOG.warning('making int8 graph %s: %s (%d %s frames)', path.name, reason, len(frames),
                CALIB_SPLIT)
    source = int8_source(fp32_source, record)
    meta = dict(graph_metadata(fp32), **{
        'ood_seg.precision': 'int8', 'ood_seg.source_sha256': source,
        'ood_seg.fp32_source_sha256': fp32_source,
        'ood_seg.calibration': json.dumps(record, sort_keys=True)})
    quantize_graph(fp32, path, frames, size, keep_float, meta, target)
    side = onnx_sidecar(path)
    doc = {'source_sha256': source, 'onnx_sha256': file_sha256(path),
           'fp32_source_sha256': fp32_source, 'fp32_onnx': Path(fp32).name,
           'calibration': record, 'precision': 'int8',
           'quantize_code_sha256': code_sha256()}
    tmp = side.with_name(f'.{side.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(doc, indent=2) + '\n')
    os.replace(tmp, side)
    return path


def qdq_nodes(path) -> dict:
    """``{node name: op type}`` of the nodes that consume a DequantizeLinear output."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    dq = {o for n in model.graph.node if n.op_type == 'DequantizeLinear' for o in n.output}
    return {n.name: n.op_type for n in model.graph.node
            if n.op_type not in ('QuantizeLinear', 'DequantizeLinear')
            and any(i in dq for i in n.input)}


def int8_maker(camvid, calib_frames: int = 0,
               keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT):
    """
    Return the ``make_int8`` callable of the backends.

    ``(bundle, outputs, size, force, target)`` -> :func:`ensure_int8` calibrated on
    ``camvid``'s ``train`` frames (``KIND:PATH`` or a CamVid root).
    """
    def make(bundle, outputs, size, force=False, target='cpu'):
        return ensure_int8(bundle, outputs, size, camvid=camvid, calib_frames=calib_frames,
                           keep_float=keep_float, force=force, target=target)
    return make
