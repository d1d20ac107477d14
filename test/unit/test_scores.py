"""Tests of ood_seg_ros.scores against autograd, brute-force loops and numpy formulas."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
from ood_seg_ros import scores as S
import pytest
import torch
from torch import nn
import torch.nn.functional as F

PS = (0.1, 0.3, 0.5, 1.0, 2.0)
E, C, H, W = 6, 4, 5, 7
# Scores computable without SML statistics (those are tested separately below).
GLOBAL_NO_SML = tuple(n for n in S.GLOBAL_SCORES if n not in S.SML_SCORES)
MOOSE_NO_SML = tuple(n for n in S.MOOSE_SCORES if n not in S.SML_SCORES)


pytestmark = pytest.mark.usefixtures('torch_threads')  # one thread: small, shared CPU


def _tiny_setup(seed=0, scale=3.0):
    """Return (psi (1, E, H, W) with exact zeros as after ReLU, conv E->C with bias, logits)."""
    g = torch.Generator().manual_seed(seed)
    psi = torch.relu(torch.randn(1, E, H, W, generator=g, dtype=torch.float64))
    psi[0, :, 0, 0] = 0.0  # one all-zero pixel
    conv = nn.Conv2d(E, C, 1, bias=True).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(C, E, 1, 1, generator=g, dtype=torch.float64) * scale)
        conv.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))
    logits = conv(psi).detach()
    return psi, conv, logits


def _pnorm64(v, p):
    """(Σ|v|^p)^(1/p) in float64 with |0|^p = 0."""
    a = np.abs(np.asarray(v, dtype=np.float64))
    return float(np.sum(a ** p) ** (1.0 / p))


def _autograd_grads(psi, conv, logits, i, j, mode):
    """Return (grad W flattened, grad b) of the soft-target CE at pixel (i, j), float64."""
    conv.zero_grad()
    z = conv(psi[:, :, i:i + 1, j:j + 1])[0, :, 0, 0]
    assert torch.allclose(z.detach(), logits[0, :, i, j])
    if mode == 'oh':
        y = F.one_hot(z.detach().argmax(), C).double()
    else:
        y = torch.full((C,), 1.0 / C, dtype=torch.float64)
    loss = -(y * F.log_softmax(z, 0)).sum()
    loss.backward()
    return (conv.weight.grad.detach().reshape(-1).numpy().copy(),
            conv.bias.grad.detach().numpy().copy())


def _assert_lowest(m, psi, i, j):
    """PGN of a zero-gradient pixel (log 0): finite and below every pixel with ψ != 0."""
    v = float(m[0, i, j])
    nonzero = (psi[0] != 0).any(0)
    assert math.isfinite(v)
    assert v < float(m[0][nonzero].min()) - 10.0


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('with_bias', [True, False])
def test_exact_pgn_equals_autograd_gradient_norm(seed, with_bias):
    psi, conv, logits = _tiny_setup(seed)
    names = list(S.ALL_PGN_SCORES)
    got = S.log_pgn(logits.float(), psi.float(), names, exact=True, with_bias=with_bias)
    assert set(got) == set(names)
    checked = 0
    for mode in S.PGN_MODES:
        for i in range(H):
            for j in range(W):
                gw, gb = _autograd_grads(psi, conv, logits, i, j, mode)
                full = np.concatenate([gw, gb]) if with_bias else gw
                for p in PS:
                    ref = _pnorm64(full, p)
                    val = float(got[S.pgn_name(mode, p)][0, i, j])
                    if ref == 0.0:  # all-zero ψ pixel without bias: the lowest, finite
                        _assert_lowest(got[S.pgn_name(mode, p)], psi, i, j)
                        continue
                    assert math.isfinite(val)
                    assert val == pytest.approx(math.log(ref), abs=1e-4), (mode, p, i, j)
                    checked += 1
    assert checked >= 2 * len(PS) * (H * W - 1)


def test_exact_and_paper_modes_differ():
    """The exact gradient is not the paper's error vector (guards a swapped flag)."""
    psi, _, logits = _tiny_setup(3)
    names = list(S.ALL_PGN_SCORES)
    exact = S.log_pgn(logits.float(), psi.float(), names, exact=True)
    paper = S.log_pgn(logits.float(), psi.float(), names, exact=False)
    for n in names:
        assert not torch.allclose(exact[n], paper[n], atol=1e-3), n


def _paper_pgn_brute(z, psi_vec, mode, p, with_bias=True):
    """Paper PGN of one pixel with explicit loops in float64."""
    c = len(z)
    mx = max(z)
    ex = [math.exp(v - mx) for v in z]
    tot = sum(ex)
    sig = [v / tot for v in ex]
    yhat = max(range(c), key=lambda h: z[h])
    g = []
    for h in range(c):
        if mode == 'oh':
            g.append(sig[h] * (0.0 if h == yhat else 1.0))
        else:
            g.append((c - 1.0) / c * sig[h])
    gn = sum(abs(v) ** p for v in g) ** (1.0 / p)
    s = sum(abs(v) ** p for v in psi_vec) + (1.0 if with_bias else 0.0)
    return gn * s ** (1.0 / p)


@pytest.mark.parametrize('with_bias', [True, False])
def test_paper_pgn_equals_brute_force(with_bias):
    psi, _, logits = _tiny_setup(5, scale=1.5)
    names = list(S.ALL_PGN_SCORES)
    got = S.log_pgn(logits.float(), psi.float(), names, with_bias=with_bias)
    z64 = logits.numpy()
    p64 = psi.numpy()
    for mode in S.PGN_MODES:
        for p in PS:
            m = got[S.pgn_name(mode, p)]
            assert m.shape == (1, H, W) and m.dtype == torch.float32
            for i in range(H):
                for j in range(W):
                    ref = _paper_pgn_brute(list(z64[0, :, i, j]), list(p64[0, :, i, j]),
                                           mode, p, with_bias)
                    if ref == 0.0:
                        _assert_lowest(m, psi, i, j)
                        continue
                    assert float(m[0, i, j]) == pytest.approx(math.log(ref), abs=1e-4)


def test_pgn_names_select_outputs():
    psi, _, logits = _tiny_setup(0)
    got = S.log_pgn(logits.float(), psi.float(), ['pgn_uni_p0.3', 'pgn_oh_p2'])
    assert sorted(got) == ['pgn_oh_p2', 'pgn_uni_p0.3']
    assert S.log_pgn(logits.float(), psi.float(), []) == {}
    with pytest.raises(ValueError):
        S.log_error_pnorms(logits.float(), 'bad', [1.0])


def _ref_log_err(z, mode, p, exact):
    """log‖g‖_p of one pixel in float64, fully in the log domain (for huge logits)."""
    from scipy.special import logsumexp
    z = np.asarray(z, dtype=np.float64)
    c = len(z)
    logp = z - logsumexp(z)
    yhat = int(np.argmax(z))
    if mode == 'oh':
        others = np.delete(logp, yhat)
        if exact:
            terms = np.append(others, logsumexp(others))  # |σ_ŷ - 1| = Σ_{h≠ŷ} σ_h
        else:
            terms = others
    else:
        if exact:
            terms = np.log(np.abs(np.exp(logp) - 1.0 / c))
        else:
            terms = logp + math.log((c - 1.0) / c)
    return logsumexp(p * terms) / p


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('exact', [False, True])
def test_pgn_finite_and_correct_for_large_logits(dtype, exact):
    c = 5
    # Pixels: ±1e4 logits, a 1e3 one-hot-like gap, moderate values, ties at the top.
    cols = [[1e4, -1e4, -1e4, 0.0, -1e4],
            [1e3, 0.0, 0.0, 0.0, 0.0],
            [-1e4, -1e4, -1e4, -1e4, 1e4],
            [2.0, 1.0, 0.5, -1.0, 0.0],
            [1e4, 9e3, -1e4, 1e4 - 8.0, 0.0]]
    z = torch.tensor(cols, dtype=torch.float64).T.reshape(1, c, 1, len(cols))
    psi = torch.zeros(1, 3, 1, len(cols), dtype=torch.float64)
    psi[0, :, 0, 1:] = torch.tensor([1e4, 0.0, 3.0]).view(3, 1)
    names = list(S.ALL_PGN_SCORES)
    got = S.log_pgn(z.to(dtype), psi.to(dtype), names, exact=exact)
    z_in = z.to(dtype).double()  # the values the function actually sees
    for name, m in got.items():
        assert m.dtype == torch.float32
        assert torch.isfinite(m).all(), (name, m)
        mode, p = S.parse_pgn_name(name)
        for k in range(len(cols)):
            log_feat = math.log(sum(abs(float(v)) ** p for v in psi[0, :, 0, k]) + 1.0) / p
            ref = _ref_log_err(z_in[0, :, 0, k].numpy(), mode, p, exact) + log_feat
            assert float(m[0, 0, k]) == pytest.approx(ref, rel=1e-6, abs=2e-3), (name, k)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('with_bias', [True, False])
def test_pgn_monotone_in_feature_magnitude(dtype, with_bias):
    """Scaling ψ up (0, 0.1, 1, 100, 1e4) strictly increases every log PGN; all finite."""
    c, e = 4, 8
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(1, c, 1, 1, generator=g) * 1e3).expand(1, c, 1, 5).contiguous()
    base = torch.relu(torch.randn(1, e, 1, 1, generator=g)) + 0.5
    scales = torch.tensor([0.0, 0.1, 1.0, 100.0, 1e4])
    psi = base * scales.view(1, 1, 1, 5)
    names = list(S.ALL_PGN_SCORES)
    for exact in (False, True):
        got = S.log_pgn(logits.to(dtype), psi.to(dtype), names, exact=exact,
                        with_bias=with_bias)
        for name, m in got.items():
            assert torch.isfinite(m).all(), name
            v = m[0, 0]
            assert (v[1:] > v[:-1]).all(), (name, v)


def test_feature_pnorms_zero_entries_contribute_nothing():
    """|0|^p must be 0, not tiny^p (which would add 1e-3 per zero entry at p = 0.1)."""
    psi = torch.zeros(1, 100, 1, 1)
    psi[0, 0] = 2.0
    for p, val in zip(PS, S.log_feature_pnorms(psi, PS, with_bias=False)):
        assert float(val) == pytest.approx(math.log(2.0), abs=1e-5), p
    for p, val in zip(PS, S.log_feature_pnorms(psi, PS, with_bias=True)):
        assert float(val) == pytest.approx(math.log(2.0 ** p + 1.0) / p, abs=1e-5), p


def test_feature_pnorms_blocked_path_matches_reference():
    """Tall maps take the blocked CPU path; it must equal the direct float64 formula."""
    g = torch.Generator().manual_seed(11)
    psi = torch.relu(torch.randn(1, 16, 300, 64, generator=g))  # > 256 rows per block
    got = S.log_feature_pnorms(psi, PS)
    a = psi.double().abs()
    for p, val in zip(PS, got):
        ref = torch.log((a ** p * (a > 0)).sum(1) + 1.0) / p
        assert val.shape == (1, 300, 64)
        assert torch.allclose(val.double(), ref, atol=1e-4), p


def test_feature_pnorms_of_a_relu_output_skip_abs_with_the_same_values():
    """``nonneg`` (ψ from a ReLU) leaves |ψ| out; direct and blocked paths equal float64."""
    g = torch.Generator().manual_seed(12)
    for rows in (7, 300):                                   # direct, blocked
        psi = torch.relu(torch.randn(1, 16, rows, 64, generator=g))
        a = psi.double()
        for p, val, plain in zip(PS, S.log_feature_pnorms(psi, PS, nonneg=True),
                                 S.log_feature_pnorms(psi, PS)):
            ref = torch.log((a ** p * (a > 0)).sum(1) + 1.0) / p
            assert torch.allclose(val.double(), ref, atol=1e-4), (rows, p)
            assert torch.equal(val, plain), (rows, p)


def test_log_softmax_lse_and_member_mean_match_torch():
    g = torch.Generator().manual_seed(13)
    z = torch.randn(5, 2, 11, 6, 7, generator=g, dtype=torch.float64) * 20
    logp, lse = S.log_softmax_lse(z, 2)
    assert torch.allclose(logp, F.log_softmax(z, 2), atol=1e-12)
    assert torch.allclose(lse, torch.logsumexp(z, 2, keepdim=True), atol=1e-12)
    assert torch.allclose(S.member_mean(z), sum(z.unbind(0)) / 5, atol=1e-12)
    traced = torch.jit.trace(S.member_mean, (z,))            # the graph's MatMul form
    assert 'matmul' in str(traced.graph)
    assert torch.allclose(traced(z), sum(z.unbind(0)) / 5, atol=1e-12)


def test_uni_pgn_error_norm_at_p1_is_its_constant():
    """Σ_h (C-1)/C σ_h = (C-1)/C: the p = 1 map is log((C-1)/C) beside the other p."""
    g = torch.Generator().manual_seed(14)
    z = torch.randn(2, C, H, W, generator=g) * 5
    ps = (0.5, 1.0, 2.0)
    got = S.log_error_pnorms(z, 'uni', ps)
    assert torch.equal(got[1], torch.full((2, H, W), math.log((C - 1.0) / C)))
    sigma = F.softmax(z.double(), 1) * (C - 1.0) / C
    for p, val in zip(ps, got):
        ref = torch.log((sigma ** p).sum(1)) / p
        assert torch.allclose(val.double(), ref, atol=1e-5), p


# ---- global and MOoSe scores -----------------------------------------------------------

def _np_softmax(z, axis):
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _np_entropy(p, axis):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis)


_members = st.integers(2, 6).flatmap(
    lambda m: st.integers(2, 12).flatmap(
        lambda c: st.tuples(st.just(m), st.just(c), st.integers(0, 2 ** 31 - 1),
                            st.floats(0.1, 30.0))))


@settings(max_examples=60, deadline=None)
@given(_members)
def test_moose_properties(params):
    m, c, seed, scale = params
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((m, 2, c, 3, 4)) * scale).astype(np.float32)
    # Sometimes make members agree exactly (MI = 0) or one class dominate.
    if seed % 5 == 0:
        z[:] = z[0]
    members = [torch.from_numpy(z[k]) for k in range(m)]
    out = S.moose_scores(members, MOOSE_NO_SML)
    assert set(out) == set(MOOSE_NO_SML)
    for v in out.values():
        assert v.shape == (2, 3, 4) and v.dtype == torch.float32
        assert torch.isfinite(v).all()
    z64 = z.astype(np.float64)
    p = _np_softmax(z64, 2)                    # (M, B, C, H, W)
    p_mean = p.mean(0)
    h_mean = _np_entropy(p_mean, 1)
    mean_h = _np_entropy(p, 2).mean(0)
    assert (h_mean - mean_h >= -1e-9).all()    # H(mean) >= mean(H) (concavity)
    mi = out['moose_mi'].numpy()
    assert (mi >= 0).all()
    np.testing.assert_allclose(mi, h_mean - mean_h, atol=2e-5)
    ent = out['moose_entropy'].numpy()
    np.testing.assert_allclose(ent, h_mean, atol=2e-5)
    assert (ent >= -1e-6).all() and (ent <= math.log(c) + 1e-5).all()
    msp = out['moose_msp'].numpy()
    np.testing.assert_allclose(msp, 1.0 - p_mean.max(1), atol=2e-6)
    assert (msp >= -1e-6).all() and (msp <= 1.0 - 1.0 / c + 1e-6).all()
    np.testing.assert_allclose(out['moose_max_logit'].numpy(), -z64.mean(0).max(1),
                               rtol=1e-5, atol=1e-4)
    zm = z64.mean(0)
    lse = zm.max(1) + np.log(np.exp(zm - zm.max(1, keepdims=True)).sum(1))
    np.testing.assert_allclose(out['moose_energy'].numpy(), -lse, rtol=1e-5, atol=1e-4)
    # The members stacked to one (M, B, C, H, W) tensor give the same maps.
    stacked = S.moose_scores(torch.from_numpy(z), MOOSE_NO_SML)
    for k, v in out.items():
        assert torch.equal(stacked[k], v), k
    # Requesting a subset computes only that subset.
    assert set(S.moose_scores(members, ['moose_mi'])) == {'moose_mi'}
    assert set(S.moose_scores(members, ['moose_max_logit'])) == {'moose_max_logit'}


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2 ** 31 - 1), st.floats(0.1, 50.0))
def test_global_scores_match_numpy(c, seed, scale):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((2, c, 3, 5)) * scale).astype(np.float32)
    out = S.global_scores(torch.from_numpy(z), GLOBAL_NO_SML)
    assert set(out) == set(GLOBAL_NO_SML)
    p = _np_softmax(z.astype(np.float64), 1)
    np.testing.assert_allclose(out['msp'].numpy(), 1.0 - p.max(1), atol=2e-6)
    np.testing.assert_allclose(out['entropy'].numpy(), _np_entropy(p, 1), atol=2e-5)
    np.testing.assert_allclose(out['max_logit'].numpy(), -z.max(1), rtol=0, atol=0)
    z64 = z.astype(np.float64)
    lse = z64.max(1) + np.log(np.exp(z64 - z64.max(1, keepdims=True)).sum(1))
    np.testing.assert_allclose(out['energy'].numpy(), -lse, rtol=1e-6, atol=1e-4)
    assert (out['energy'].numpy() <= out['max_logit'].numpy() + 1e-5).all()  # lse >= max
    assert (out['msp'].numpy() <= 1.0 - 1.0 / c + 1e-6).all()
    assert (out['msp'].numpy() >= -1e-6).all()
    assert (out['entropy'].numpy() >= -1e-6).all()
    assert (out['entropy'].numpy() <= math.log(c) + 1e-5).all()


def test_scores_hand_worked():
    """Uniform logits: entropy log C, msp 1 - 1/C; two disagreeing sure members: MI = log 2."""
    c = 4
    z = torch.zeros(1, c, 1, 1)
    out = S.global_scores(z, GLOBAL_NO_SML)
    assert float(out['entropy']) == pytest.approx(math.log(c), abs=1e-6)
    assert float(out['energy']) == pytest.approx(-math.log(c), abs=1e-6)
    assert float(out['msp']) == pytest.approx(1 - 1 / c, abs=1e-6)
    assert float(out['max_logit']) == 0.0
    a = torch.tensor([100.0, 0, 0, 0]).view(1, c, 1, 1)
    b = torch.tensor([0, 100.0, 0, 0]).view(1, c, 1, 1)
    mo = S.moose_scores([a, b], MOOSE_NO_SML)
    assert float(mo['moose_mi']) == pytest.approx(math.log(2), abs=1e-5)
    assert float(mo['moose_entropy']) == pytest.approx(math.log(2), abs=1e-5)
    assert float(mo['moose_msp']) == pytest.approx(0.5, abs=1e-6)
    assert float(mo['moose_max_logit']) == pytest.approx(-50.0)
    # Large logits never give NaN entropies.
    big = torch.tensor([1e4, -1e4, 0, 0]).view(1, c, 1, 1)
    for v in S.global_scores(big.half(), GLOBAL_NO_SML).values():
        assert torch.isfinite(v).all()
    for v in S.moose_scores([big, -big], MOOSE_NO_SML).values():
        assert torch.isfinite(v).all()


def test_score_names():
    assert S.GLOBAL_SCORES == ('msp', 'entropy', 'max_logit', 'energy', 'sml')
    assert S.MOOSE_SCORES == ('moose_msp', 'moose_entropy', 'moose_max_logit', 'moose_mi',
                              'moose_energy', 'moose_sml')
    expected_pgn = tuple(f'pgn_{m}_p{p}' for m in ('oh', 'uni')
                         for p in ('0.1', '0.3', '0.5', '1', '2'))
    assert S.ALL_PGN_SCORES == expected_pgn
    spatial = tuple(f'{b}_{k}' for b in S.SPATIAL_BASES for k in ('bs', 'ds', 'bsds'))
    assert S.SPATIAL_SCORES == spatial
    assert S.FUSED_SCORES == tuple(S.FUSED)
    deep = tuple(f'pgn_deep_{m}_p{p}' for m in ('oh', 'uni')
                 for p in ('0.1', '0.3', '0.5', '1', '2'))
    assert S.DEEP_PGN_SCORES == deep
    assert len(S.ALL_SCORES) == 5 + 6 + 10 + len(S.FUSED) + 3 * len(S.SPATIAL_BASES) + 10
    assert S.ALL_SCORES == (S.GLOBAL_SCORES + S.MOOSE_SCORES + expected_pgn + S.FUSED_SCORES
                            + spatial + deep)
    assert all(S.split_spatial(f'{b}_{k}') == (b, k) for b in S.SPATIAL_BASES
               for k in S.SPATIAL_KINDS)
    assert S.split_spatial('pgn_uni_p0.5') == ('pgn_uni_p0.5', None)
    assert len(set(S.ALL_SCORES)) == len(S.ALL_SCORES)
    for name in expected_pgn:
        mode, p = S.parse_pgn_name(name)
        assert S.pgn_name(mode, p) == name
    assert S.parse_pgn_name('pgn_uni_p0.5') == ('uni', 0.5)
    assert S.p_tag(1.0) == '1' and S.p_tag(0.1) == '0.1'


# ---- scores beyond the seeds: SML, boundary suppression, dilated smoothing --------------

def _np_sml(z, mean, std):
    """Brute-force SML: per pixel, standardise the max logit by its class's statistics."""
    b, c, h, w = z.shape
    out = np.zeros((b, h, w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                k = int(np.argmax(z[i, :, y, x]))
                out[i, y, x] = -(z[i, k, y, x] - mean[k]) / std[k]
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9), st.integers(0, 2 ** 31 - 1))
def test_sml_matches_loop(c, seed):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((2, c, 4, 5)) * 4).astype(np.float32)
    mean = rng.uniform(-2, 5, c)
    std = rng.uniform(0.3, 3, c)
    stats = (torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))
    out = S.global_scores(torch.from_numpy(z), ['sml'], stats)['sml'].numpy()
    np.testing.assert_allclose(out, _np_sml(z, mean, std), rtol=1e-5, atol=1e-5)
    # MOoSe SML: the mean over members of each member's SML with its own statistics.
    z2 = (rng.standard_normal((2, c, 4, 5)) * 4).astype(np.float32)
    mean2, std2 = rng.uniform(-2, 5, c), rng.uniform(0.3, 3, c)
    stats2 = (torch.tensor(mean2, dtype=torch.float32),
              torch.tensor(std2, dtype=torch.float32))
    mo = S.moose_scores([torch.from_numpy(z), torch.from_numpy(z2)], ['moose_sml'],
                        [stats, stats2])['moose_sml'].numpy()
    want = (_np_sml(z, mean, std) + _np_sml(z2, mean2, std2)) / 2
    np.testing.assert_allclose(mo, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='statistics'):
        S.global_scores(torch.from_numpy(z), ['sml'])


def _np_boundary_suppression(score, label, radii, window):
    """Brute-force loop of the boundary suppression definition (one frame)."""
    s = score.astype(np.float64).copy()
    h, w = s.shape
    pad = window // 2
    for r in radii:
        bd = np.zeros((h, w), bool)
        for y in range(h):
            for x in range(w):
                win = label[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
                bd[y, x] = win.min() != win.max()
        new = s.copy()
        for y in range(h):
            for x in range(w):
                if not bd[y, x]:
                    continue
                vals = [s[yy, xx] for yy in range(y - pad, y + pad + 1)
                        for xx in range(x - pad, x + pad + 1)
                        if 0 <= yy < h and 0 <= xx < w and not bd[yy, xx]]
                if vals:
                    new[y, x] = np.mean(vals)
        s = new
    return s


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(2, 4))
def test_boundary_suppression_matches_loop(seed, n_classes):
    rng = np.random.default_rng(seed)
    h, w = 9, 11
    # Blocky labels (real class regions), random scores.
    label = np.kron(rng.integers(0, n_classes, (3, 4)), np.ones((3, 3), int))[:h, :w]
    score = rng.standard_normal((h, w)).astype(np.float32)
    out = S.boundary_suppression(torch.from_numpy(score)[None],
                                 torch.from_numpy(label)[None]).numpy()[0]
    want = _np_boundary_suppression(score, label, S.BS_RADII, S.BS_WINDOW)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # A single class has no boundary: the map is unchanged.
    same = S.boundary_suppression(torch.from_numpy(score)[None],
                                  torch.zeros(1, h, w, dtype=torch.long)).numpy()[0]
    np.testing.assert_array_equal(same, score)


def test_dilated_smoothing_matches_loop():
    rng = np.random.default_rng(3)
    h, w, d = 10, 13, 2
    score = rng.standard_normal((h, w)).astype(np.float32)
    k = S.gaussian_kernel(5, 1.0)
    out = S.dilated_smoothing(torch.from_numpy(score)[None], k, dilation=d).numpy()[0]
    kk = k[0, 0].double().numpy()
    r = kk.shape[0] // 2
    want = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            num = den = 0.0
            for i in range(-r, r + 1):
                for j in range(-r, r + 1):
                    yy, xx = y + d * i, x + d * j
                    if 0 <= yy < h and 0 <= xx < w:
                        num += kk[i + r, j + r] * score[yy, xx]
                        den += kk[i + r, j + r]
            want[y, x] = num / den
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert abs(float(k.sum()) - 1.0) < 1e-6
    # A constant map stays constant (normalised convolution: no dark border).
    const = S.dilated_smoothing(torch.full((1, h, w), 2.5), k, dilation=d)
    assert torch.allclose(const, torch.full_like(const, 2.5), atol=1e-6)


def test_spatial_kinds_compose():
    rng = np.random.default_rng(5)
    score = torch.from_numpy(rng.standard_normal((1, 12, 12)).astype(np.float32))
    label = torch.from_numpy(np.kron(rng.integers(0, 3, (3, 3)), np.ones((4, 4), int)))[None]
    k = S.gaussian_kernel()
    bs = S.spatial_postprocess(score, label, 'bs', k)
    ds = S.spatial_postprocess(score, label, 'ds', k)
    bsds = S.spatial_postprocess(score, label, 'bsds', k)
    assert torch.allclose(bs, S.boundary_suppression(score, label))
    assert torch.allclose(ds, S.dilated_smoothing(score, k))
    assert torch.allclose(bsds, S.dilated_smoothing(bs, k))
    with pytest.raises(ValueError):
        S.spatial_postprocess(score, label, 'blur', k)


# ---- fused scores ---------------------------------------------------------------------

def test_fused_score_matches_numpy():
    rng = np.random.default_rng(3)
    maps = {'energy': rng.normal(size=(2, 5, 7)), 'moose_entropy': rng.random((2, 5, 7))}
    stats = {'energy': (-4.0, 2.0), 'moose_entropy': (0.3, 0.1)}
    got = S.fused_score({k: torch.from_numpy(v) for k, v in maps.items()},
                        ('energy', 'moose_entropy'), stats).numpy()
    want = ((maps['energy'] + 4.0) / 2.0 + (maps['moose_entropy'] - 0.3) / 0.1) / 2
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_fused_scores_in_the_graph_match_their_members():
    """The network's fused maps equal the standardised mean of its own member maps."""
    from model_helpers import sml_stats
    from ood_seg_ros.model import ModelConfig, OodSegNet
    torch.manual_seed(0)
    stats = sml_stats(11)
    model = OodSegNet(ModelConfig(input_size=(64, 96), aspp_channels=32, decoder_channels=32,
                                  low_level_project=16, probe_channels=16,
                                  sml_stats=stats)).eval()
    members = sorted({m for v in S.FUSED.values() for m in v})
    model.set_outputs(list(S.FUSED) + members)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    for name, parts in S.FUSED.items():
        want = sum((out[m].numpy().astype(np.float64) - stats['scores'][m]['mean'])
                   / stats['scores'][m]['std'] for m in parts) / len(parts)
        np.testing.assert_allclose(out[name].numpy(), want, rtol=1e-5, atol=1e-5)
    # Requested alone, a fused map still computes its members (and returns only itself).
    model.set_outputs(['fused_energy_moose_entropy'])
    with torch.no_grad():
        alone = model(torch.rand(1, 3, 64, 96))
    assert set(alone) == {'semantic', 'fused_energy_moose_entropy'}


def test_fused_score_without_statistics_is_refused():
    from ood_seg_ros.errors import OodSegError
    from ood_seg_ros.model import ModelConfig, OodSegNet
    model = OodSegNet(ModelConfig(input_size=(64, 96), aspp_channels=32, decoder_channels=32,
                                  low_level_project=16, probe_channels=16))
    with pytest.raises(OodSegError, match='training-split score statistics'):
        model.set_outputs(['fused_energy_moose_entropy'])
