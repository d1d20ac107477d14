"""
Anomaly score math: every score map of the graph, one implementation.

Entropy, MSP, max-logit, energy, SML, MOoSe aggregation, PGN, and the spatial
post-processing of a score map (boundary suppression, dilated smoothing).

One implementation, used inside the network graph (so it exports to ONNX / TensorRT)
and by the tests. Only ordinary tensor ops: no autograd, no in-place tricks. All scores
follow one convention: **higher = more anomalous**. Tensors are (B, C, H, W) logits or
(B, E, H, W) features; score maps are (B, H, W) float32.

PGN (methods §3) is returned as ``log PGN`` (the (1/p)-th power of a p < 1 norm
overflows float32 and float16): log PGN = log‖g‖_p + log‖ψ‖_p, both computed in float32
from power sums whose exponent p ≤ 2 keeps them finite.
"""

import math
from typing import Dict, Iterable, List, Sequence

import torch
import torch.nn.functional as F

PGN_PS = (0.1, 0.3, 0.5, 1.0, 2.0)
PGN_MODES = ('oh', 'uni')
GLOBAL_SCORES = ('msp', 'entropy', 'max_logit', 'energy', 'sml')
MOOSE_SCORES = ('moose_msp', 'moose_entropy', 'moose_max_logit', 'moose_mi', 'moose_energy',
                'moose_sml')
# Scores that need per-class max-logit statistics (``ModelConfig.sml_stats``).
SML_SCORES = ('sml', 'moose_sml')
_TINY = 1e-30
_NEG = -1e30
_LOG_ZERO = -1e4  # log of 'zero': exp(0.1 * -1e4) underflows to 0 in float32


def p_tag(p: float) -> str:
    """Name fragment of a PGN exponent: 0.1 -> '0.1', 1.0 -> '1'."""
    return f'{float(p):g}'


def pgn_name(mode: str, p: float) -> str:
    """Output name of a PGN score map, e.g. ``pgn_uni_p0.5``."""
    return f'pgn_{mode}_p{p_tag(p)}'


def parse_pgn_name(name: str):
    """Inverse of :func:`pgn_name`: ``'pgn_oh_p2'`` -> ``('oh', 2.0)``."""
    _, mode, p = name.split('_')
    return mode, float(p[1:])


ALL_PGN_SCORES = tuple(pgn_name(m, p) for m in PGN_MODES for p in PGN_PS)
BASE_SCORES = GLOBAL_SCORES + MOOSE_SCORES + ALL_PGN_SCORES
# Spatially post-processed variants ``<base>_<kind>`` (see :func:`spatial_postprocess`):
# bs = boundary suppression, ds = dilated smoothing, bsds = both, in that order.
SPATIAL_KINDS = ('bs', 'ds', 'bsds')
SPATIAL_BASES = ('max_logit', 'energy', 'sml', 'moose_entropy', 'moose_max_logit',
                 'pgn_uni_p0.5')
SPATIAL_SCORES = tuple(f'{b}_{k}' for b in SPATIAL_BASES for k in SPATIAL_KINDS)
ALL_SCORES = BASE_SCORES + SPATIAL_SCORES


def split_spatial(name: str):
    """``'sml_bsds'`` -> ``('sml', 'bsds')``; a base score -> ``(name, None)``."""
    if name in SPATIAL_SCORES:
        base, kind = name.rsplit('_', 1)
        return base, kind
    return name, None


# Non-score graph outputs that can be requested besides the always-present `semantic`.
EXTRA_OUTPUTS = ('logits', 'probs')


def entropy_from_logits(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax entropy in nats; never NaN (xlogy-style via log_softmax)."""
    logp = F.log_softmax(logits.float(), dim=dim)
    return -(logp.exp() * logp).sum(dim)


def entropy_from_probs(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of probability vectors in nats; 0 * log 0 counts as 0."""
    probs = probs.float()
    return -(probs * torch.log(probs.clamp_min(_TINY))).sum(dim)


def standardised_max_logit(logits: torch.Tensor, mean: torch.Tensor,
                           std: torch.Tensor) -> torch.Tensor:
    """
    SML = -(max_c z - mu_c^) / sigma_c^ with c^ the predicted class; logits (B, C, H, W).

    ``mean`` / ``std`` (C,) are the per-class statistics of the max logit of pixels
    predicted as that class (gathered on the training split, :mod:`ood_seg_ros.sml`).
    The per-pixel statistics are selected with the one-hot of c^ (no Gather: plain
    multiply-add in every runtime).
    """
    z = logits.float()
    top = z.max(1)
    onehot = F.one_hot(top.indices, z.shape[1]).permute(0, 3, 1, 2).to(z.dtype)
    mu = (onehot * mean.view(1, -1, 1, 1).to(z.dtype)).sum(1)
    sigma = (onehot * std.view(1, -1, 1, 1).to(z.dtype)).sum(1)
    return -(top.values - mu) / sigma


def global_scores(logits: torch.Tensor, names: Iterable[str],
                  sml_stats=None) -> Dict[str, torch.Tensor]:
    """
    Single-head scores from logits (B, C, H, W).

    ``msp``, ``entropy``, ``max_logit`` (= -max z), ``energy`` (= -logsumexp z, T = 1) and
    ``sml`` (needs ``sml_stats`` = (mean (C,), std (C,)) of this head).
    """
    out = {}
    z = logits.float()
    if 'msp' in names:
        out['msp'] = 1.0 - F.softmax(z, 1).amax(1)
    if 'entropy' in names:
        out['entropy'] = entropy_from_logits(z)
    if 'max_logit' in names:
        out['max_logit'] = -z.amax(1)
    if 'energy' in names:
        out['energy'] = -_logsumexp(z, 1)
    if 'sml' in names:
        if sml_stats is None:
            raise ValueError('sml needs per-class max-logit statistics (ood-seg sml-stats)')
        out['sml'] = standardised_max_logit(z, *sml_stats)
    return out


def moose_scores(member_logits: Sequence[torch.Tensor], names: Iterable[str],
                 sml_stats=None) -> Dict[str, torch.Tensor]:
    """
    Compute the MOoSe scores over M members (probes + global head), equal weights.

    ``member_logits``: M tensors (B, C, H, W) at the same resolution. p̄ = mean softmax;
    MSP = 1 - max p̄, H = entropy(p̄), ML = -max_c mean_m z, MI = H(p̄) - mean_m H(p_m),
    energy = -logsumexp_c mean_m z, SML = mean_m SML_m with each member's own statistics
    (``sml_stats``: M pairs (mean (C,), std (C,)), in member order).
    """
    names = set(names)
    out = {}
    zs = [z.float() for z in member_logits]
    m = float(len(zs))
    need_probs = names & {'moose_msp', 'moose_entropy', 'moose_mi'}
    if need_probs:
        logps = [F.log_softmax(z, 1) for z in zs]
        probs = [lp.exp() for lp in logps]
        p_mean = sum(probs) / m
        if 'moose_msp' in names:
            out['moose_msp'] = 1.0 - p_mean.amax(1)
        if names & {'moose_entropy', 'moose_mi'}:
            h_mean = entropy_from_probs(p_mean)
            if 'moose_entropy' in names:
                out['moose_entropy'] = h_mean
            if 'moose_mi' in names:
                mean_h = sum(-(p * lp).sum(1) for p, lp in zip(probs, logps)) / m
                out['moose_mi'] = (h_mean - mean_h).clamp_min(0.0)
    if names & {'moose_max_logit', 'moose_energy'}:
        z_mean = sum(zs) / m
        if 'moose_max_logit' in names:
            out['moose_max_logit'] = -z_mean.amax(1)
        if 'moose_energy' in names:
            out['moose_energy'] = -_logsumexp(z_mean, 1)
    if 'moose_sml' in names:
        if sml_stats is None or len(sml_stats) != len(zs):
            raise ValueError('moose_sml needs max-logit statistics for every member')
        out['moose_sml'] = sum(standardised_max_logit(z, *st)
                               for z, st in zip(zs, sml_stats)) / m
    return out


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max-shifted log-sum-exp written with basic ops (robust in every runtime)."""
    m = x.amax(dim, keepdim=True)
    return (x - m).exp().sum(dim).log() + m.squeeze(dim)


def log_error_pnorms(logits: torch.Tensor, mode: str, ps: Sequence[float],
                     exact: bool = False) -> List[torch.Tensor]:
    """
    log‖g‖_p per pixel for each p; logits (B, C, H, W) -> list of (B, H, W).

    Paper (default): oh: g_h = σ_h (1 - δ_{h,ŷ}); uni: g_h = (C - 1)/C σ_h.
    Exact cross-entropy gradient (``exact=True``): g = σ - y with y = one-hot(ŷ) (oh)
    or 1/C (uni).
    """
    z = logits.float()
    c = z.shape[1]
    logp = F.log_softmax(z, 1)
    if mode == 'oh':
        # One-hot of ŷ (max(1).indices: ~10x faster than argmax on CPU, same result).
        onehot = F.one_hot(z.max(1).indices, c).permute(0, 3, 1, 2).to(z.dtype)
        # log σ_h for h != ŷ; the predicted class is masked out with a huge negative.
        log_others = logp + onehot * _NEG
        if exact:
            # |σ_ŷ - 1| = Σ_{h≠ŷ} σ_h, computed stably in the log domain.
            log_pred = _logsumexp(log_others, 1).unsqueeze(1)
            log_abs = log_others * (1 - onehot) + log_pred * onehot
        else:
            log_abs = log_others
    elif mode == 'uni':
        if exact:
            dev = (logp.exp() - 1.0 / c).abs()
            # Entries with |σ_h - 1/C| == 0 get log -1e4 (exp(p * -1e4) = 0), finite.
            log_abs = torch.log(dev.clamp_min(_TINY)) + (1 - torch.sign(dev)) * _LOG_ZERO
        else:
            log_abs = logp + math.log((c - 1.0) / c)
    else:
        raise ValueError(f'unknown PGN label mode {mode!r}; use one of {PGN_MODES}')
    # All p at once: (P, B, C, H, W) -> logsumexp over C -> (P, B, H, W). Python-float
    # scalars only (no host-to-device tensor copies: CUDA-graph capture forbids them).
    scaled = torch.stack([log_abs * float(p) for p in ps])
    lse = _logsumexp(scaled, 2)
    return [lse[i] / float(p) for i, p in enumerate(ps)]


def _pow_terms(log_a: torch.Tensor, nonzero: torch.Tensor, p: float) -> torch.Tensor:
    """
    |v|^p as exp(p · log max(|v|, tiny)) · sign(|v|): exactly 0 where v == 0.

    Clamping |v| alone would not do ((1e-30)^0.1 = 1e-3 per zero entry), and log(0),
    ``where`` and exp underflow are slow paths on CPUs; ``sign`` is cheap.
    """
    return torch.exp(log_a * p) * nonzero


def _eager_cpu(t: torch.Tensor) -> bool:
    """Tell whether we run eagerly on CPU (not tracing or exporting a graph)."""
    return (t.device.type == 'cpu' and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling())


def log_feature_pnorms(psi: torch.Tensor, ps: Sequence[float],
                       with_bias: bool = True) -> List[torch.Tensor]:
    """
    log‖ψ‖_p per pixel; see :func:`_log_feature_pnorms`.

    Eagerly on CPU the work is done in blocks of rows that fit in cache (about 2x
    faster: the computation is memory-bound); graphs and GPUs get one block.
    """
    rows = max(1, 262144 // max(1, psi.shape[1] * psi.shape[3]))
    if not _eager_cpu(psi) or psi.shape[2] <= rows:
        return _log_feature_pnorms(psi, ps, with_bias)
    parts = [_log_feature_pnorms(psi[:, :, i:i + rows], ps, with_bias)
             for i in range(0, psi.shape[2], rows)]
    return [torch.cat([part[k] for part in parts], 1) for k in range(len(ps))]


def _log_feature_pnorms(psi: torch.Tensor, ps: Sequence[float],
                        with_bias: bool = True) -> List[torch.Tensor]:
    """
    Compute log‖ψ‖_p per pixel (with a bias: log (‖ψ‖_p^p + 1)^{1/p}); psi (B, E, H, W).

    log‖ψ‖_p = (1/p) log Σ_e |ψ_e|^p. The power sums are finite in float32 for p ≤ 2
    (|ψ| is bounded by float16 range or by the features); only their 1/p-th power
    overflows, and that is taken in the log domain. log|ψ| and sign|ψ| are computed once
    and shared by all fractional p (cheaper than ``pow``).
    """
    a = psi.float().abs()
    log_a = nonzero = None
    out = []
    for p in ps:
        if p == 1.0:
            s = a.sum(1)
        elif p == 2.0:
            s = (a * a).sum(1)
        else:
            if log_a is None:
                log_a = torch.log(a.clamp_min(_TINY))
                nonzero = torch.sign(a)
            s = _pow_terms(log_a, nonzero, p).sum(1)
        if with_bias:
            s = s + 1.0
        out.append(torch.log(s.clamp_min(_TINY)) / p)
    return out


def log_pgn(logits: torch.Tensor, psi: torch.Tensor, names: Iterable[str],
            exact: bool = False, with_bias: bool = True) -> Dict[str, torch.Tensor]:
    """
    Compute log PGN maps for the requested ``pgn_<mode>_p<p>`` names (logits' size).

    ``logits`` = K ψ + b of the final 1x1 convolution (B, C, H, W); ``psi`` its input.
    """
    wanted = [parse_pgn_name(n) for n in names]
    if not wanted:
        return {}
    ps = sorted({p for _, p in wanted})
    feat = dict(zip(ps, log_feature_pnorms(psi, ps, with_bias)))
    out = {}
    for mode in PGN_MODES:
        mode_ps = sorted({p for m, p in wanted if m == mode})
        if not mode_ps:
            continue
        errs = log_error_pnorms(logits, mode, mode_ps, exact)
        for p, log_g in zip(mode_ps, errs):
            out[pgn_name(mode, p)] = log_g + feat[p]
    return out


# -- spatial post-processing of a score map (Jung et al., ICCV 2021) -------------------
# Applied at decoder resolution (stride 4), before the map is upsampled. Ops: max-pool,
# avg-pool, conv, where (all in the TensorRT 10 set); no loops over pixels.
BS_RADII = (2, 1)       # boundary widths, shrinking (decoder pixels)
BS_WINDOW = 3           # averaging window of the suppression
DS_KERNEL = 7           # dilated smoothing: Gaussian kernel size, sigma, dilation
DS_SIGMA = 1.0
DS_DILATION = 2


def class_boundary(label: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, h, w) bool: the (2r+1)^2 window around the pixel holds more than one class."""
    lab = label.float().unsqueeze(1)
    k = 2 * radius + 1
    hi = F.max_pool2d(lab, k, 1, radius)
    lo = -F.max_pool2d(-lab, k, 1, radius)
    return (hi != lo).squeeze(1)


def boundary_suppression(score: torch.Tensor, label: torch.Tensor,
                         radii: Sequence[int] = BS_RADII,
                         window: int = BS_WINDOW) -> torch.Tensor:
    """
    Replace scores near predicted class boundaries by their non-boundary neighbours.

    ``score`` (B, h, w), ``label`` (B, h, w) predicted classes. For each boundary width r
    (shrinking): pixels within r of a class change take the mean of the non-boundary
    pixels of their ``window`` x ``window`` neighbourhood (pixels with none keep their
    value and are reached by the next, thinner, pass).
    """
    s = score.float().unsqueeze(1)
    pad = window // 2
    for r in radii:
        b = class_boundary(label, int(r)).unsqueeze(1)
        keep = (~b).to(s.dtype)
        num = F.avg_pool2d(s * keep, window, 1, pad)
        den = F.avg_pool2d(keep, window, 1, pad)
        fill = num / den.clamp_min(1e-6)
        s = torch.where(b & (den > 0), fill, s)
    return s.squeeze(1)


def gaussian_kernel(size: int = DS_KERNEL, sigma: float = DS_SIGMA) -> torch.Tensor:
    """Return a normalised (1, 1, size, size) Gaussian kernel."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).view(1, 1, size, size)


def dilated_smoothing(score: torch.Tensor, kernel: torch.Tensor,
                      dilation: int = DS_DILATION) -> torch.Tensor:
    """
    Gaussian blur with a dilated kernel (fills holes inside objects); score (B, h, w).

    Normalised convolution at the border (the kernel weights outside the map are left out
    instead of counting as zeros), so edges are not darkened.
    """
    s = score.float().unsqueeze(1)
    k = kernel.to(s.dtype)
    pad = dilation * (k.shape[-1] - 1) // 2
    num = F.conv2d(s, k, padding=pad, dilation=dilation)
    den = F.conv2d(torch.ones_like(s[:1]), k, padding=pad, dilation=dilation)
    return (num / den).squeeze(1)


def spatial_postprocess(score: torch.Tensor, label: torch.Tensor, kind: str,
                        kernel: torch.Tensor) -> torch.Tensor:
    """Apply ``kind`` = 'bs' (boundary suppression), 'ds' (smoothing) or 'bsds' (both)."""
    if kind not in SPATIAL_KINDS:
        raise ValueError(f'unknown spatial post-processing {kind!r}; use {SPATIAL_KINDS}')
    if kind in ('bs', 'bsds'):
        score = boundary_suppression(score, label)
    if kind in ('ds', 'bsds'):
        score = dilated_smoothing(score, kernel)
    return score
