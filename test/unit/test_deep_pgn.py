"""
Deeper-layer PGN (paper appendix A.2) against autograd, BN folding and ONNX Runtime.

The reference is ``torch.autograd.grad`` of one pixel's loss w.r.t. the weight of the last
convolution before the classifier, on a small network in eval mode, in float64. Exact
mode: the cross-entropy with the one-hot prediction (oh) or the uniform label (uni).
Paper mode: the paper's error vector g is not the CE gradient (methods §3), so the
reference loss is Σ_h g_h z_h with g computed here from the softmax and detached: its
autograd gradient is the back-propagation of g through the network.
"""

import copy
import math

from model_helpers import lively
import numpy as np
from ood_seg_ros import scores as S
from ood_seg_ros.model import ModelConfig, OodSegNet, save_bundle
from ood_seg_ros.model.fold import fold_batch_norms
from ood_seg_ros.runtime import onnx_cache as E
import pytest
import torch
from torch import nn
import torch.nn.functional as F

SIZE = (64, 64)   # decoder maps 16x16
PS = S.PGN_PS
TINY = {'input_size': SIZE, 'aspp_channels': 16, 'decoder_channels': 12,
        'low_level_project': 8, 'probe_channels': 8, 'class_names': tuple('abcde')}

pytestmark = pytest.mark.usefixtures('torch_threads')


def _net(separable, exact, seed=0):
    """Small eval-mode network with random BN statistics and the deep PGN outputs."""
    torch.manual_seed(seed)
    cfg = ModelConfig(separable=separable, pgn_exact=exact, outputs=list(S.DEEP_PGN_SCORES),
                      **TINY)
    model = lively(OodSegNet(cfg), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.3)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))  # signs too
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model.eval()


def _image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, *SIZE, generator=g)


def _decoder_input(model, x):
    """Return the decoder's input y for image x (recorded from the model's forward)."""
    seen = []
    orig = model.decode
    model.decode = lambda y: (seen.append(y), orig(y))[1]
    try:
        with torch.no_grad():
            model.features(x, with_probes=False)
    finally:
        del model.decode
    return seen[0]


def _reference_loss(z, mode, exact):
    """Loss at one pixel from its logits z (C,), float64 (see the module docstring)."""
    c = z.shape[0]
    logp = F.log_softmax(z, 0)
    top = int(z.detach().argmax())
    if exact:
        y = (F.one_hot(torch.tensor(top), c).double() if mode == 'oh'
             else torch.full_like(z, 1.0 / c))
        return -(y * logp).sum()
    sigma = logp.detach().exp()
    if mode == 'oh':
        g = sigma.clone()
        g[top] = 0.0
    else:
        g = sigma * (c - 1.0) / c
    return (g * z).sum()


def _rtol(name):
    """
    Float32 tolerance relative to the map's max |value| (as in test_export).

    At small p, float32 rounding of near-zero features (|v|^0.1 of 1e-9 is 0.13) is
    amplified by 1/p in the log norm.
    """
    return {'0.1': 5e-3, '0.3': 5e-4}.get(name.rsplit('_p', 1)[1], 5e-5)


def _pnorm(v, p):
    a = np.abs(v.astype(np.float64))
    return float(np.sum(a ** p) ** (1.0 / p))


@pytest.mark.parametrize('separable', [True, False])
@pytest.mark.parametrize('exact', [False, True])
def test_deep_pgn_equals_autograd_gradient_norm(separable, exact):
    # Scores from the float64 network, so that both sides see the same features (at
    # p = 0.1 a ReLU output of 1e-9 in one precision and 0 in the other differs by 0.13).
    ref_model = _net(separable, exact).double()
    x = _image().double()
    with torch.no_grad():
        got = ref_model(x)
    assert set(got) == {'semantic', *S.DEEP_PGN_SCORES}
    block = ref_model.decoder[-1]
    conv = block[ref_model._last_conv_index()]
    assert conv.kernel_size == ((1, 1) if separable else (3, 3))
    y = _decoder_input(ref_model, x)
    psi, _ = ref_model.decode(y)
    z = ref_model.classifier(psi)[0]
    h, w = z.shape[-2:]
    checked = 0
    for mode in S.PGN_MODES:
        for i in range(h):
            for j in range(w):
                loss = _reference_loss(z[:, i, j], mode, exact)
                grad = torch.autograd.grad(loss, conv.weight, retain_graph=True)[0]
                grad = grad.detach().numpy().reshape(-1)
                for p in PS:
                    m = got[S.deep_pgn_name(mode, p)]
                    assert m.shape == (1, h, w) and m.dtype == torch.float32
                    ref = _pnorm(grad, p)
                    if ref < 1e-12:   # no gradient (all of ψ off): the lowest value
                        assert math.isfinite(float(m[0, i, j]))
                        continue
                    assert float(m[0, i, j]) == pytest.approx(math.log(ref), abs=2e-4), (
                        mode, p, i, j)
                    checked += 1
    # most pixels have a gradient (a net with everything off would test nothing)
    assert checked >= 0.8 * 2 * len(PS) * h * w


def test_paper_and_exact_deep_pgn_differ():
    x = _image(1)
    with torch.no_grad():
        paper = _net(True, False)(x)
        exact = _net(True, True)(x)
    for n in S.DEEP_PGN_SCORES:
        assert not torch.allclose(paper[n], exact[n], atol=1e-3), n


@pytest.mark.parametrize('separable', [True, False])
def test_deep_pgn_survives_batch_norm_folding(separable):
    model = _net(separable, False, seed=2)
    x = _image(2)
    folded = copy.deepcopy(model)
    assert fold_batch_norms(folded) > 0
    assert not isinstance(folded.decoder[-1][folded._last_conv_index() + 1], nn.BatchNorm2d)
    with torch.no_grad():
        a, b = model(x), folded(x)
    for n in S.DEEP_PGN_SCORES:
        err = float((a[n] - b[n]).abs().max())
        assert err <= _rtol(n) * float(a[n].abs().max()), (n, err)


def test_deep_pgn_only_when_requested():
    model = _net(True, False)
    model.set_outputs(['pgn_uni_p0.5'])
    with torch.no_grad():
        out = model(_image())
    assert set(out) == {'semantic', 'pgn_uni_p0.5'}
    model.set_outputs(['pgn_deep_oh_p2'])
    with torch.no_grad():
        assert set(model(_image())) == {'semantic', 'pgn_deep_oh_p2'}
    assert S.needs(['pgn_deep_uni_p0.5']) == {S.NEEDS_PSI, S.NEEDS_DEEP}
    assert S.parse_deep_pgn_name(S.deep_pgn_name('uni', 0.3)) == ('uni', 0.3)


def test_window_sum_matches_loop():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(2, 5, 6, generator=g)
    for kernel, dil in ((3, 1), (3, 2), (1, 1)):
        got = S.window_sum(s, kernel, dil)
        r = dil * (kernel - 1) // 2
        ref = torch.zeros_like(s)
        for i in range(5):
            for j in range(6):
                for u in range(-r, r + 1, dil):
                    for v in range(-r, r + 1, dil):
                        if 0 <= i + u < 5 and 0 <= j + v < 6:
                            ref[:, i, j] += s[:, i + u, j + v]
        assert torch.allclose(got, ref, atol=1e-6), (kernel, dil)


@pytest.mark.parametrize('separable', [True, False])
def test_deep_pgn_onnx_matches_torch(separable, tmp_path):
    import onnxruntime as ort
    model = _net(separable, False, seed=3)
    path = save_bundle(tmp_path / 'b', model, runtime={}, half=False)
    names = list(S.DEEP_PGN_SCORES)
    onnx_path = E.export_onnx(path, names)
    assert E.onnx_ops(onnx_path) <= E.TENSORRT10_SUPPORTED_OPS
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=['CPUExecutionProvider'])
    x = _image(3)
    with torch.no_grad():
        ref = model(x)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {'image': x.numpy()})))
    for n in names:
        v = ref[n].numpy()
        err = np.abs(got[n].astype(np.float64) - v).max()
        assert err <= _rtol(n) * np.abs(v).max(), (n, err)
