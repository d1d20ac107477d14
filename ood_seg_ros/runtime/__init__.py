"""
Inference backends behind one small interface (:class:`.base.Backend`), and the factory.

``make_backend`` imports a backend module only when it is chosen: TensorRT, CUDA torch and
ONNX Runtime are optional dependencies of each other's machines.
"""

import importlib.util
from typing import Sequence

from .base import Backend
from ..errors import OodSegError

BACKENDS = ('auto', 'torch', 'onnxruntime', 'tensorrt')


def make_backend(name: str, bundle_path, outputs: Sequence[str], device: str = 'auto',
                 fp16: bool = False, **options) -> Backend:
    """
    Build a backend by name; ``auto`` picks TensorRT, else CUDA PyTorch, else ORT/CPU.

    ``auto`` on a machine without CUDA uses ONNX Runtime when it is installed (fastest
    measured CPU backend), otherwise PyTorch.
    """
    if name not in BACKENDS:
        raise OodSegError(f'unknown backend {name!r}; choose one of {", ".join(BACKENDS)}')
    if name == 'auto':
        name = auto_backend(device)
    if name == 'torch':
        from .torch_backend import TorchBackend
        return TorchBackend(bundle_path, outputs, device=device, fp16=fp16, **options)
    if name == 'onnxruntime':
        from .onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(bundle_path, outputs, device=device, fp16=fp16, **options)
    from .tensorrt_backend import TensorRTBackend
    return TensorRTBackend(bundle_path, outputs, fp16=fp16, **options)


def auto_backend(device: str) -> str:
    """Return what ``auto`` stands for here: TensorRT, else CUDA torch, else ORT, else torch."""
    if device in ('auto', 'cuda'):
        if importlib.util.find_spec('tensorrt') is not None and _cuda_available():
            return 'tensorrt'
        if _cuda_available():
            return 'torch'
    if importlib.util.find_spec('onnxruntime') is not None:
        return 'onnxruntime'
    return 'torch'


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


__all__ = ['auto_backend', 'Backend', 'BACKENDS', 'make_backend']
