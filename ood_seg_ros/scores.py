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

from dataclasses import dataclass
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

PGN_PS = (0.1, 0.3, 0.5, 1.0, 2.0)
PGN_MODES = ('oh', 'uni')
_TINY = 1e-30
_NEG = -1e30
_LOG_ZERO = -1e4  # log of 'zero': exp(0.1 * -1e4) underflows to 0 in float32


def p_tag(p: float) -> str:
    """Name fragment of a PGN exponent: 0.1 -> '0.1', 1.0 -> '1'."""
    return f'{float(p):g}'


def pgn_name(mode: str, p: float) -> str:
    """Output name of a PGN score map, e.g. ``pgn_uni_p0.5`` (ValueError on a bad mode)."""
    if mode not in PGN_MODES:
        raise ValueError(f'PGN label mode {mode!r} is not one of {PGN_MODES}')
    return f'pgn_{mode}_p{p_tag(p)}'


def parse_pgn_name(name: str):
    """Inverse of :func:`pgn_name`: ``'pgn_oh_p2'`` -> ``('oh', 2.0)``."""
    _, mode, p = name.split('_')
    return mode, float(p[1:])


def deep_pgn_name(mode: str, p: float) -> str:
    """Name of a deeper-layer PGN map (:func:`log_deep_pgn`), e.g. ``pgn_deep_uni_p0.5``."""
    return 'pgn_deep_' + pgn_name(mode, p)[len('pgn_'):]


def parse_deep_pgn_name(name: str):
    """Inverse of :func:`deep_pgn_name`: ``'pgn_deep_oh_p2'`` -> ``('oh', 2.0)``."""
    return parse_pgn_name('pgn_' + name[len('pgn_deep_'):])


# -- the score table ---------------------------------------------------------------------
# Graph parts a score needs besides the global logits: the MOoSe probes, the decoder
# features ψ (PGN) and per-class max-logit statistics (SML).
NEEDS_PROBES, NEEDS_PSI, NEEDS_SML = 'probes', 'psi', 'sml_stats'
# Training-split mean and standard deviation of a fused score's members (FUSED below).
NEEDS_STATS = 'score_stats'
# Deeper-layer PGN also needs the input of the last convolution before the classifier.
NEEDS_DEEP = 'deep_input'
# Natural ranges, as functions of the class count C: probability-like scores lie in
# [0, 1 - 1/C], entropy-like ones in [0, log C]; the others need calibrated constants.
NATURAL_RANGES = {'prob': lambda c: (0.0, 1.0 - 1.0 / c),
                  'log_c': lambda c: (0.0, math.log(c))}


@dataclass(frozen=True)
class ScoreSpec:
    """
    One score map of the graph.

    ``family``: 'global' (one head), 'moose' (probes + global head), 'pgn', 'fused' (the
    mean of standardised ``members``), 'spatial' (a post-processed ``base`` map,
    ``kind`` bs/ds/bsds) or 'pgn_deep' (PGN of the layer before the classifier,
    :func:`log_deep_pgn`). ``natural``: key of
    :data:`NATURAL_RANGES`, or None when the range must be calibrated. ``needs``: graph
    parts (``NEEDS_*``) the map is computed from, a spatial map's base included.
    ``mode``, ``p``: the PGN label mode and exponent. ``optional``: computed only when
    asked for by name (not among "every score" of the evaluator or ``all_scores``).
    """

    name: str
    family: str
    needs: frozenset = frozenset()
    natural: Optional[str] = None
    base: Optional[str] = None
    kind: Optional[str] = None
    mode: Optional[str] = None
    p: Optional[float] = None
    members: Tuple[str, ...] = ()
    optional: bool = False

    def natural_range(self, n_classes: int) -> Optional[Tuple[float, float]]:
        """(lo, hi) of the score for ``n_classes`` classes, or None (calibrate it)."""
        return NATURAL_RANGES[self.natural](n_classes) if self.natural else None


def _table() -> Dict[str, ScoreSpec]:
    """Build the score table (see :data:`SCORES`)."""
    none, probes, sml = frozenset(), frozenset({NEEDS_PROBES}), frozenset({NEEDS_SML})
    rows = [ScoreSpec('msp', 'global', none, 'prob'),
            ScoreSpec('entropy', 'global', none, 'log_c'),
            ScoreSpec('max_logit', 'global'), ScoreSpec('energy', 'global'),
            ScoreSpec('sml', 'global', sml),
            ScoreSpec('moose_msp', 'moose', probes, 'prob'),
            ScoreSpec('moose_entropy', 'moose', probes, 'log_c'),
            ScoreSpec('moose_max_logit', 'moose', probes),
            ScoreSpec('moose_mi', 'moose', probes, 'log_c'),
            ScoreSpec('moose_energy', 'moose', probes),
            ScoreSpec('moose_sml', 'moose', probes | sml)]
    rows += [ScoreSpec(pgn_name(m, p), 'pgn', frozenset({NEEDS_PSI}), mode=m, p=p)
             for m in PGN_MODES for p in PGN_PS]
    by_name = {r.name: r for r in rows}
    for name, members in FUSED.items():
        need = frozenset({NEEDS_STATS}).union(*(by_name[m].needs for m in members))
        by_name[name] = ScoreSpec(name, 'fused', need, members=members)
    # Spatially post-processed variants ``<base>_<kind>`` (see spatial_postprocess):
    # bs = boundary suppression, ds = dilated smoothing, bsds = both, in that order.
    for b in SPATIAL_BASES:
        for k in SPATIAL_KINDS:
            name = f'{b}_{k}'
            by_name[name] = ScoreSpec(name, 'spatial', by_name[b].needs, base=b, kind=k)
    deep = frozenset({NEEDS_PSI, NEEDS_DEEP})
    for m in PGN_MODES:
        for p in PGN_PS:
            name = deep_pgn_name(m, p)
            # Optional: below MSP on both real sets (the paper also finds deeper layers
            # worse for OoD); ten more maps would slow every evaluation.
            by_name[name] = ScoreSpec(name, 'pgn_deep', deep, mode=m, p=p, optional=True)
    return by_name


# Fused scores: the mean of member scores, each standardised by its mean and standard
# deviation over the pixels of the training split (``ood-seg sml-stats``; nothing is
# fitted on OoD frames). A global score and a MOoSe score answer different anomaly types
# (the global head: small obstacles on the road; the probes: objects in the scene).
FUSED = {'fused_energy_moose_entropy': ('energy', 'moose_entropy'),
         'fused_energy_moose_energy': ('energy', 'moose_energy'),
         'fused_max_logit_moose_max_logit': ('max_logit', 'moose_max_logit')}
SPATIAL_KINDS = ('bs', 'ds', 'bsds')
SPATIAL_BASES = ('max_logit', 'energy', 'sml', 'moose_entropy', 'moose_max_logit',
                 'pgn_uni_p0.5')
SCORES: Dict[str, ScoreSpec] = _table()   # every score map, in graph output order


def of_family(name: str) -> Tuple[str, ...]:
    """Return the score names of one family (global, moose, pgn, spatial), table order."""
    return tuple(n for n, s in SCORES.items() if s.family == name)


def base_maps(names: Iterable[str]) -> List[str]:
    """
    Return the non-spatial maps needed for ``names``.

    Those given, the bases of spatial ones and the members of fused ones, in table order
    (members before the fused map).
    """
    want = set(names)
    want |= {SCORES[n].base for n in want if n in SCORES and SCORES[n].base}
    want |= {m for n in want if n in SCORES for m in SCORES[n].members}
    return [n for n, s in SCORES.items() if n in want and s.family != 'spatial']


def needs(names: Iterable[str]) -> frozenset:
    """Union of the graph parts (``NEEDS_*``) that the score maps ``names`` need."""
    return frozenset().union(*(SCORES[n].needs for n in names if n in SCORES))


def natural_range(name: str, n_classes: int) -> Optional[Tuple[float, float]]:
    """Natural (lo, hi) of score ``name`` for ``n_classes`` classes, None if it has none."""
    spec = SCORES.get(name)
    return spec.natural_range(n_classes) if spec else None


FUSED_SCORES = of_family('fused')
GLOBAL_SCORES = of_family('global')
MOOSE_SCORES = of_family('moose')
ALL_PGN_SCORES = of_family('pgn')
SPATIAL_SCORES = of_family('spatial')
DEEP_PGN_SCORES = of_family('pgn_deep')
BASE_SCORES = (GLOBAL_SCORES + MOOSE_SCORES + ALL_PGN_SCORES + FUSED_SCORES
               + DEEP_PGN_SCORES)
ALL_SCORES = tuple(SCORES)
# "Every score" of the evaluator, of ``all_scores`` and of a fresh config: the optional
# ones (asked for by name only) left out.
STANDARD_SCORES = tuple(n for n in ALL_SCORES if not SCORES[n].optional)
# Scores that need per-class max-logit statistics (``ModelConfig.sml_stats``).
SML_SCORES = tuple(n for n in BASE_SCORES if NEEDS_SML in SCORES[n].needs)


def split_spatial(name: str):
    """``'sml_bsds'`` -> ``('sml', 'bsds')``; a base score -> ``(name, None)``."""
    spec = SCORES.get(name)
    if spec is not None and spec.family == 'spatial':
        return spec.base, spec.kind
    return name, None


# Non-score graph outputs that can be requested besides the always-present `semantic`.
EXTRA_OUTPUTS = ('logits', 'probs')


def log_softmax(z: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """
    Max-shifted log-softmax written with basic ops: z - max - log Σ exp(z - max).

    Same values as ``F.log_softmax``; ONNX Runtime's LogSoftmax / Softmax kernels
    transpose a non-last axis to the end and back (about 40x slower than these five
    reductions and element-wise ops over the class axis).
    """
    return log_softmax_lse(z, dim)[0]


def log_softmax_lse(z: torch.Tensor, dim: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`log_softmax` and the log-sum-exp it subtracts (keepdim): (z - lse, lse)."""
    top = z.amax(dim, keepdim=True)
    shifted = z - top
    log_sum = shifted.exp().sum(dim, keepdim=True).log()
    return shifted - log_sum, log_sum + top


def member_mean(x: torch.Tensor) -> torch.Tensor:
    """
    Mean over the leading (member) axis of (M, ...) as a product with a 1/M row.

    Same values as ``x.mean(0)`` up to float rounding; on ONNX Runtime's CPU provider a
    MatMul of (1, M) x (M, N) is much faster than ReduceMean over axis 0 (README,
    "Where the OoD overhead goes"). Eagerly it is ``x.mean(0)`` (batch-independent
    rounding, as before).
    """
    if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return x.mean(0)
    m = x.shape[0]
    row = x.new_full((1, m), 1.0 / m)
    return torch.matmul(row, x.reshape(m, -1)).view(x.shape[1:])


def one_hot(index: torch.Tensor, n_classes: int, dtype) -> torch.Tensor:
    """(B, H, W) class ids -> (B, C, H, W) one-hot, as one Equal (no OneHot + Transpose)."""
    classes = torch.arange(n_classes, device=index.device).view(1, -1, 1, 1)
    return (index.unsqueeze(1) == classes).to(dtype)


def entropy_from_logits(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax entropy in nats; never NaN (xlogy-style via log_softmax)."""
    logp = log_softmax(logits.float(), dim=dim)
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
    predicted as that class (gathered on the training split, :mod:`ood_seg_ros.tools.sml`).
    The per-pixel statistics are selected with the one-hot of c^ (no Gather: plain
    multiply-add in every runtime).
    """
    z = logits.float()
    top = z.max(1)
    onehot = one_hot(top.indices, z.shape[1], z.dtype)
    mu = (onehot * mean.view(1, -1, 1, 1).to(z.dtype)).sum(1)
    sigma = (onehot * std.view(1, -1, 1, 1).to(z.dtype)).sum(1)
    return -(top.values - mu) / sigma


def global_scores(logits: torch.Tensor, names: Iterable[str],
                  sml_stats=None, logp: torch.Tensor = None,
                  lse: torch.Tensor = None) -> Dict[str, torch.Tensor]:
    """
    Single-head scores from logits (B, C, H, W).

    ``msp``, ``entropy``, ``max_logit`` (= -max z), ``energy`` (= -logsumexp z, T = 1) and
    ``sml`` (needs ``sml_stats`` = (mean (C,), std (C,)) of this head). ``logp``, ``lse``:
    the head's :func:`log_softmax_lse`, when the caller already has it (shared work).
    """
    out = {}
    z = logits.float()
    if names_need(names, ('msp', 'entropy')) and logp is None:
        logp = log_softmax(z, 1)
    if 'msp' in names:
        out['msp'] = 1.0 - logp.amax(1).exp()
    if 'entropy' in names:
        out['entropy'] = -(logp.exp() * logp).sum(1)
    if 'max_logit' in names:
        out['max_logit'] = -z.amax(1)
    if 'energy' in names:
        out['energy'] = -(_logsumexp(z, 1) if lse is None else lse.squeeze(1))
    if 'sml' in names:
        if sml_stats is None:
            raise ValueError('sml needs per-class max-logit statistics (ood-seg sml-stats)')
        out['sml'] = standardised_max_logit(z, *sml_stats)
    return out


def names_need(names: Iterable[str], some: Sequence[str]) -> bool:
    """Tell whether any of ``some`` is among ``names``."""
    return any(n in names for n in some)


def moose_scores(member_logits: Sequence[torch.Tensor], names: Iterable[str],
                 sml_stats=None) -> Dict[str, torch.Tensor]:
    """
    Compute the MOoSe scores over M members (probes + global head), equal weights.

    ``member_logits``: M tensors (B, C, H, W) at the same resolution, or one stacked
    (M, B, C, H, W) tensor. p̄ = mean softmax;
    MSP = 1 - max p̄, H = entropy(p̄), ML = -max_c mean_m z, MI = H(p̄) - mean_m H(p_m),
    energy = -logsumexp_c mean_m z, SML = mean_m SML_m with each member's own statistics
    (``sml_stats``: M pairs (mean (C,), std (C,)), in member order). The members are
    stacked to (M, B, C, H, W), so every step is one op over all of them; means over the
    members are :func:`member_mean`.
    """
    names = set(names)
    out = {}
    zs = (member_logits.float() if torch.is_tensor(member_logits)
          else torch.stack([z.float() for z in member_logits]))
    if names & {'moose_msp', 'moose_entropy', 'moose_mi'}:
        # softmax as e / Σe of the max-shifted logits; each member's entropy from the
        # same e (H = log Σe - Σ p·shifted): one pass fewer than exp(log_softmax)
        shifted = zs - zs.amax(2, keepdim=True)
        e = shifted.exp()
        total = e.sum(2, keepdim=True)
        probs = e / total
        p_mean = member_mean(probs)
        if 'moose_msp' in names:
            out['moose_msp'] = 1.0 - p_mean.amax(1)
        if names & {'moose_entropy', 'moose_mi'}:
            h_mean = entropy_from_probs(p_mean)
            if 'moose_entropy' in names:
                out['moose_entropy'] = h_mean
            if 'moose_mi' in names:
                mean_h = member_mean(total.squeeze(2).log() - (probs * shifted).sum(2))
                out['moose_mi'] = (h_mean - mean_h).clamp_min(0.0)
    if names & {'moose_max_logit', 'moose_energy'}:
        z_mean = member_mean(zs)
        if 'moose_max_logit' in names:
            out['moose_max_logit'] = -z_mean.amax(1)
        if 'moose_energy' in names:
            out['moose_energy'] = -_logsumexp(z_mean, 1)
    if 'moose_sml' in names:
        if sml_stats is None or len(sml_stats) != zs.shape[0]:
            raise ValueError('moose_sml needs max-logit statistics for every member')
        out['moose_sml'] = sum(standardised_max_logit(z, *st)
                               for z, st in zip(zs.unbind(0), sml_stats)) / zs.shape[0]
    return out


def fused_score(maps: Dict[str, torch.Tensor], members: Sequence[str],
                stats: Dict[str, Sequence[float]]) -> torch.Tensor:
    """
    Mean of the standardised member maps: (1/K) sum_k (s_k - mu_k) / sigma_k.

    ``maps``: member name -> (B, H, W); ``stats``: member name -> (mu, sigma) over the
    training split's pixels. Standardising puts scores of different units (energy in
    logit units, entropy in nats) on one scale, so neither dominates by its range.
    """
    total = None
    for m in members:
        mu, sigma = stats[m]
        term = (maps[m] - float(mu)) * (1.0 / float(sigma))
        total = term if total is None else total + term
    return total * (1.0 / len(members))


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max-shifted log-sum-exp written with basic ops (robust in every runtime)."""
    m = x.amax(dim, keepdim=True)
    return (x - m).exp().sum(dim).log() + m.squeeze(dim)


def log_error_pnorms(logits: torch.Tensor, mode: str, ps: Sequence[float],
                     exact: bool = False, logp: torch.Tensor = None) -> List[torch.Tensor]:
    """
    log‖g‖_p per pixel for each p; logits (B, C, H, W) -> list of (B, H, W).

    Paper (default): oh: g_h = σ_h (1 - δ_{h,ŷ}); uni: g_h = (C - 1)/C σ_h.
    Exact cross-entropy gradient (``exact=True``): g = σ - y with y = one-hot(ŷ) (oh)
    or 1/C (uni). ``logp``: the :func:`log_softmax` of the logits, when already computed.
    """
    z = logits.float()
    c = z.shape[1]
    if logp is None:
        logp = log_softmax(z, 1)
    if mode == 'oh':
        # One-hot of ŷ (max(1).indices: faster than argmax on CPU, same result).
        onehot = one_hot(z.max(1).indices, c, z.dtype)
        # log σ_h for h != ŷ; the predicted class is masked out with a huge negative.
        log_others = logp + onehot * _NEG
        if exact:
            # |σ_ŷ - 1| = Σ_{h≠ŷ} σ_h, computed stably in the log domain.
            log_pred = _logsumexp(log_others, 1).unsqueeze(1)
            log_abs = log_others * (1 - onehot) + log_pred * onehot
        else:
            log_abs = log_others
    elif mode == 'uni':
        if not exact and 1.0 in ps:
            # log Σ_h ((C-1)/C σ_h) = log((C-1)/C): Σ σ = 1, no pass over the classes.
            rest = [p for p in ps if p != 1.0]
            known = dict(zip(rest, log_error_pnorms(z, mode, rest, exact, logp)))
            known[1.0] = torch.full_like(z[:, 0], math.log((c - 1.0) / c))
            return [known[p] for p in ps]
        if exact:
            dev = (logp.exp() - 1.0 / c).abs()
            # Entries with |σ_h - 1/C| == 0 get log -1e4 (exp(p * -1e4) = 0), finite.
            log_abs = torch.log(dev.clamp_min(_TINY)) + (1 - torch.sign(dev)) * _LOG_ZERO
        else:
            log_abs = logp + math.log((c - 1.0) / c)
    else:
        raise ValueError(f'unknown PGN label mode {mode!r}; use one of {PGN_MODES}')
    if not ps:
        return []
    # All p at once: (P, B, C, H, W) -> logsumexp over C -> (P, B, H, W). Python-float
    # scalars only (no host-to-device tensor copies: CUDA-graph capture forbids them).
    scaled = torch.stack([log_abs * float(p) for p in ps])
    if mode == 'uni' and not exact:
        # p·log((C-1)/C σ_h) <= 0 and its largest term >= p·log((C-1)/C²): the sum of
        # exps neither overflows nor underflows, no max shift needed
        lse = scaled.exp().sum(2).log()
    else:
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
                       with_bias: bool = True, nonneg: bool = False) -> List[torch.Tensor]:
    """
    log‖ψ‖_p per pixel; see :func:`_log_feature_pnorms`.

    Eagerly on CPU the work is done in blocks of rows that fit in cache (about 2x
    faster: the computation is memory-bound); graphs and GPUs get one block.
    ``nonneg``: ψ ≥ 0 is known (a ReLU output), see :func:`channel_power_sums`.
    """
    rows = max(1, 262144 // max(1, psi.shape[1] * psi.shape[3]))
    if not _eager_cpu(psi) or psi.shape[2] <= rows:
        return _log_feature_pnorms(psi, ps, with_bias, nonneg)
    parts = [_log_feature_pnorms(psi[:, :, i:i + rows], ps, with_bias, nonneg)
             for i in range(0, psi.shape[2], rows)]
    return [torch.cat([part[k] for part in parts], 1) for k in range(len(ps))]


def _log_feature_pnorms(psi: torch.Tensor, ps: Sequence[float],
                        with_bias: bool = True, nonneg: bool = False) -> List[torch.Tensor]:
    """
    Compute log‖ψ‖_p per pixel (with a bias: log (‖ψ‖_p^p + 1)^{1/p}); psi (B, E, H, W).

    log‖ψ‖_p = (1/p) log Σ_e |ψ_e|^p. The power sums are finite in float32 for p ≤ 2
    (|ψ| is bounded by float16 range or by the features); only their 1/p-th power
    overflows, and that is taken in the log domain. |ψ|^p is |ψ| (p = 1), |ψ|² (p = 2),
    √|ψ| (p = 0.5), else exp(p log|ψ|) with log|ψ| and sign|ψ| computed once and shared
    by those p (Log, Sign and Exp are the slow element-wise ops of CPU runtimes).
    """
    out = []
    for p, s in zip(ps, channel_power_sums(psi, ps, nonneg)):
        if with_bias:
            s = s + 1.0
        out.append(torch.log(s.clamp_min(_TINY)) / p)
    return out


def channel_power_sums(x: torch.Tensor, ps: Sequence[float],
                       nonneg: bool = False) -> List[torch.Tensor]:
    """
    Σ_e |x_e|^p per pixel for each p, float32; x (B, E, H, W) -> list of (B, H, W).

    ``nonneg``: x ≥ 0 is known (a ReLU output), so |x| = x and no Abs pass is made.
    The work is on x flattened to (B, E, H·W): in ONNX Runtime the flattening is then
    the only consumer of a convolution's output, so that output leaves the blocked
    (NCHWc) layout once, and a square stays a plain Mul (a Mul of the 4-D map would
    run in the blocked layout and need a layout conversion of its own).
    """
    a = x.float().flatten(2)
    if not nonneg:
        a = a.abs()
    log_a = nonzero = None
    out = []
    for p in ps:
        if p == 1.0:
            terms = a
        elif p == 2.0:
            terms = a * a
        elif p == 0.5:
            terms = a.sqrt()
        else:
            if log_a is None:
                log_a = torch.log(a.clamp_min(_TINY))
                nonzero = torch.sign(a)
            terms = _pow_terms(log_a, nonzero, p)
        out.append(channel_sum(terms).view_as(x[:, 0]))
    return out


def channel_sum(x: torch.Tensor) -> torch.Tensor:
    """
    Σ over the channels of (B, E, H, W) -> (B, H, W), as a product with a ones row.

    A (1, E) x (E, HW) MatMul: in ONNX Runtime faster than ReduceSum over axis 1
    (measured at E = 256, 90x120 decoder maps). A flattened (B, E, N) x gives (B, N).
    """
    ones = x.new_ones(1, x.shape[1])
    return torch.matmul(ones, x.flatten(2)).view_as(x[:, 0])


def log_pgn(logits: torch.Tensor, psi: torch.Tensor, names: Iterable[str],
            exact: bool = False, with_bias: bool = True,
            logp: torch.Tensor = None, psi_nonneg: bool = False) -> Dict[str, torch.Tensor]:
    """
    Compute log PGN maps for the requested ``pgn_<mode>_p<p>`` names (logits' size).

    ``logits`` = K ψ + b of the final 1x1 convolution (B, C, H, W); ``psi`` its input;
    ``logp`` their :func:`log_softmax` when the caller has it; ``psi_nonneg``: ψ is a
    ReLU output (no Abs pass). Each feature norm is computed once and shared by both
    label modes.
    """
    wanted = [parse_pgn_name(n) for n in names]
    if not wanted:
        return {}
    ps = sorted({p for _, p in wanted})
    feat = dict(zip(ps, log_feature_pnorms(psi, ps, with_bias, psi_nonneg)))
    if logp is None:
        logp = log_softmax(logits.float(), 1)
    out = {}
    for mode in PGN_MODES:
        mode_ps = sorted({p for m, p in wanted if m == mode})
        if not mode_ps:
            continue
        errs = log_error_pnorms(logits, mode, mode_ps, exact, logp)
        for p, log_g in zip(mode_ps, errs):
            out[pgn_name(mode, p)] = log_g + feat[p]
    return out


# -- PGN of the layer before the classifier (paper appendix A.2) ----------------------

def error_vector(logits: torch.Tensor, mode: str, exact: bool = False,
                 logp: torch.Tensor = None) -> torch.Tensor:
    """
    Return the signed error vector g (B, C, H, W) of :func:`log_error_pnorms`, float32.

    Paper: oh g_h = σ_h (1 - δ_{h,ŷ}), uni g_h = (C - 1)/C σ_h; ``exact``: g = σ - y.
    """
    z = logits.float()
    c = z.shape[1]
    sigma = (log_softmax(z, 1) if logp is None else logp).exp()
    if mode == 'oh':
        onehot = one_hot(z.max(1).indices, c, z.dtype)
        return sigma - onehot if exact else sigma * (1.0 - onehot)
    if mode == 'uni':
        return sigma - 1.0 / c if exact else sigma * ((c - 1.0) / c)
    raise ValueError(f'unknown PGN label mode {mode!r}; use one of {PGN_MODES}')


@dataclass(frozen=True)
class DeepLayer:
    """
    The layer before the classifier, as :func:`log_deep_pgn` needs it.

    ``classifier`` (C, E) weight K of the final 1x1 conv; ``bn_scale`` (E,) γ / √(var + ε)
    of the BatchNorm after the layer's convolution (its weight gradient runs through
    it); ``kernel`` / ``dilation``: that convolution's window ('same' zero padding).
    """

    classifier: torch.Tensor
    bn_scale: torch.Tensor
    kernel: int = 1
    dilation: int = 1


def window_sum(s: torch.Tensor, kernel: int, dilation: int = 1) -> torch.Tensor:
    """Σ over each pixel's ``kernel`` x ``kernel`` (dilated) window, zero padded; (B, H, W)."""
    if kernel == 1:
        return s
    ones = s.new_ones(1, 1, kernel, kernel)
    pad = dilation * (kernel - 1) // 2
    return F.conv2d(s.unsqueeze(1), ones, padding=pad, dilation=dilation).squeeze(1)


def log_deep_pgn(logits: torch.Tensor, psi: torch.Tensor, phi: torch.Tensor,
                 layer: DeepLayer, names: Iterable[str], exact: bool = False,
                 logp: torch.Tensor = None) -> Dict[str, torch.Tensor]:
    """
    Compute log ‖∂L_ab/∂W‖_p for the ``pgn_deep_<mode>_p<p>`` names; (B, h, w) each.

    W is the weight of the last convolution before the classifier K:
    ψ = ReLU(BN(W ∗ φ)), logits = K ψ + b (``psi`` the block output, ``phi`` the
    convolution's input, ``layer`` the rest). Per pixel (a, b) the chain rule gives
    (paper eq. 19; it is 1x1 after W, so only ψ_ab depends on W through L_ab)

        ∂L_ab/∂W_{f,e,u,v} = δ_f · φ_e(a + u', b + v'),
        δ = (Kᵀ g) ⊙ 1[ψ > 0] ⊙ γ / √(var + ε)   (BN in eval mode, ψ > 0 ⇔ pre-ReLU > 0)

    with (u', v') the dilated window offsets. A rank-one tensor, so its L^p norm factorises
    (eq. 20): ‖∇‖_p = ‖δ‖_p · (Σ_window Σ_e |φ_e|^p)^{1/p}; a 1x1 convolution (the
    pointwise half of a depthwise-separable block) has the one-pixel window
    ‖δ‖_p · ‖φ‖_p. The depthwise 3x3 weight of such a block does not factorise (its
    channel index is shared by both factors) and is not offered. The convolution has
    no bias. g: :func:`error_vector`. Returned in the log domain, like :func:`log_pgn`.
    """
    wanted = [parse_deep_pgn_name(n) for n in names]
    if not wanted:
        return {}
    ps = sorted({p for _, p in wanted})
    sums = channel_power_sums(phi, ps)
    feat = {p: torch.log(window_sum(s, layer.kernel, layer.dilation).clamp_min(_TINY)) / p
            for p, s in zip(ps, sums)}
    k = layer.classifier.float()
    gate = torch.sign(psi.float()) * layer.bn_scale.float().view(1, -1, 1, 1)
    out = {}
    for mode in PGN_MODES:
        mode_ps = sorted({p for m, p in wanted if m == mode})
        if not mode_ps:
            continue
        g = error_vector(logits, mode, exact, logp)
        delta = torch.matmul(k.t(), g.flatten(2)).view_as(gate) * gate
        for p, s in zip(mode_ps, channel_power_sums(delta, mode_ps)):
            out[deep_pgn_name(mode, p)] = torch.log(s.clamp_min(_TINY)) / p + feat[p]
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
