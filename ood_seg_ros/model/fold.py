"""
Inference-time folding of BatchNorm into the convolution before it (PyTorch backend).

Eager PyTorch runs every BatchNorm as a separate pass over its feature map; folded, the
convolution's weights and bias carry the affine map and the pass disappears (ONNX export
and TensorRT fold the same pairs themselves). Only eval-mode models are folded, and the
MOoSe probes are left as they are: their first convolution is applied in two parts
(:class:`ood_seg_ros.model.deeplab.Probe`).
"""

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .deeplab import Probe


def _fold_pair(owner: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return False
    fused = fuse_conv_bn_eval(conv, bn)
    # The BN scale γ / √(var + ε), kept for the deeper-layer PGN (OodSegNet.deep_layer).
    fused.register_buffer('bn_scale', (bn.weight / torch.sqrt(bn.running_var + bn.eps))
                          .detach().clone(), persistent=False)
    setattr(owner, conv_name, fused)
    setattr(owner, bn_name, nn.Identity())
    return True


def fold_batch_norms(model: nn.Module) -> int:
    """
    Fold each BatchNorm2d that directly follows a Conv2d into it; return how many.

    The pairs are the consecutive (Conv2d, BatchNorm2d) children of every ``nn.Sequential``
    and the ``(conv, bn)`` attribute names a module lists in ``BN_AFTER_CONV``. The model
    must be in eval mode (running statistics); its outputs stay the same up to rounding.
    """
    if model.training:
        raise ValueError('fold_batch_norms needs a model in eval mode')
    probes = {id(m) for p in model.modules() if isinstance(p, Probe) for m in p.modules()}
    folded = 0
    for module in list(model.modules()):
        if id(module) in probes:
            continue
        for conv_name, bn_name in getattr(module, 'BN_AFTER_CONV', ()):
            folded += _fold_pair(module, conv_name, bn_name)
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                folded += _fold_pair(module, str(i), str(i + 1))
    return folded
