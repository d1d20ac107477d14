"""Shared helpers for tests that need a small network with informative outputs."""

import builtins
import os
import pathlib

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
    """Plausible per-member SML and fused-score statistics (``ModelConfig.sml_stats``)."""
    from ood_seg_ros.model.config import SML_MEMBERS
    from ood_seg_ros.tools.sml import STAT_SCORES
    g = torch.Generator().manual_seed(seed)
    members = {}
    for m in SML_MEMBERS:
        mean = (torch.rand(n_classes, generator=g) * 2.0).tolist()
        std = (0.5 + torch.rand(n_classes, generator=g)).tolist()
        members[m] = {'mean': mean, 'std': std}
    scores = {n: {'mean': float(torch.randn(1, generator=g)),
                  'std': float(0.5 + torch.rand(1, generator=g))} for n in STAT_SCORES}
    return {'split': 'train', 'frames': 1, 'members': members, 'scores': scores}


def save_tiny_bundle(path, size, info=None):
    """
    Save a small untrained bundle (input ``size`` (H, W)) with random BN statistics.

    Random BN statistics give the untrained network varied, O(1) activations; the
    heatmap score is moose_entropy (natural bounds, no calibration needed).
    """
    from ood_seg_ros.model import ModelConfig, OodSegNet, save_bundle
    torch.manual_seed(0)
    model = OodSegNet(ModelConfig(input_size=size, aspp_channels=32, decoder_channels=32,
                                  low_level_project=16, probe_channels=16))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
    return save_bundle(path, model.eval(), runtime={'heatmap_score': 'moose_entropy'},
                       info=info, half=False)


def count_bundle_json_reads(monkeypatch):
    """Count every read of a ``bundle.json`` through open() or Path.read_text/bytes."""
    reads = []
    real_open, real_text, real_bytes = builtins.open, pathlib.Path.read_text, \
        pathlib.Path.read_bytes

    def is_bundle_json(file):
        return isinstance(file, (str, os.PathLike)) and \
            os.path.basename(os.fspath(file)) == 'bundle.json'

    def counting_open(file, mode='r', *args, **kw):
        if is_bundle_json(file) and 'r' in mode:
            reads.append(os.fspath(file))
        return real_open(file, mode, *args, **kw)

    def counting_text(self, *args, **kw):
        if is_bundle_json(self):
            reads.append(str(self))
        return real_text(self, *args, **kw)

    def counting_bytes(self):
        if is_bundle_json(self):
            reads.append(str(self))
        return real_bytes(self)

    monkeypatch.setattr(builtins, 'open', counting_open)
    monkeypatch.setattr(pathlib.Path, 'read_text', counting_text)
    monkeypatch.setattr(pathlib.Path, 'read_bytes', counting_bytes)
    return reads
