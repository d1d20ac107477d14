"""
ONNX export of a model bundle and the TensorRT 10 operator check.

The graph (see :class:`ood_seg_ros.model.deeplab.OodSegNet`) takes ``image`` float32
(1, 3, H, W) RGB in [0, 1] and returns, in ``model.output_names()`` order, ``semantic``
int32 (1, H, W), optionally ``logits`` (1, C, H, W), ``probs`` (1, C, h, w) and one
(1, h, w) map per score at decoder resolution. All float outputs are float32 in both
precisions.

Choices:

- **Fixed input size by default.** A TensorRT engine is built (and tuned) for one size
  anyway, and fixed shapes let ONNX Runtime and TensorRT fold every shape computation and
  plan memory once. ``dynamic=True`` gives dynamic H/W (batch stays 1) for tools that
  need one graph for many sizes.
- **fp16 variant = half weights, float32 I/O.** The input stays float32 and is cast to
  half inside the graph; float outputs are cast back to float32. The score head already
  computes in float32 (explicit casts in :mod:`ood_seg_ros.scores`), so the graph carries
  its own mixed precision: TensorRT builds it as a strongly typed network and every
  backend sees the same I/O contract in both precisions.
- Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` (fully
  offline, deterministic node names); the graph is checked with ``onnx.checker``.
"""

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Set, Tuple

from ..errors import OodSegError
from ..model.config import parse_size

LOG = logging.getLogger(__name__)
INPUT_NAME = 'image'
DEFAULT_OPSET = 17

# ONNX operators (default domain) that the ONNX parser of TensorRT 10.0 supports, from the
# onnx-tensorrt operator support matrix (docs/operators.md, TensorRT 10.x), minus the ops
# its changelog lists as added after 10.0 (DeformConv 10.1, Blackman/Hamming/HannWindow
# 10.4, STFT 10.5, Attention 10.14, RMSNormalization/RotaryEmbedding/TensorScatter 10.15).
# Per-op restrictions (e.g. Resize modes, constant axes) are not encoded here; the
# TensorRT parser reports those at build time.
TENSORRT10_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid
HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul
Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign
Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


def canonical_outputs(outputs: Optional[Sequence[str]]) -> list:
    """Order output names as the graph does (``OodSegNet.set_outputs``), drop ``semantic``."""
    from ..scores import ALL_SCORES, EXTRA_OUTPUTS
    known = list(EXTRA_OUTPUTS) + list(ALL_SCORES)
    wanted = set(outputs or ())
    unknown = sorted(wanted - set(known) - {'semantic'})
    if unknown:
        raise OodSegError(f'unknown network outputs {unknown}; known: {", ".join(known)}')
    return [o for o in known if o in wanted]


def outputs_tag(outputs: Sequence[str], opset: int = DEFAULT_OPSET) -> str:
    """Short hash of the output set and opset, used in derived file names."""
    text = ','.join(['semantic'] + canonical_outputs(outputs)) + f';opset={opset}'
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def default_onnx_path(bundle_path, outputs: Sequence[str], input_size: Tuple[int, int],
                      fp16: bool = False, opset: int = DEFAULT_OPSET,
                      dynamic: bool = False) -> Path:
    """``<derived>/model_<outputs hash>_<H>x<W>|dyn_<fp32|fp16>.onnx`` (see derived_dir)."""
    from ..model.bundle import derived_dir
    size = 'dyn' if dynamic else f'{int(input_size[0])}x{int(input_size[1])}'
    name = f'model_{outputs_tag(outputs, opset)}_{size}_{"fp16" if fp16 else "fp32"}.onnx'
    return derived_dir(bundle_path) / name


def bundle_sha256(bundle_path) -> str:
    """
    Content hash of a bundle's network: SHA-256 of its weights file and its config.

    Modification times are not used: ``cp -p``, ``rsync -a`` and tar keep old times, so
    a replaced ``weights.pt`` can be older than the graph exported from the previous one.
    """
    from ..model.bundle import read_bundle_json, WEIGHTS
    from ..files import file_sha256
    doc = read_bundle_json(bundle_path)
    wpath = Path(bundle_path) / WEIGHTS
    try:
        weights = file_sha256(wpath)
    except OSError as exc:
        raise OodSegError(f'cannot read {wpath}: {exc.strerror or exc}') from None
    text = json.dumps({'weights_sha256': weights, 'config': doc.get('config')},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def graph_code_sha256() -> str:
    """
    SHA-256 of the code that builds the graph: scores, this module, ``model/``.

    Part of :func:`source_sha256`, so a cached graph exported by other code (a faster or
    corrected score head) is exported again instead of being reused.
    """
    here = Path(__file__).resolve()
    root = here.parents[1]
    files = [root / 'scores.py', here] + sorted((root / 'model').rglob('*.py'))
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b'\0' + f.read_bytes())
    return h.hexdigest()


def source_sha256(bundle_path, outputs: Sequence[str], input_size, fp16: bool = False,
                  opset: int = DEFAULT_OPSET, dynamic: bool = False) -> str:
    """Content hash of what an exported graph is made from: bundle, export options, code."""
    size = 'dyn' if dynamic else [int(v) for v in input_size]
    options = {'outputs': ['semantic'] + canonical_outputs(outputs), 'input_size': size,
               'precision': 'fp16' if fp16 else 'fp32', 'opset': int(opset),
               'graph_code_sha256': graph_code_sha256()}
    text = json.dumps({'bundle_sha256': bundle_sha256(bundle_path), 'export': options},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def onnx_sidecar(path) -> Path:
    """Return the JSON sidecar next to an ONNX file (``<file>.json``)."""
    path = Path(path)
    return path.with_name(path.name + '.json')


def onnx_mismatch(path, expected_source: str) -> Optional[str]:
    """
    Say why the ONNX file at ``path`` is not the graph of ``expected_source``; None: it is.

    The sidecar records the source hash (weights + config + export options) and the ONNX
    file's own SHA-256, so a graph of other weights, a graph copied in from another
    bundle and a damaged file are all told apart from a cache hit.
    """
    from ..files import file_sha256
    path = Path(path)
    if not path.exists():
        return f'no graph {path.name} yet'
    side = onnx_sidecar(path)
    try:
        doc = json.loads(side.read_text())
        if not isinstance(doc, dict):
            raise ValueError('not a JSON object')
    except FileNotFoundError:
        return f'no provenance sidecar {side.name}'
    except (OSError, ValueError) as exc:
        return f'unreadable provenance sidecar {side.name} ({exc})'
    if doc.get('source_sha256') != expected_source:
        return ('exported from other weights, config or export options '
                f'(source hash {str(doc.get("source_sha256"))[:12]}, '
                f'here {expected_source[:12]})')
    if doc.get('onnx_sha256') != file_sha256(path):
        return 'the file does not match the SHA-256 in its sidecar (replaced or damaged)'
    embedded = graph_metadata(path).get('ood_seg.source_sha256')
    if embedded != expected_source:
        return (f'the source hash embedded in the graph ({str(embedded)[:12]}) is not '
                f'{expected_source[:12]} (a foreign graph with a rewritten sidecar)')
    return None


def graph_metadata(path) -> dict:
    """Return the ``metadata_props`` of an ONNX file ({} when it cannot be parsed)."""
    import onnx
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: B902 - protobuf DecodeError and friends: not a graph
        return {}
    return {p.key: p.value for p in graph.metadata_props}


@contextlib.contextmanager
def _shape_following_upsample():
    """
    Let ``deeplab.upsample`` keep traced sizes symbolic (dynamic H/W export).

    The eager helper converts sizes to Python ints, which a trace records as constants;
    during a dynamic export the sizes are passed through as traced values instead.
    """
    import torch.nn.functional as F
    from ..model import deeplab

    def upsample(x, size, align_corners=False):
        return F.interpolate(x, size=tuple(size), mode='bilinear',
                             align_corners=align_corners)

    original = deeplab.upsample
    deeplab.upsample = upsample
    try:
        yield
    finally:
        deeplab.upsample = original


def export_onnx(bundle_path, outputs: Optional[Sequence[str]] = None, out_path=None,
                input_size: Optional[Tuple[int, int]] = None, fp16: bool = False,
                opset: int = DEFAULT_OPSET, dynamic: bool = False) -> Path:
    """
    Export the bundle's network to ONNX and check it; return the file path.

    ``outputs``: score maps / ``logits`` / ``probs`` besides ``semantic`` (None: the
    bundle config's outputs). ``input_size`` (H, W) defaults to the bundle's. The file
    goes to ``out_path`` or :func:`default_onnx_path` (written atomically).
    """
    import warnings

    import onnx
    import torch
    from ..model import load_bundle
    from ..model.bundle import Bundle
    from ..model.probe_stack import fuse_probes

    if opset < 17:
        raise OodSegError(f'ONNX opset must be >= 17, got {opset}')
    bundle_path = Bundle.of(bundle_path)    # bundle.json read once for all below
    bundle = load_bundle(bundle_path, outputs=outputs)
    # the probes as one grouped stack, upsampled by MatMuls at a fixed size
    model = fuse_probes(bundle.model.eval(), matmul_upsample=not dynamic)
    outs = canonical_outputs(model.outputs)
    h, w = parse_size(input_size or bundle.config.input_size)
    source = source_sha256(bundle_path, outs, (h, w), fp16, opset, dynamic)
    path = Path(out_path) if out_path else default_onnx_path(
        bundle_path, outs, (h, w), fp16, opset, dynamic)
    names = model.output_names()
    if fp16:
        model.half()

    class Graph(torch.nn.Module):
        """float32 image -> tuple of outputs in ``names`` order (float32 / int32)."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image):
            """Run the network; cast the fp16 variant's I/O to float32."""
            out = self.net(image.half() if fp16 else image)
            return tuple(out[k].float() if k != 'semantic' and fp16 else out[k]
                         for k in names)

    x = torch.rand(1, 3, h, w)
    dynamic_axes = None
    if dynamic:
        full, dec = ('height', 'width'), ('dec_height', 'dec_width')
        dynamic_axes = {INPUT_NAME: dict(zip((2, 3), full))}
        for k in names:
            axes = (2, 3) if k in ('logits', 'probs') else (1, 2)
            dynamic_axes[k] = dict(zip(axes, full if k in ('semantic', 'logits') else dec))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OodSegError(f'cannot create {path.parent} for the ONNX file: {exc}; '
                          f'choose another place with --out') from exc
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
                (_shape_following_upsample() if dynamic else contextlib.nullcontext()):
            warnings.simplefilter('ignore')
            torch.onnx.export(Graph(model), (x,), str(tmp), input_names=[INPUT_NAME],
                              output_names=names, opset_version=opset,
                              do_constant_folding=True, dynamic_axes=dynamic_axes,
                              dynamo=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        graph = onnx.load(str(tmp))
        got = [o.name for o in graph.graph.output]
        if got != names:
            raise OodSegError(f'exported graph outputs {got} differ from {names}')
        meta = {'ood_seg.outputs': ','.join(names), 'ood_seg.input_size': f'{h}x{w}',
                'ood_seg.precision': 'fp16' if fp16 else 'fp32',
                'ood_seg.dynamic': str(bool(dynamic)).lower(),
                'ood_seg.class_names': ','.join(bundle.config.class_names),
                'ood_seg.bundle_sha256': bundle_sha256(bundle_path),
                'ood_seg.source_sha256': source}
        for k, v in meta.items():
            graph.metadata_props.add(key=k, value=v)
        onnx.save(graph, str(tmp))
        _write_sidecar(tmp, onnx_sidecar(path), source, meta)
        os.replace(tmp, path)
    except OSError as exc:
        raise OodSegError(f'cannot write ONNX file {path}: {exc}') from exc
    except onnx.checker.ValidationError as exc:
        raise OodSegError(f'exported ONNX graph {path} fails onnx.checker: '
                          f'{str(exc).splitlines()[0]}') from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    LOG.info('exported %s (%dx%d, %s, outputs: %s)', path, h, w,
             'fp16' if fp16 else 'fp32', ', '.join(names))
    return path


def _write_sidecar(onnx_file, side: Path, source: str, meta: dict) -> None:
    """Record the source hash and the ONNX file's SHA-256 next to it (atomic write)."""
    from ..files import atomic_write_text, file_sha256
    doc = {'source_sha256': source, 'onnx_sha256': file_sha256(onnx_file),
           **{k.split('.', 1)[1]: v for k, v in meta.items() if k != 'ood_seg.class_names'}}
    atomic_write_text(side, json.dumps(doc, indent=2) + '\n')


def ensure_onnx(bundle_path, outputs: Sequence[str], input_size: Tuple[int, int],
                fp16: bool = False, force: bool = False) -> Path:
    """
    Return the cached ONNX graph for these settings; export it when missing or stale.

    Stale = its sidecar records another content hash of weights + config + export
    options (:func:`source_sha256`), the file differs from the hash in its sidecar, or
    the hash embedded in the graph's metadata differs; the re-export is logged with the
    reason. The export runs in a child process (:func:`export_onnx_isolated`).
    """
    path = default_onnx_path(bundle_path, outputs, input_size, fp16)
    reason = 'forced' if force else onnx_mismatch(
        path, source_sha256(bundle_path, outputs, input_size, fp16))
    if reason:
        log = LOG.info if not path.exists() else LOG.warning
        log('exporting ONNX graph %s: %s (once per bundle, score set and input size; '
            'ood-seg export does it ahead of time)', path, reason)
        export_onnx_isolated(bundle_path, outputs, path, input_size, fp16)
    return path


EXPORT_PROGRESS_S = 5.0     # seconds between "still exporting" log lines
_CHILDREN = {}              # pid -> (process, output path) of running export children


def _export_child(conn, args) -> None:
    """Child process body: export, send ('ok', path) or ('error', message)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent decides when to stop
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        conn.send(('ok', str(export_onnx(*args))))
    except OodSegError as exc:
        conn.send(('error', str(exc)))
    except Exception as exc:  # noqa: B902 - reported to the parent as one line
        conn.send(('error', f'ONNX export failed: {type(exc).__name__}: {exc}'))


def _stop_child(proc, path: Path) -> None:
    """Stop an export child and remove what it had half-written."""
    if proc.is_alive():     # its temporary files are removed here, so no grace period
        proc.kill()
        proc.join(5)
    for tmp in path.parent.glob(f'.{path.name}*.{proc.pid}.tmp'):
        tmp.unlink(missing_ok=True)


def abort_exports() -> None:
    """Stop every running export child (at exit; a signal during an export)."""
    for pid, (proc, path) in list(_CHILDREN.items()):
        _stop_child(proc, path)
        _CHILDREN.pop(pid, None)


def export_onnx_isolated(bundle_path, outputs: Sequence[str], out_path: Path,
                         input_size: Tuple[int, int], fp16: bool = False) -> Path:
    """
    :func:`export_onnx` in a child process; the caller stays responsive.

    The export holds the interpreter lock in long C++ calls (tracing, ``onnx.checker``):
    in the caller's process it would stall the threads that keep publishing and delay a
    signal until it is done. Here the caller waits in short steps (a signal interrupts it
    at once, the child is then stopped and its temporary file removed) and logs the
    progress every :data:`EXPORT_PROGRESS_S` seconds.
    """
    import atexit
    import multiprocessing
    import signal
    import time
    ctx = multiprocessing.get_context('spawn')
    recv, send = ctx.Pipe(duplex=False)
    path = Path(out_path)
    proc = ctx.Process(target=_export_child, name='ood_seg_onnx_export', daemon=True,
                       args=(send, (str(bundle_path), list(outputs), str(path),
                                    tuple(input_size), fp16)))
    if not _CHILDREN:
        atexit.register(abort_exports)
    t0 = time.monotonic()
    # a terminal's Ctrl-C reaches the whole process group: the child starts with SIGINT
    # blocked (inherited) and ignores it once it runs; the parent stops it
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    send.close()
    _CHILDREN[proc.pid] = (proc, path)
    note = t0 + EXPORT_PROGRESS_S
    try:
        while not recv.poll(0.1):
            if not proc.is_alive() and not recv.poll(0):
                raise OodSegError(f'the ONNX export process ended without a result '
                                  f'(exit code {proc.exitcode})')
            if time.monotonic() >= note:
                LOG.info('exporting ONNX graph %s: %.0f s so far', path.name,
                         time.monotonic() - t0)
                note += EXPORT_PROGRESS_S
        status, value = recv.recv()
        proc.join(30)
    except BaseException:
        _stop_child(proc, path)
        raise
    finally:
        _CHILDREN.pop(proc.pid, None)
        recv.close()
    if status != 'ok':
        raise OodSegError(value)
    LOG.info('exported ONNX graph %s in %.1f s', path.name, time.monotonic() - t0)
    return Path(value)


def onnx_ops(path) -> Set[str]:
    """
    Operator types used by the ONNX graph at ``path`` (subgraphs included).

    Operators of a non-default domain are named ``domain::op``.
    """
    import onnx
    path = Path(path)
    if not path.is_file():
        raise OodSegError(f'ONNX file {path} does not exist')
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: B902 - protobuf decode errors of any kind
        raise OodSegError(f'{path} is not a readable ONNX file: {exc}') from exc
    ops: Set[str] = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type if node.domain in ('', 'ai.onnx')
                    else f'{node.domain}::{node.op_type}')
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return ops


def check_tensorrt_ops(path) -> Set[str]:
    """Return the graph's op set; raise OodSegError naming ops TensorRT 10 cannot parse."""
    ops = onnx_ops(path)
    bad = sorted(ops - TENSORRT10_SUPPORTED_OPS)
    if bad:
        raise OodSegError(f'{path} uses operators the TensorRT 10 ONNX parser does not '
                          f'support: {", ".join(bad)}')
    return ops
