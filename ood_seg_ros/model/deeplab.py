"""
DeepLabv3+ with MOoSe contextual probes and an in-graph anomaly score head.

Shapes for an input (B, 3, H, W) at output stride 16: ASPP at ~H/16, decoder at ~H/4.
The final 1x1 convolution ``classifier`` (decoder features ψ, E = ``decoder_channels``,
-> C logits) is the layer whose gradient norms PGN measures; the deeper-layer PGN maps
measure the last convolution before it (:meth:`OodSegNet.deep_layer`).
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .backbones import build_backbone
from .config import ModelConfig, SML_MEMBERS
from .. import scores as S
from ..errors import OodSegError

BN_EPS = 1e-3  # of the decoder, ASPP and probe BatchNorms


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1,
                 separable: bool = False) -> nn.Sequential:
    """Conv (optionally depthwise-separable) -> BN -> ReLU, 'same' padding."""
    pad = dilation * (kernel - 1) // 2
    if separable and kernel > 1:
        return nn.Sequential(
            nn.Conv2d(cin, cin, kernel, padding=pad, dilation=dilation, groups=cin,
                      bias=False),
            nn.BatchNorm2d(cin, eps=BN_EPS), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS), nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS), nn.ReLU(inplace=True))


def upsample(x: torch.Tensor, size: Sequence[int], align_corners: bool = False):
    """Bilinear resize of (B, C, h, w) to ``size`` = (H, W)."""
    return F.interpolate(x, size=tuple(int(s) for s in size), mode='bilinear',
                         align_corners=align_corners)


def sml_tensors(config: ModelConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Per-member SML statistics as (M, C) mean and std tensors, rows in member order.

    Members: probe0..probe3, global (the MOoSe member order of :meth:`OodSegNet.forward`).
    Empty (0, C) tensors when the config has no statistics.
    """
    st = config.sml_stats
    if not st:
        empty = torch.zeros(0, config.n_classes)
        return empty, empty.clone()
    mean = torch.tensor([st['members'][m]['mean'] for m in SML_MEMBERS], dtype=torch.float32)
    std = torch.tensor([st['members'][m]['std'] for m in SML_MEMBERS], dtype=torch.float32)
    return mean, std


def score_stats(config: ModelConfig) -> Dict[str, Tuple[float, float]]:
    """Training-split (mean, std) per score name (``sml_stats.scores``; {} without)."""
    st = (config.sml_stats or {}).get('scores') or {}
    return {k: (float(v['mean']), float(v['std'])) for k, v in st.items()}


class ASPP(nn.Module):
    """Four non-pooling branches (1x1 + three atrous 3x3) plus image pooling."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], separable: bool):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout, 1)]
            + [conv_bn_relu(cin, cout, 3, r, separable) for r in rates])
        self.pool = conv_bn_relu(cin, cout, 1)
        self.project = nn.Sequential(conv_bn_relu(cout * 5, cout, 1), nn.Dropout(0.1))
        # export-time form of ``project`` (probe_stack.SplitProject), never trained
        self.split_project = None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor],
                                                torch.Tensor]:
        """
        Return (projected ASPP output, the 4 branch outputs, pooled vector (B, C, 1, 1)).

        In the export form (``split_project`` set) the branch outputs come as one tensor,
        concatenated once for the projection and the grouped probes.
        """
        branches = [b(x) for b in self.branches]
        pooled = self.pool(x.mean((2, 3), keepdim=True))
        if self.split_project is not None:
            cat = torch.cat(branches, 1)
            return self.split_project(cat, pooled), cat, pooled
        out = self.project(torch.cat(branches + [pooled.expand_as(branches[0])], 1))
        return out, branches, pooled


class Probe(nn.Module):
    """MOoSe probe: 1x1 -> BN -> ReLU -> Dropout(0.5) -> d x [3x3 -> BN -> ReLU] -> 1x1."""

    def __init__(self, cin: int, width: int, n_classes: int, depth: int,
                 separable: bool):
        super().__init__()
        layers = [nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width, eps=BN_EPS),
                  nn.ReLU(inplace=True), nn.Dropout(0.5)]
        for _ in range(depth):  # independent layers (the reference code ties them)
            layers.append(conv_bn_relu(width, width, 3, 1, separable))
        layers.append(nn.Conv2d(width, n_classes, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, branch: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """
        Logits (B, C, h, w) at ASPP resolution from an ASPP branch and the pooled vector.

        The first 1x1 conv acts on concat(branch, pooled broadcast); the pooled half is
        spatially constant, so it is convolved once as a (B, 256, 1, 1) vector and added
        (identical result, half the cost of that layer).
        """
        w = self.net[0].weight
        cb = branch.shape[1]
        y = F.conv2d(branch, w[:, :cb]) + F.conv2d(pooled, w[:, cb:])
        for layer in list(self.net)[1:]:
            y = layer(y)
        return y


class OodSegNet(nn.Module):
    """
    DeepLabv3+ + MOoSe probes + score head, one graph.

    ``forward(x)`` takes RGB in [0, 1] (B, 3, H, W) and returns a dict of the outputs
    listed in :meth:`output_names`:

    - ``semantic`` (B, H, W) int32: argmax of the logits upsampled to input size;
    - ``logits`` (B, C, H, W) float32 at input size (only when requested);
    - ``probs`` (B, C, h, w) softmax at decoder resolution (h, w = ~H/4, ~W/4);
    - one (B, h, w) float32 map per configured score at decoder resolution (higher =
      more anomalous; PGN maps are log PGN). Consumers upsample the maps they use
      (:func:`ood_seg_ros.pipeline.upsample_map`), so a deployment moves only those.
    """

    def __init__(self, config: ModelConfig, outputs: Sequence[str] = None):
        super().__init__()
        self.config = config.validate()
        c = config
        self.backbone = build_backbone(c.backbone, c.output_stride)
        self.aspp = ASPP(self.backbone.out_channels, c.aspp_channels, c.aspp_rates,
                         c.separable)
        self.low_project = conv_bn_relu(self.backbone.low_level_channels,
                                        c.low_level_project, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(c.aspp_channels + c.low_level_project, c.decoder_channels, 3,
                         separable=c.separable),
            conv_bn_relu(c.decoder_channels, c.decoder_channels, 3, separable=c.separable))
        self.classifier = nn.Conv2d(c.decoder_channels, c.n_classes, 1)
        self.probes = nn.ModuleList(
            Probe(2 * c.aspp_channels, c.probe_channels, c.n_classes, c.probe_depth,
                  c.probe_separable) for _ in range(4))
        # export-time grouped form of the probes (probe_stack.fuse_probes), never trained
        self.probe_stack = None
        self.register_buffer('mean', torch.tensor(c.mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(c.std).view(1, 3, 1, 1), persistent=False)
        # Constants of the score head (not weights: rebuilt from the config).
        self.register_buffer('ds_kernel', S.gaussian_kernel(), persistent=False)
        mean, std = sml_tensors(c)
        self.register_buffer('sml_mean', mean, persistent=False)
        self.register_buffer('sml_std', std, persistent=False)
        self.score_stats = score_stats(c)
        self.set_outputs(c.outputs if outputs is None else outputs)
        self._score_fns = (S.global_scores, S.moose_scores, S.log_pgn)

    def compile_scores(self) -> None:
        """
        Fuse the score head with ``torch.compile`` (GPU: a few kernels instead of ~100).

        Only the score functions are compiled (seconds, not minutes); the result is
        CUDA-graph capturable. The maths is unchanged.
        """
        self._score_fns = tuple(torch.compile(f, dynamic=False) for f in
                                (S.global_scores, S.moose_scores, S.log_pgn))

    # -- configuration ---------------------------------------------------------------
    def set_outputs(self, outputs: Sequence[str]) -> None:
        """Choose which score maps ``forward`` computes (others cost nothing)."""
        known = S.EXTRA_OUTPUTS + S.ALL_SCORES
        unknown = [o for o in outputs if o not in known and o != 'semantic']
        if unknown:
            raise OodSegError(f'unknown network outputs {unknown}; known: {", ".join(known)}')
        needs_sml = [o for o in outputs if S.NEEDS_SML in S.needs([o])]  # spatial too
        if needs_sml and self.sml_mean.numel() == 0:
            raise OodSegError(f'outputs {needs_sml} need per-class max-logit statistics, '
                              f'which this bundle lacks (ood-seg sml-stats)')
        lacking = [o for o in outputs if o in S.SCORES
                   for m in S.SCORES[o].members if m not in self.score_stats]
        if lacking:
            raise OodSegError(f'outputs {sorted(set(lacking))} need training-split score '
                              f'statistics, which this bundle lacks (ood-seg sml-stats)')
        self.outputs = [o for o in known if o in set(outputs)]

    def output_names(self) -> List[str]:
        """Names of ``forward``'s outputs, in order (``semantic`` first)."""
        return ['semantic'] + list(self.outputs)

    def base_parameters(self):
        """Parameters of the segmentation network (everything but the probes)."""
        probe_ids = {id(p) for p in self.probes.parameters()}
        return [p for p in self.parameters() if id(p) not in probe_ids]

    def rebuild_probes(self, depth: int, width: int, separable: bool) -> None:
        """Replace the probes by freshly initialised ones of another shape (config too)."""
        c = self.config
        c.probe_depth, c.probe_channels, c.probe_separable = depth, width, separable
        c.validate()
        dev = next(self.parameters()).device
        self.probes = nn.ModuleList(
            Probe(2 * c.aspp_channels, width, c.n_classes, depth, separable)
            for _ in range(4)).to(dev)
        self.probe_stack = None

    def freeze_base_for_probes(self) -> None:
        """Probe-only training mode: base frozen (no grad, BN statistics fixed)."""
        self.eval()
        for p in self.base_parameters():
            p.requires_grad_(False)
        self.probes.train()
        for p in self.probes.parameters():
            p.requires_grad_(True)

    # -- the layer before the classifier (deeper-layer PGN) ----------------------------
    def _last_conv_index(self) -> int:
        """Index of the last Conv2d in the decoder's last block (pointwise if separable)."""
        block = self.decoder[-1]
        return max(i for i, m in enumerate(block) if isinstance(m, nn.Conv2d))

    def decode(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder on ``y``; return (ψ, φ = the input of the last conv before K)."""
        block, i = self.decoder[-1], self._last_conv_index()
        phi = y
        for layer in list(self.decoder)[:-1] + list(block)[:i]:
            phi = layer(phi)
        psi = phi
        for layer in list(block)[i:]:
            psi = layer(psi)
        return psi, phi

    def deep_layer(self) -> S.DeepLayer:
        """
        K, BN scale and window of the last conv before K (:func:`scores.log_deep_pgn`).

        The BN scale γ / √(var + ε) comes from the BatchNorm after the conv, or, once
        :func:`ood_seg_ros.model.fold.fold_batch_norms` has folded it, from the
        ``bn_scale`` buffer it leaves on the folded conv.
        """
        block, i = self.decoder[-1], self._last_conv_index()
        conv, bn = block[i], block[i + 1]
        if isinstance(bn, nn.BatchNorm2d):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        else:
            scale = conv.bn_scale
        k = self.classifier.weight
        return S.DeepLayer(k.view(k.shape[0], k.shape[1]), scale, conv.kernel_size[0],
                           conv.dilation[0])

    # -- forward ---------------------------------------------------------------------
    def features(self, x: torch.Tensor, with_probes: bool):
        """Run the network; return (logits at decoder res, ψ, probe logits at ASPP res)."""
        logits, psi, _, probe_logits = self.features_deep(x, with_probes)
        return logits, psi, probe_logits

    def features_deep(self, x: torch.Tensor, with_probes: bool):
        """:meth:`features` plus φ, the input of the last conv before K: (z, ψ, φ, probes)."""
        x = (x - self.mean) / self.std
        low, high = self.backbone(x)
        aspp, branches, pooled = self.aspp(high)
        low = self.low_project(low)
        y = torch.cat([upsample(aspp, low.shape[-2:]), low], 1)
        psi, phi = self.decode(y)
        logits = self.classifier(psi)
        probe_logits = []
        if with_probes and self.probe_stack is not None:
            probe_logits = self.probe_stack(branches, pooled)
        elif with_probes:
            for probe, branch in zip(self.probes, branches):
                # Probe inputs are detached: probes never send gradient into the base.
                probe_logits.append(probe(branch.detach(), pooled.detach()))
        return logits, psi, phi, probe_logits

    def forward_train(self, x: torch.Tensor, with_probes: bool = True):
        """Training forward: (global logits at input size, probe logits at input size)."""
        size = x.shape[-2:]
        logits, _, probe_logits = self.features(x, with_probes)
        return upsample(logits, size), [upsample(z, size) for z in probe_logits]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Inference: the configured outputs (see the class docstring for shapes).

        Score maps stay at decoder resolution (stride 4; probe logits are upsampled to
        it first). The MOoSe reference upsamples the logits to input size before scoring;
        scoring at stride 4 and upsampling the score map is ~16x cheaper and differs by
        sub-pixel interpolation only.
        """
        size = x.shape[-2:]
        want = set(self.outputs)
        spatial = [n for n in S.SPATIAL_SCORES if n in want]
        # Base maps needed: those requested and those a requested variant starts from.
        base = S.base_maps(want)
        parts = S.needs(base)
        logits_low, psi, phi, probe_low = self.features_deep(x, S.NEEDS_PROBES in parts)
        logits = upsample(logits_low, size)
        # max(1).indices is faster than argmax(1) on CPU and exports to ArgMax.
        out = {'semantic': logits.max(1).indices.int()}
        if 'logits' in want:
            out['logits'] = logits
        names = [n for n in base if S.SCORES[n].family == 'global']
        pgn = [n for n in base if S.SCORES[n].family == 'pgn']
        moose = [n for n in base if S.SCORES[n].family == 'moose']
        deep = [n for n in base if S.SCORES[n].family == 'pgn_deep']
        # One log-softmax of the global head, shared by probs, global scores and PGN.
        logp, lse = (S.log_softmax_lse(logits_low.float(), 1)
                     if 'probs' in want or names or pgn or deep else (None, None))
        if 'probs' in want:
            out['probs'] = logp.exp()
        global_fn, moose_fn, pgn_fn = self._score_fns
        # SML statistics per member: rows 0-3 the probes, row 4 the global head.
        sml = [(self.sml_mean[i], self.sml_std[i]) for i in range(self.sml_mean.shape[0])
               ] if S.NEEDS_SML in parts else []
        if names:
            out.update(global_fn(logits_low, names, sml[-1] if sml else None, logp, lse))
        if moose:
            out.update(moose_fn(self._members(probe_low, logits_low), moose, sml or None))
        if pgn:
            out.update(pgn_fn(logits_low, psi, pgn, self.config.pgn_exact,
                              self.config.pgn_bias, logp, self._psi_nonneg()))
        if deep:
            out.update(S.log_deep_pgn(logits_low, psi, phi, self.deep_layer(), deep,
                                      self.config.pgn_exact, logp))
        for name in (n for n in base if S.SCORES[n].family == 'fused'):
            out[name] = S.fused_score(out, S.SCORES[name].members, self.score_stats)
        if spatial:
            out.update(self._spatial(out, logits_low.max(1).indices, spatial))
        return {k: out[k] for k in self.output_names()}

    def _members(self, probe_low, logits_low: torch.Tensor) -> torch.Tensor:
        """
        Stack the MOoSe members to (M, B, C, h, w): the probes, then the global head.

        The probes are upsampled to the decoder resolution by one Resize (batched; the
        grouped stack's output by its MatMuls) and joined with the global logits by one
        Concat (no Split and re-stacking).
        """
        b, size = logits_low.shape[0], logits_low.shape[-2:]
        if self.probe_stack is None:
            probes = upsample(torch.cat(probe_low, 0), size)
        else:
            probes = self.probe_stack.members(probe_low, size, upsample)
        return torch.cat([probes, logits_low], 0).view(
            (probes.shape[0] // b + 1, b) + tuple(logits_low.shape[1:]))

    def _psi_nonneg(self) -> bool:
        """Tell whether ψ is a ReLU output (the decoder's last block ends in one)."""
        return isinstance(self.decoder[-1][-1], nn.ReLU)

    def _spatial(self, maps: Dict[str, torch.Tensor], label: torch.Tensor,
                 names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Spatial variants of base maps; a bsds map reuses its bs map (one suppression)."""
        done: Dict[str, torch.Tensor] = {}
        for name in names:
            base, kind = S.split_spatial(name)
            if kind == 'ds':
                done[name] = S.dilated_smoothing(maps[base], self.ds_kernel)
                continue
            bs = done.get(f'{base}_bs')
            if bs is None:
                bs = S.boundary_suppression(maps[base], label)
            if kind == 'bs':
                done[name] = bs
            else:
                done[name] = S.dilated_smoothing(bs, self.ds_kernel)
        return done
