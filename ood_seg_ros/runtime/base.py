"""
The backend interface and backend selection.

A backend runs the network graph on one frame already resized to the model's input size
and returns its named outputs as numpy arrays without the batch dimension:
``semantic`` (H, W) uint8 (the graph's int32 ids, cast by the backend), ``probs``
(C, h, w) and score maps (h, w) float32 at decoder resolution (see
:class:`ood_seg_ros.model.deeplab.OodSegNet`).
"""

from abc import ABC, abstractmethod
from typing import Dict, Sequence, Tuple

import numpy as np

from ..errors import OodSegError

BACKENDS = ('auto', 'torch', 'onnxruntime', 'tensorrt')


class Backend(ABC):
    """Runs the graph: uint8 RGB (H, W, 3) at ``input_size`` -> dict of numpy outputs."""

    name: str = ''
    device: str = 'cpu'
    input_size: Tuple[int, int] = (0, 0)
    output_names: Sequence[str] = ()

    @abstractmethod
    def infer(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one frame; ``image`` is uint8 (H, W, 3) RGB of exactly ``input_size``."""

    def check_input(self, image: np.ndarray) -> None:
        """Raise OodSegError unless ``image`` is uint8 (H, W, 3) at the input size."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise OodSegError(f'{self.name} backend: expected a uint8 numpy image, got '
                              f'{getattr(image, "dtype", type(image).__name__)}')
        h, w = self.input_size
        if image.shape != (h, w, 3):
            raise OodSegError(f'{self.name} backend: expected an image of shape '
                              f'({h}, {w}, 3), got {image.shape}')

    def describe(self) -> dict:
        """Backend name, device and precision for logs and diagnostics."""
        return {'backend': self.name, 'device': self.device}


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
    """Return the backend ``auto`` stands for on this machine: TensorRT, CUDA torch, ORT, torch."""
    import importlib.util
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
