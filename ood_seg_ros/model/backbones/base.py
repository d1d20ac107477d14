"""
The contract every backbone keeps, and the strict state-dict check used to load weights.

A backbone is an ``nn.Module`` that maps normalised RGB (B, 3, H, W) to
``(low_level, high_level)`` features: ``low_level`` at stride 4 with
``low_level_channels`` channels (the DeepLabv3+ decoder's skip input), ``high_level`` at
``output_stride`` (8, 16 or 32; further strides become dilations) with ``out_channels``
channels (the ASPP input). The two channel counts are attributes set in code, read by
:class:`ood_seg_ros.model.deeplab.OodSegNet` before the first forward.
"""

from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch
from torch import nn

from ...errors import OodSegError

OUTPUT_STRIDES = (8, 16, 32)


class Backbone(nn.Module):
    """Base class of the backbones: the channel contract and the output-stride check."""

    #: channels of the stride-4 feature (decoder skip input)
    low_level_channels: int = 0
    #: channels of the last feature (ASPP input)
    out_channels: int = 0

    def __init__(self, output_stride: int):
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise OodSegError(f'output_stride must be 8, 16 or 32, got {output_stride}')
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Map normalised RGB (B, 3, H, W) to (low-level stride 4, high-level) features."""
        raise NotImplementedError

    def stage_modules(self) -> List[List[nn.Module]]:
        """Return the modules of each stage, input side first (the stem in the first)."""
        raise OodSegError(f'{type(self).__name__} does not list its stages (no freezing)')

    def freeze_stages(self, n: int) -> None:
        """
        Freeze the first ``n`` stages for training: no gradients, BN statistics fixed.

        The frozen modules stay in eval mode whatever ``train()`` is called with, so
        their BatchNorms use and keep their running statistics.
        """
        stages = self.stage_modules()
        if not 0 <= n <= len(stages):
            raise OodSegError(f'freeze_stages must be 0..{len(stages)}, got {n}')
        self._frozen = [m for stage in stages[:n] for m in stage]
        for p in (p for m in self._frozen for p in m.parameters()):
            p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> 'Backbone':
        """Set the training mode; frozen stages (:meth:`freeze_stages`) stay in eval."""
        super().train(mode)
        for m in getattr(self, '_frozen', ()):
            m.eval()
        return self


@dataclass(frozen=True)
class BackboneSpec:
    """
    One registered backbone.

    ``build(output_stride)`` returns a :class:`Backbone`; ``load_imagenet(backbone)``
    copies ImageNet weights into it strictly and returns counts for logging, or raises
    OodSegError saying why none are installable here.
    """

    name: str
    build: Callable[[int], Backbone]
    load_imagenet: Callable[[Backbone], dict]


def check_state(model: nn.Module, state: dict, source: str, verb: str) -> None:
    """
    Raise OodSegError unless ``state`` fits ``model`` key for key and shape for shape.

    The message reads ``<source> <verb>: ...`` and names the first offending tensors.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unused = sorted(set(state) - set(own))
    if missing or unused:
        raise OodSegError(f'{source} {verb}: {len(missing)} missing (first: {missing[:3]}), '
                          f'{len(unused)} unused (first: {unused[:3]})')
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise OodSegError(f'{source} {verb}: tensor {key} has shape '
                              f'{tuple(value.shape)}, expected {tuple(own[key].shape)}')
