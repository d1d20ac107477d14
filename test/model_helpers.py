"""Shared helpers for tests that need a small network with informative outputs."""

import torch
from torch import nn


def lively(model, seed=0):
    """He-initialise every conv (and small BN biases) so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def sml_stats(n_classes, seed=0):
    """Plausible per-member SML statistics (``ModelConfig.sml_stats``) for tests."""
    from ood_seg_ros.model.config import SML_MEMBERS
    g = torch.Generator().manual_seed(seed)
    members = {}
    for m in SML_MEMBERS:
        mean = (torch.rand(n_classes, generator=g) * 2.0).tolist()
        std = (0.5 + torch.rand(n_classes, generator=g)).tolist()
        members[m] = {'mean': mean, 'std': std}
    return {'split': 'train', 'frames': 1, 'members': members}
