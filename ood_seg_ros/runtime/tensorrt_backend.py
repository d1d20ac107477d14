"""
TensorRT 10 backend: engine build/cache, device buffers, execute_async_v3 on a stream.

Written against the TensorRT 10 Python API; ``tensorrt`` is imported lazily. Device
buffers are torch CUDA tensors and the stream is a ``torch.cuda.Stream`` (no pycuda).

Precision:

- ``fp16`` (default): built from the fp16 ONNX graph (half weights, float32 I/O, score
  head in float32 through explicit casts) as a *strongly typed* network, so TensorRT
  keeps exactly the graph's precisions;
- ``fp32``: the fp32 graph, no reduced-precision flags;
- ``int8``: *explicit quantization* of the ``tensorrt`` QDQ graph of
  :mod:`ood_seg_ros.tools.quantize` (int8 trunk, symmetric int8 activations and weights with
  the scales calibrated on CamVid train frames, float score head):
  TensorRT sees the Q/DQ layers and runs exactly the quantised layers in int8; the
  network is weakly typed with ``BuilderFlag.INT8`` only, so every layer outside the
  Q/DQ pairs (the score head) stays float32. No TensorRT calibrator is involved.

Engines are cached by :mod:`.engine_cache` in ``<bundle>/derived/engines/``.
"""

import logging
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from .base import Backend
from .engine_cache import engine_file_name, engine_key, plan_engine, write_sidecar
from ..errors import OodSegError
from ..files import file_sha256
from ..model.bundle import derived_dir

LOG = logging.getLogger(__name__)
INSTALL_HINT = ('TensorRT is not installed: pip install tensorrt (x86_64, CUDA 12), or on '
                'Jetson use the python3-libnvinfer packages that come with JetPack')


def import_tensorrt():
    """Import ``tensorrt`` or raise one OodSegError naming what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise OodSegError(INSTALL_HINT) from None
    if int(trt.__version__.split('.')[0]) < 10:
        raise OodSegError(f'TensorRT {trt.__version__} found; this backend needs '
                          f'TensorRT >= 10 (pip install -U tensorrt)')
    return trt


def _torch_dtype(trt, dtype):
    import torch
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64,
             trt.DataType.INT8: torch.int8, trt.DataType.UINT8: torch.uint8,
             trt.DataType.BOOL: torch.bool}
    if dtype not in table:
        raise OodSegError(f'TensorRT tensor type {dtype} is not supported by this backend')
    return table[dtype]


def build_engine(trt, onnx_path, engine_path, precision: str, workspace_mb: int) -> None:
    """
    Parse ``onnx_path`` and write a serialized engine to ``engine_path``.

    fp16: strongly typed (the graph's own precisions); int8: the QDQ graph, weakly
    typed with the INT8 flag (explicit quantization: int8 where the graph has Q/DQ,
    float32 elsewhere); fp32: no precision flags.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0  # explicit batch is the only mode in TensorRT 10
    if precision == 'fp16':
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise OodSegError(f'TensorRT cannot parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision == 'int8':
        config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OodSegError(f'TensorRT failed to build an engine from {onnx_path} '
                          f'(see the TensorRT log above; try a larger --workspace-mb)')
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f'.{engine_path.name}.tmp')
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)


class TensorRTBackend(Backend):
    """Runs a cached TensorRT engine of the bundle's graph on one CUDA GPU."""

    name = 'tensorrt'

    def __init__(self, bundle_path, outputs: Sequence[str], fp16: bool = True,
                 int8: bool = False, make_int8=None,
                 input_size=None, workspace_mb: int = 4096,
                 force_engine_update: bool = False, build_only: bool = False,
                 rebuild: bool = True, engine_path=None, warmup: int = 3,
                 cuda_graphs: bool = False, device: str = 'cuda'):
        trt = import_tensorrt()
        import torch
        from .onnx_cache import canonical_outputs, check_tensorrt_ops, ensure_onnx
        from ..model.bundle import Bundle
        if not torch.cuda.is_available():
            raise OodSegError('the tensorrt backend needs a CUDA GPU (torch sees none)')
        if device not in ('cuda', 'auto') and not str(device).startswith('cuda'):
            raise OodSegError(f'the tensorrt backend runs on CUDA only, got device {device!r}')
        self.trt = trt
        self.device = 'cuda'
        self.precision = 'int8' if int8 else ('fp16' if fp16 else 'fp32')
        bundle = Bundle.of(bundle_path)    # read once; passed to the ONNX cache
        self.input_size = tuple(int(v) for v in (input_size or bundle.input_size))
        wanted = canonical_outputs(outputs)
        if self.precision == 'int8':
            if make_int8 is not None:        # the tools calibrate; the node never does
                onnx_path = make_int8(bundle, wanted, self.input_size, False, 'tensorrt')
            else:
                from .int8_graph import cached_int8
                onnx_path = cached_int8(bundle, wanted, self.input_size, target='tensorrt')
        else:
            onnx_path = ensure_onnx(bundle, wanted, self.input_size,
                                    fp16=self.precision == 'fp16')
        check_tensorrt_ops(onnx_path)
        key = engine_key(file_sha256(onnx_path), self.precision, self.input_size,
                         torch.cuda.get_device_name(), torch.cuda.get_device_capability(),
                         trt.__version__)
        cache = derived_dir(bundle) / 'engines'
        self.engine_path = Path(engine_path) if engine_path else cache / engine_file_name(key)
        action, reason = plan_engine(self.engine_path, key, force_engine_update, rebuild)
        if action == 'build':
            self._build(onnx_path, key, reason, workspace_mb)
        self.output_names = ['semantic'] + wanted
        self.engine = None
        self.cuda_graphs = bool(cuda_graphs)
        self._graph = None
        if build_only:
            return
        self._load(rebuild=rebuild, onnx_path=onnx_path, key=key, workspace_mb=workspace_mb)
        self._allocate()
        for _ in range(max(1, int(warmup))):
            self._execute()
        torch.cuda.synchronize()

    # -- engine ----------------------------------------------------------------------
    def _build(self, onnx_path, key, reason, workspace_mb):
        LOG.warning('building TensorRT %s engine %s (%s): this can take several minutes '
                    '(much longer on Jetson) and happens once per GPU, TensorRT version, '
                    'precision and input size', self.precision, self.engine_path, reason)
        build_engine(self.trt, onnx_path, self.engine_path, self.precision, workspace_mb)
        write_sidecar(self.engine_path, key, workspace_mb=int(workspace_mb),
                      onnx=Path(onnx_path).name)
        LOG.warning('TensorRT engine ready: %s', self.engine_path)

    def _load(self, rebuild, onnx_path, key, workspace_mb):
        trt = self.trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None and rebuild:
            self._build(onnx_path, key, 'the cached engine failed to deserialize',
                        workspace_mb)
            self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise OodSegError(f'TensorRT cannot deserialize {self.engine_path} (corrupt or '
                              f'built by another TensorRT version); rebuild it with '
                              f'--force-engine-update')
        self.context = self.engine.create_execution_context()

    def _allocate(self):
        import torch
        trt = self.trt
        self.stream = torch.cuda.Stream()
        self.tensors: Dict[str, 'torch.Tensor'] = {}
        self.host: Dict[str, 'torch.Tensor'] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names
                  if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise OodSegError(f'{self.engine_path}: expected one input tensor, got {inputs}')
        self.input_name = inputs[0]
        h, w = self.input_size
        if tuple(self.engine.get_tensor_shape(self.input_name)) != (1, 3, h, w):
            raise OodSegError(f'{self.engine_path}: input shape '
                              f'{tuple(self.engine.get_tensor_shape(self.input_name))} '
                              f'is not (1, 3, {h}, {w})')
        missing = [n for n in self.output_names if n not in names]
        if missing:
            raise OodSegError(f'{self.engine_path} lacks the outputs {missing}')
        for n in names:
            shape = tuple(self.engine.get_tensor_shape(n))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(n))
            self.tensors[n] = torch.empty(shape, dtype=dtype, device='cuda')
            self.context.set_tensor_address(n, int(self.tensors[n].data_ptr()))
            if n != self.input_name:  # semantic leaves as uint8 class ids, as TorchBackend
                self.host[n] = torch.empty(shape, pin_memory=True,
                                           dtype=torch.uint8 if n == 'semantic' else dtype)
        self.semantic_u8 = torch.empty(tuple(self.tensors['semantic'].shape),
                                       dtype=torch.uint8, device='cuda')
        self.staging = torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=True)
        self.frame = torch.empty((h, w, 3), dtype=torch.uint8, device='cuda')

    def _execute(self):
        """Enqueue the engine on the backend's stream (or replay its CUDA graph)."""
        import torch
        if self.cuda_graphs and self._graph is None:
            with torch.cuda.stream(self.stream):  # one plain run flushes deferred setup
                self.context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
        if self._graph is not None:
            with torch.cuda.stream(self.stream):
                self._graph.replay()
        elif not self.context.execute_async_v3(self.stream.cuda_stream):
            raise OodSegError(f'TensorRT execution failed for {self.engine_path.name}')

    def describe(self) -> dict:
        """Backend, precision, engine file and GPU."""
        import torch
        return {'backend': self.name, 'device': torch.cuda.get_device_name(),
                'precision': self.precision, 'tensorrt': self.trt.__version__,
                'engine': self.engine_path.name, 'cuda_graphs': self.cuda_graphs}

    # -- inference -------------------------------------------------------------------
    def infer(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """
        Run one uint8 frame; return numpy outputs without the batch dimension.

        ``semantic`` (H, W) uint8 class ids, ``probs`` (C, h, w) and score maps (h, w)
        float32; outputs are fresh arrays (the pinned buffers are reused).
        """
        import torch
        if self.engine is None:
            raise OodSegError('this TensorRT backend was created with build_only=True')
        self.check_input(image)
        with torch.cuda.stream(self.stream):
            self.staging.numpy()[...] = image
            self.frame.copy_(self.staging, non_blocking=True)
            x = self.tensors[self.input_name]
            x.copy_(self.frame.permute(2, 0, 1).unsqueeze(0))
            x.div_(255.0)
            self._execute()
            self.semantic_u8.copy_(self.tensors['semantic'])
            for n in self.output_names:
                src = self.semantic_u8 if n == 'semantic' else self.tensors[n]
                self.host[n].copy_(src, non_blocking=True)
        self.stream.synchronize()
        return {n: self.host[n][0].numpy().copy() for n in self.output_names}
