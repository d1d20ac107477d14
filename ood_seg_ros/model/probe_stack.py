"""
Export form of the four MOoSe probes: one stack of grouped convolutions.

Every layer of a :class:`~ood_seg_ros.model.deeplab.Probe` acts on its own probe's
channels only, so the four probes side by side are one network whose convolutions have
``groups = 4`` (a depthwise layer stays depthwise): probe ``i`` owns channels
``[i * n, (i + 1) * n)`` of every layer, its weights are copied there unchanged and each
BatchNorm is folded into the convolution before it. The stack runs the four probes as
one convolution per layer instead of four (fewer, larger kernels) and takes the four
ASPP branches concatenated: the ASPP concatenates them once, for its projection
(:class:`SplitProject`) and the stack.

Its probe logits are upsampled to the decoder resolution by two MatMuls with the
bilinear interpolation matrices (:func:`bilinear_matrix`; the same weights as
``F.interpolate(..., mode='bilinear', align_corners=False)``) instead of a Resize.

This is an eval-only, export-time form (:func:`fuse_probes`, used by
:func:`ood_seg_ros.runtime.onnx_cache.export_onnx`): it is built from the trained
per-probe modules, which stay the model's parameters (training, the weights file).
"""

from typing import List, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _folded(conv: nn.Conv2d, bn: nn.Module):
    """Weight and bias of ``conv`` followed by ``bn`` (an eval BatchNorm2d, or Identity)."""
    if not isinstance(bn, nn.BatchNorm2d):
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        return conv.weight.detach(), bias.detach()
    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                bn.eps, bn.weight, bn.bias)
    return w.detach(), b.detach()


def _grouped_conv(pairs: Sequence, like: nn.Conv2d) -> nn.Conv2d:
    """One convolution holding ``pairs`` = [(weight, bias)] per probe along its channels."""
    n = len(pairs)
    conv = nn.Conv2d(like.in_channels * n, like.out_channels * n, like.kernel_size,
                     padding=like.padding, dilation=like.dilation, groups=like.groups * n)
    conv.weight.data.copy_(torch.cat([w for w, _ in pairs]))
    conv.bias.data.copy_(torch.cat([b for _, b in pairs]))
    return conv.requires_grad_(False)


def _conv_bn_pairs(layers: List[nn.Module]):
    """Split a probe's layer list (after the first 1x1) into (conv, bn or None) pairs."""
    pairs = []
    for layer, nxt in zip(layers, layers[1:] + [None]):
        if isinstance(layer, nn.Sequential):
            pairs.extend(_conv_bn_pairs(list(layer)))
        elif isinstance(layer, nn.Conv2d):
            pairs.append((layer, nxt if isinstance(nxt, nn.BatchNorm2d) else None))
    return pairs


class GroupedProbes(nn.Module):
    """
    The probes of a model as one grouped-convolution stack (eval only, BN folded).

    ``forward(branches, pooled)``: ``branches`` (B, P * Cb, h, w), the P ASPP branches
    concatenated (probe ``i`` reads branch ``i``); ``pooled`` (B, Cp, 1, 1), the pooled
    ASPP vector. Returns the probe logits (B, P * C, h, w), probe ``i`` in channels
    ``[i * C, (i + 1) * C)``.
    """

    def __init__(self, probes: Sequence[nn.Module], branch_channels: int,
                 matmul_upsample: bool = True):
        super().__init__()
        self.matmul_upsample = bool(matmul_upsample)
        if any(p.training for p in probes):
            raise ValueError('GroupedProbes is built from probes in eval mode')
        self.n_probes = len(probes)
        first = [(p.net[0], p.net[1]) for p in probes]
        self.n_classes = probes[0].net[-1].out_channels
        folded = [_folded(conv, bn) for conv, bn in first]
        cb = branch_channels
        # the first 1x1 acts on concat(branch, pooled): the branch half is grouped, the
        # pooled half (spatially constant) is one dense 1x1 on the pooled vector
        like = nn.Conv2d(cb, first[0][0].out_channels, 1)
        self.first = _grouped_conv([(w[:, :cb], b) for w, b in folded], like)
        self.register_buffer('pool_weight', torch.cat([w[:, cb:] for w, _ in folded]))
        per_probe = [_conv_bn_pairs(list(p.net)[4:]) for p in probes]
        self.layers = nn.ModuleList(
            _grouped_conv([_folded(*pairs[k]) for pairs in per_probe], per_probe[0][k][0])
            for k in range(len(per_probe[0])))

    def forward(self, branches, pooled: torch.Tensor) -> torch.Tensor:
        """Probe logits (B, P * C, h, w) from the branches (concatenated, or a list)."""
        if not torch.is_tensor(branches):
            branches = torch.cat(list(branches), 1)
        y = self.first(branches) + F.conv2d(pooled, self.pool_weight)
        for conv in self.layers:
            y = conv(F.relu(y))
        return y

    def members(self, z: torch.Tensor, size: Sequence[int], resize) -> torch.Tensor:
        """
        Upsample the probe logits ``z`` (B, P * C, h, w) to ``size``; (P * B, C, H, W).

        Bilinear (align_corners=False): with ``matmul_upsample`` two MatMuls, z @ Rw^T,
        then Rh @ that; otherwise ``resize(z, size)`` (``deeplab.upsample``, a Resize).
        """
        b, (h, w) = z.shape[0], z.shape[-2:]
        if self.matmul_upsample:
            rh = bilinear_matrix(int(size[0]), int(h)).to(z.dtype)
            rw = bilinear_matrix(int(size[1]), int(w)).to(z.dtype)
            up = torch.matmul(rh, torch.matmul(z, rw.t()))
        else:
            up = resize(z, size)
        shape = (self.n_probes, self.n_classes) + tuple(up.shape[-2:])
        if b == 1:      # the exported graphs: no Transpose
            return up.reshape(shape)
        return up.reshape((b,) + shape).transpose(0, 1).reshape((-1,) + shape[1:])


class SplitProject(nn.Module):
    """
    The ASPP projection (1x1 -> BN -> ReLU on concat(branches, pooled broadcast)), eval form.

    The pooled part is spatially constant: it is convolved once as a vector and added, so
    the projection reads the concatenated branches only, the tensor the grouped probes
    read too (one Concat for both, a fifth fewer multiply-adds).
    """

    def __init__(self, project: nn.Sequential, branch_channels: int):
        super().__init__()
        w, b = _folded(project[0][0], project[0][1])
        self.register_buffer('weight', w[:, :branch_channels].contiguous())
        self.register_buffer('bias', b)
        self.register_buffer('pool_weight', w[:, branch_channels:].contiguous())

    def forward(self, branches: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Projected ASPP output from the concatenated branches and the pooled vector."""
        return F.relu(F.conv2d(branches, self.weight, self.bias)
                      + F.conv2d(pooled, self.pool_weight))


def bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """
    (out_size, in_size) matrix R with R @ v = bilinear resize of v (align_corners=False).

    PyTorch's (and ONNX Resize ``half_pixel``'s) source coordinate of output ``i``:
    ``(i + 0.5) * in / out - 0.5``, clamped at 0; the two nearest inputs get the weights
    ``1 - frac`` and ``frac`` (the upper one clamped to the last input).
    """
    scale = in_size / out_size
    # numpy, not torch: the matrix is a constant of the exported graph, not traced ops
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    r = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(r, (rows, lo), 1 - frac)
    np.add.at(r, (rows, hi), frac)
    return torch.from_numpy(r.astype(np.float32))


def fuse_probes(model: nn.Module, matmul_upsample: bool = True) -> nn.Module:
    """
    Put an eval-mode :class:`~ood_seg_ros.model.deeplab.OodSegNet` in its export form.

    The ASPP concatenates its branches once (:class:`SplitProject`) and the probes run as
    :class:`GroupedProbes` on that tensor (with ``matmul_upsample`` upsampled by MatMuls;
    off for a dynamic-size export, whose sizes are not constants). Every graph gets the
    same ASPP, with or without probe outputs. Returns the model.
    """
    if model.training:
        raise ValueError('fuse_probes needs a model in eval mode')
    c = model.config.aspp_channels
    dev = next(model.parameters()).device
    branches = len(model.aspp.branches) * c
    model.aspp.split_project = SplitProject(model.aspp.project, branches).to(dev)
    model.probe_stack = GroupedProbes(list(model.probes), c, matmul_upsample).to(dev)
    return model
