"""
The backend interface (the factory, ``make_backend``, is in the package ``__init__``).

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
