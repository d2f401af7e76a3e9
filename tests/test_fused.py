"""Tests for scconv_surgery.layers._fused: each step with a hand-written backward equals plain
autograd on the equations it implements, in value, gradient and second derivative."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from scconv_surgery.layers import GAMMA_SUM_EPS
from scconv_surgery.layers._fused import fuse, ratio_affine, soft_gate

# plain-autograd references of the equations (DESIGN section 2)


def _ratio_affine_reference(gamma, beta, eps):
    total = gamma.sum()
    w = gamma / torch.where(total < 0, total.clamp_max(-eps), total.clamp_min(eps))  # eq. 2, guarded
    return gamma * w, beta * w


def _soft_gate_reference(x, z, threshold):
    s = torch.sigmoid(z)  # eq. 3
    keep = s > threshold  # step 4
    x1 = torch.where(keep, x, s * x)
    x2 = torch.where(keep, torch.zeros_like(x), s * x)
    half = x.shape[1] // 2
    return x1 + torch.roll(x2, -half, 1)  # eq. 4 (roll form)


def _fuse_reference(y1, pwc2, reused):
    y2 = torch.cat((pwc2, reused), 1)  # eq. 6
    s = torch.stack((y1.mean((2, 3)), y2.mean((2, 3))))  # eq. 7
    beta = torch.softmax(s, dim=0)[..., None, None]  # eq. 8, per channel across the two branches
    return beta[0] * y1 + beta[1] * y2  # eq. 9


def _gamma_cases():
    torch.manual_seed(0)
    yield "random", torch.rand(6, dtype=torch.float64) * 4 - 1
    yield "sum-negative", torch.tensor([1.0, 2.0, -4.0, 0.5, 0.25, -0.5], dtype=torch.float64)
    # |sum| = 1e-4 below the guard: the clamp binds (inv = 1 / eps, slope 0); away from a sum of
    # exactly 0, where the guarded inverse jumps from -1 / eps to 1 / eps
    yield "sum-small-clamped", torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0, -2.9999], dtype=torch.float64)


GAMMAS = list(_gamma_cases())


@pytest.mark.parametrize("name,gamma", GAMMAS, ids=[g[0] for g in GAMMAS])
def test_ratio_affine_matches_reference(name, gamma):
    eps = 1e-3 if name == "sum-small-clamped" else GAMMA_SUM_EPS
    gamma = gamma.clone().requires_grad_()
    beta = torch.linspace(-0.5, 0.5, gamma.numel(), dtype=torch.float64, requires_grad=True)
    expected = _ratio_affine_reference(gamma, beta, eps)
    out = ratio_affine(gamma, beta, eps)
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)
    upstream = (torch.randn_like(gamma), torch.randn_like(gamma))
    grads = torch.autograd.grad(out, (gamma, beta), upstream)
    expected_grads = torch.autograd.grad(expected, (gamma, beta), upstream)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # the in-place form
        for a, b in zip(ratio_affine(gamma, beta, eps), expected):
            torch.testing.assert_close(a, b)
    assert gradcheck(lambda g, b: ratio_affine(g, b, eps), (gamma, beta))
    assert gradgradcheck(lambda g, b: ratio_affine(g, b, eps), (gamma, beta))


@pytest.mark.parametrize("channels", [6, 5], ids=["even-C", "odd-C"])
def test_soft_gate_matches_reference(channels):
    torch.manual_seed(0)
    x = torch.randn(2, channels, 3, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, channels, 3, 4, dtype=torch.float64, requires_grad=True)
    expected = _soft_gate_reference(x, z, 0.5)
    out = soft_gate(x, z, 0.5)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, z), upstream)
    for a, b in zip(grads, torch.autograd.grad(expected, (x, z), upstream)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(soft_gate(x, z.clone(), 0.5), expected)
    assert gradcheck(lambda x, z: soft_gate(x, z, 0.5), (x, z))
    assert gradgradcheck(lambda x, z: soft_gate(x, z, 0.5), (x, z))


def test_soft_gate_threshold_is_strict():
    # S == t exactly (z = 0, t = 0.5) is not kept: W1 = W2 = 0.5, as the paper's S > t says
    x = torch.ones(1, 2, 1, 1)
    torch.testing.assert_close(soft_gate(x, torch.zeros(1, 2, 1, 1), 0.5), torch.ones(1, 2, 1, 1))
    torch.testing.assert_close(soft_gate(x, torch.full((1, 2, 1, 1), 9.0), 0.5), torch.ones(1, 2, 1, 1))


@pytest.mark.parametrize("reused_channels", [2, 3])
def test_fuse_matches_reference(reused_channels):
    torch.manual_seed(0)
    y1 = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    pwc2 = torch.randn(2, 6 - reused_channels, 3, 4, dtype=torch.float64, requires_grad=True)
    reused = torch.randn(2, reused_channels, 3, 4, dtype=torch.float64, requires_grad=True)
    expected = _fuse_reference(y1, pwc2, reused)
    out = fuse(y1, pwc2, reused)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    inputs = (y1, pwc2, reused)
    for a, b in zip(torch.autograd.grad(out, inputs, upstream), torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(fuse(y1.clone(), pwc2, reused), expected)
    assert gradcheck(fuse, inputs)
    assert gradgradcheck(fuse, inputs)


def test_layer_second_derivatives_are_exact():
    # a whole layer in float64: the gradient penalty's gradient is the true second derivative
    from scconv_surgery import ScConv

    torch.manual_seed(0)
    layer = ScConv(8).double()
    with torch.no_grad():
        layer.sru.gn.weight.uniform_(-1.0, 2.0)
        layer.sru.gn.bias.normal_(0.0, 0.1)
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    params = (layer.sru.gn.weight, layer.sru.gn.bias, layer.cru.gwc.weight)

    def penalty_grad(*inputs):
        (gx,) = torch.autograd.grad(layer(inputs[0]).pow(2).sum(), inputs[0], create_graph=True)
        return gx

    assert gradcheck(penalty_grad, (x, *params), atol=1e-5, fast_mode=True)


def _scalar(fn):
    """A fixed weighted sum of ``fn``'s outputs, to take Hessians of."""
    def weighted(*args):
        outs = fn(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in outs)
    return weighted


def _forward_mode_cases():
    torch.manual_seed(0)
    d = torch.float64
    yield ("ratio-affine", lambda g, b: ratio_affine(g, b, GAMMA_SUM_EPS),
           lambda g, b: _ratio_affine_reference(g, b, GAMMA_SUM_EPS), (torch.rand(5, dtype=d) + 0.1, torch.randn(5, dtype=d)))
    yield ("soft-gate", lambda x, z: soft_gate(x, z, 0.5), lambda x, z: _soft_gate_reference(x, z, 0.5),
           (torch.randn(1, 5, 2, 2, dtype=d), torch.randn(1, 5, 2, 2, dtype=d)))
    yield ("fuse", fuse, _fuse_reference,
           (torch.randn(1, 4, 2, 2, dtype=d), torch.randn(1, 3, 2, 2, dtype=d), torch.randn(1, 1, 2, 2, dtype=d)))


FORWARD_MODE_CASES = list(_forward_mode_cases())


@pytest.mark.parametrize("name,fn,reference,args", FORWARD_MODE_CASES, ids=[c[0] for c in FORWARD_MODE_CASES])
def test_forward_mode_matches_reference(name, fn, reference, args):
    # the jvp rules: torch.func.jacfwd, and hessian = jacfwd(jacrev) through the backward too
    from torch.func import hessian, jacfwd, jacrev

    argnums = tuple(range(len(args)))
    torch.testing.assert_close(jacfwd(fn, argnums=argnums)(*args), jacrev(reference, argnums=argnums)(*args))
    torch.testing.assert_close(hessian(_scalar(fn), argnums=argnums)(*args),
                               hessian(_scalar(reference), argnums=argnums)(*args))
