"""
ONNX Runtime backend: CPU execution provider, CUDA EP when present.

The ONNX graph is exported from the bundle on first use and cached in
``<bundle>/derived/`` (re-exported when the content hash of the bundle's weights, config
and export options differs from the one recorded beside the graph), or given explicitly
with ``onnx_path`` (then it must carry this bundle's hash in its metadata). The graph's
input size must be the requested one, or the bundle's when none is requested.

``int8=True`` runs the statically quantised QDQ graph (int8 trunk, float score head;
made by :mod:`ood_seg_ros.tools.quantize`, checked by :mod:`.int8_graph`). It must exist
in the cache (``ood-seg export --int8``) unless the caller passes ``make_int8``, a
callable ``(bundle, outputs, size, force, target) -> path`` that makes a missing or stale one
(the offline tools pass one that calibrates on dataset frames; the node never does).

Session settings, measured on a shared 2-core x86 CPU at 360x480 (median ms per network
run while other processes loaded the CPU): graph optimisation level ALL (500; EXTENDED
700, BASIC 770: ALL adds the NCHWc layout kernels), sequential execution (parallel
800), intra-op spin-waiting off (2 threads: 300 vs 455 with spinning: a spinning pool
fights every other process on the CPU, as on a robot). ``threads`` = 0 lets ONNX
Runtime use one thread per physical core.
"""

import logging
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from .base import Backend
from ..errors import OodSegError

LOG = logging.getLogger(__name__)


def session_options(ort, threads: int = 0, spinning: bool = False):
    """
    Session options: optimisation level ALL, sequential, ``threads`` intra-op threads.

    One inter-op thread; intra-op spin-waiting off unless ``spinning`` (a spinning pool
    trades idle CPU for latency and fights every other process on a shared CPU).
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only; failures are raised as OodSegError
    if not spinning:
        so.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return so


class OnnxRuntimeBackend(Backend):
    """Runs the exported graph with ONNX Runtime; same outputs as the torch backend."""

    name = 'onnxruntime'

    def __init__(self, bundle_path, outputs: Sequence[str], device: str = 'auto',
                 fp16: bool = False, input_size=None, threads: int = 0,
                 onnx_path=None, spinning: bool = False, int8: bool = False,
                 make_int8=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise OodSegError('the onnxruntime backend needs ONNX Runtime: '
                              'pip install onnxruntime (or onnxruntime-gpu)') from None
        self._ort = ort
        available = ort.get_available_providers()
        has_cuda = 'CUDAExecutionProvider' in available
        if device not in ('auto', 'cpu') and not device.startswith('cuda'):
            raise OodSegError(f'onnxruntime backend: unknown device {device!r} '
                              f'(auto, cpu, cuda)')
        if device.startswith('cuda') and not has_cuda:
            raise OodSegError('onnxruntime backend: device cuda requested but ONNX Runtime '
                              'has no CUDAExecutionProvider (pip install onnxruntime-gpu)')
        use_cuda = has_cuda and device != 'cpu'
        if fp16 and not use_cuda:
            raise OodSegError('onnxruntime backend: fp16 needs the CUDA execution provider '
                              '(float16 kernels are slow or missing on CPU)')
        if fp16 and int8:
            raise OodSegError('onnxruntime backend: choose fp16 or int8, not both')
        self.device = 'cuda' if use_cuda else 'cpu'
        self.fp16 = bool(fp16)
        self.int8 = bool(int8)
        self.make_int8 = make_int8
        self.threads = int(threads)
        self.spinning = bool(spinning)
        bundle = None
        if bundle_path is not None:
            from ..model.bundle import Bundle
            bundle = Bundle.of(bundle_path)     # read once; passed to the ONNX cache
        self.bundle_path = Path(bundle_path) if bundle_path is not None else None
        if onnx_path is None:
            if bundle is None:
                raise OodSegError('onnxruntime backend: give a bundle or an ONNX file')
            from .onnx_cache import canonical_outputs
            size = tuple(input_size or bundle.input_size)
            wanted = canonical_outputs(outputs)
            self.onnx_path = self._cached_graph(bundle, wanted, size)
            try:
                self.session = self._open(self.onnx_path)
            except OodSegError as exc:  # a damaged cache file: export again, once
                if self.int8 and make_int8 is None:
                    raise
                LOG.warning('%s; exporting it again', exc)
                self.onnx_path = self._cached_graph(bundle, wanted, size, force=True)
                self.session = self._open(self.onnx_path)
        else:
            self.onnx_path = Path(onnx_path)
            self.session = self._open(self.onnx_path)
            if bundle is not None:
                self._check_provenance(bundle)
        if input_size is None and bundle is not None:
            input_size = bundle.input_size
        self._check_graph(outputs, input_size)

    def _cached_graph(self, bundle, outputs, size, force: bool = False) -> Path:
        """Return the cached graph of this precision (exported / quantised when needed)."""
        if self.int8:
            if self.make_int8 is not None:
                return self.make_int8(bundle, outputs, size, force, 'cpu')
            from .int8_graph import cached_int8
            return cached_int8(bundle, outputs, size)
        from .onnx_cache import ensure_onnx
        return ensure_onnx(bundle, outputs, size, self.fp16, force=force)

    def _check_provenance(self, bundle) -> None:
        """Refuse a given ONNX file that was not exported from this bundle's network."""
        from .onnx_cache import bundle_sha256
        meta = self.session.get_modelmeta().custom_metadata_map
        got = meta.get('ood_seg.bundle_sha256')
        if got is None:
            raise OodSegError(f'{self.onnx_path} has no ood_seg provenance metadata: it was '
                              f'not exported by ood-seg export; export it from '
                              f'{self.bundle_path}')
        if got != bundle_sha256(bundle):
            raise OodSegError(f'{self.onnx_path} was exported from another network (bundle '
                              f'hash {got[:12]}), not from {self.bundle_path}; export it '
                              f'again from this bundle')

    @property
    def precision(self) -> str:
        """fp32, fp16 or int8."""
        return 'int8' if self.int8 else ('fp16' if self.fp16 else 'fp32')

    # -- session ---------------------------------------------------------------------
    def session_options(self):
        """Session options of this backend (see :func:`session_options`)."""
        return session_options(self._ort, self.threads, self.spinning)

    def _open(self, path: Path):
        if not path.is_file():
            raise OodSegError(f'ONNX file {path} does not exist')
        providers = ['CPUExecutionProvider']
        if self.device == 'cuda':
            providers.insert(0, 'CUDAExecutionProvider')
        try:
            return self._ort.InferenceSession(str(path), self.session_options(),
                                              providers=providers)
        except Exception as exc:  # noqa: B902 - ORT raises its own pybind11 types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
            raise OodSegError(f'ONNX Runtime cannot load {path}: '
                              f'{type(exc).__name__}: {first[:300]}') from exc

    def _check_graph(self, outputs: Sequence[str], input_size) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != 'tensor(float)' or len(inputs[0].shape) != 4:
            raise OodSegError(f'{self.onnx_path}: expected one float32 (1, 3, H, W) input, '
                              f'got {[(i.name, i.type, i.shape) for i in inputs]}')
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        fixed = all(isinstance(d, int) for d in shape[2:])
        if fixed:
            size = (int(shape[2]), int(shape[3]))
            if input_size is not None and tuple(int(v) for v in input_size) != size:
                raise OodSegError(f'{self.onnx_path} has a fixed input size {size[0]}x'
                                  f'{size[1]}, but {tuple(input_size)} was requested')
        elif input_size is None:
            raise OodSegError(f'{self.onnx_path} has a dynamic input size: give input_size')
        self.input_size = tuple(int(v) for v in (input_size or size))
        names = [o.name for o in self.session.get_outputs()]
        missing = [o for o in ['semantic'] + list(outputs) if o not in names]
        if missing:
            raise OodSegError(f'{self.onnx_path} lacks the outputs {missing} '
                              f'(it has {", ".join(names)})')
        self.output_names = names

    def describe(self) -> dict:
        """Backend, device, precision, ONNX file and execution providers."""
        return {'backend': self.name, 'device': self.device,
                'precision': self.precision,
                'providers': self.session.get_providers(),
                'threads': self.threads, 'spinning': self.spinning,
                'onnx': self.onnx_path.name}

    # -- inference -------------------------------------------------------------------
    def to_input(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB -> float32 (1, 3, H, W) in [0, 1]."""
        x = np.empty((1, 3) + image.shape[:2], np.float32)
        np.divide(image.transpose(2, 0, 1), np.float32(255.0), out=x[0])
        return x

    def infer(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """
        Run one uint8 frame; return numpy outputs without the batch dimension.

        ``semantic`` (H, W) uint8 class ids (the graph's int32 cast, as TorchBackend
        returns), ``probs`` (C, h, w) and score maps (h, w) float32.
        """
        self.check_input(image)
        try:
            out = self.session.run(self.output_names, {self.input_name: self.to_input(image)})
        except Exception as exc:  # noqa: B902 - ORT raises its own pybind11 types
            raise OodSegError(f'ONNX Runtime failed on {self.onnx_path.name}: {exc}') from exc
        res = {k: v[0] for k, v in zip(self.output_names, out)}
        res['semantic'] = res['semantic'].astype(np.uint8)  # class ids, as TorchBackend
        return res
