"""
PyTorch backend: CPU or CUDA, optional fp16 and CUDA graphs.

CPU threads: ``threads`` (0: torch's default, all cores) with OpenMP's passive waiting
(``OMP_WAIT_POLICY=PASSIVE``, set by the package before torch is imported, see
``ood_seg_ros/__init__.py``), which keeps several threads faster than one on a CPU
shared with other processes.
"""

import logging
from typing import Dict, Sequence

import numpy as np
import torch

from .base import Backend
from ..errors import OodSegError
from ..model import load_bundle
from ..model.fold import fold_batch_norms

LOG = logging.getLogger(__name__)


def _warn_if_spinning() -> None:
    """Log once when torch was imported before the package could make OpenMP wait passively."""
    import ood_seg_ros
    if ood_seg_ros.TORCH_IMPORTED_FIRST and not getattr(_warn_if_spinning, 'done', False):
        _warn_if_spinning.done = True
        LOG.warning('torch was imported before ood_seg_ros with OMP_WAIT_POLICY unset: its '
                    'CPU threads spin-wait, which is slow on a shared CPU; set '
                    'OMP_WAIT_POLICY=PASSIVE or threads: 1')


class TorchBackend(Backend):
    """
    Runs the bundle's network with PyTorch.

    On CUDA the uint8 frame is uploaded and converted on the GPU; ``cuda_graphs``
    captures the whole forward once and replays it (static input/output buffers). The
    BatchNorms of a bundle the backend loads itself are folded into the convolutions
    (:mod:`ood_seg_ros.model.fold`); a ``bundle`` passed in is left unchanged.
    """

    name = 'torch'

    def __init__(self, bundle_path, outputs: Sequence[str], device: str = 'auto',
                 fp16: bool = False, cuda_graphs: bool = False, threads: int = 0,
                 bundle=None, input_size=None, compile_scores: bool = False):
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise OodSegError('torch backend: device cuda requested but CUDA is not available')
        if fp16 and not device.startswith('cuda'):
            raise OodSegError('torch backend: fp16 needs a CUDA device')
        if threads:
            torch.set_num_threads(threads)
        if device == 'cpu' and torch.get_num_threads() > 1:
            _warn_if_spinning()
        self.bundle = bundle or load_bundle(bundle_path, outputs=outputs)
        self.model = self.bundle.model
        self.model.set_outputs(outputs)
        self.device = device
        self.fp16 = fp16
        self.dtype = torch.float16 if fp16 else torch.float32
        self.model.eval()
        if bundle is None:      # our own copy: fold BatchNorm into the convolutions
            fold_batch_norms(self.model)
        self.model.to(device=device, dtype=self.dtype)
        self.compiled = bool(compile_scores)
        if compile_scores:
            self.model.compile_scores()
        self.input_size = tuple(input_size or self.bundle.config.input_size)
        self.output_names = self.model.output_names()
        self.cuda_graphs = bool(cuda_graphs and device.startswith('cuda'))
        self._graph = None
        self._host = {}
        self._pinned_in = None

    def describe(self) -> dict:
        """Backend, device and precision."""
        return {'backend': self.name, 'device': self.device,
                'precision': 'fp16' if self.fp16 else 'fp32', 'cuda_graphs': self.cuda_graphs,
                'compile_scores': self.compiled}

    def _to_input(self, image: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(image)
        if self.device.startswith('cuda'):
            if self._pinned_in is None or self._pinned_in.shape != t.shape:
                self._pinned_in = torch.empty(t.shape, dtype=torch.uint8, pin_memory=True)
            self._pinned_in.copy_(t)
            t = self._pinned_in.to(self.device, non_blocking=True)
        return t.permute(2, 0, 1).unsqueeze(0).to(self.dtype).div_(255.0)

    @torch.inference_mode()
    def run_tensor(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Forward on a prepared (1, 3, H, W) tensor; outputs stay on the device."""
        if not self.cuda_graphs:
            return self.model(x)
        if self._graph is None:
            self._capture(x)
        self._static_in.copy_(x)
        self._graph.replay()
        return self._static_out

    def _capture(self, x: torch.Tensor) -> None:
        self._static_in = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up allocations outside the graph
                self.model(self._static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self.model(self._static_in)

    def infer(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """
        Run one uint8 frame; return numpy outputs without batch dimension.

        On CUDA every output is converted on the device (``semantic`` to uint8, maps to
        float32) and copied asynchronously into reused pinned host buffers, with a
        single synchronisation at the end.
        """
        self.check_input(image)
        out = self.run_tensor(self._to_input(image))
        if not self.device.startswith('cuda'):
            return {k: v[0].numpy() if k != 'semantic' else v[0].to(torch.uint8).numpy()
                    for k, v in out.items()}
        host = {}
        for k, v in out.items():
            v = v[0].to(torch.uint8) if k == 'semantic' else v[0].float()
            buf = self._host.get(k)
            if buf is None or buf.shape != v.shape:
                buf = self._host[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
            buf.copy_(v, non_blocking=True)
            host[k] = buf
        torch.cuda.current_stream().synchronize()
        return {k: v.numpy().copy() for k, v in host.items()}
