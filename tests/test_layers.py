"""Tests for scconv_surgery.layers: SCConv's SRU, CRU and ScConv, both variants.

Expected numbers come from DESIGN sections 2 and 3, written out here; the seed variant is
checked against tests/golden/seed_scconv.safetensors (made by tests/golden/make_seed_golden.py
from the unofficial ScConv implementation that circulates in blog posts, which these tests
never import).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from scconv_surgery.layers import (
    CRU,
    GAMMA_SUM_EPS,
    SRU,
    ScConv,
    ScConvConfig,
    SeedGroupNorm,
    StridePolicy,
    Variant,
    gamma_ratio,
    gn_group_count,
    reconstruct,
    scconv_constraint_error,
)

GOLDEN = Path(__file__).parent / "golden" / "seed_scconv.safetensors"
VARIANTS = ["paper", "seed"]


def _conv_params(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------
# 1. Output shapes: a drop-in for nn.Conv2d(cin, cout, 3, stride=s, padding=1)
# --------------------------------------------------------------------------------------------

SHAPE_CASES = [  # name, C_in, C_out, extra config
    ("even-8-smallest", 8, 8, {}),
    ("even-16", 16, 16, {}),
    ("even-64", 64, 64, {}),
    ("smallest-g1-4", 4, 4, {"gwc_groups": 1}),
    ("odd-9-to-8", 9, 8, {}),
    ("odd-33-to-32", 33, 32, {}),
    ("odd-9-to-9-g1", 9, 9, {"gwc_groups": 1}),
    ("widen-64-to-128", 64, 128, {}),
    ("narrow-128-to-64", 128, 64, {}),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [7, 8], ids=["hw7", "hw8"])
@pytest.mark.parametrize("policy", ["inside", "pool"])
@pytest.mark.parametrize("stride", [1, 2], ids=["s1", "s2"])
@pytest.mark.parametrize("name,cin,cout,extra", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_output_shape_matches_conv(name, cin, cout, extra, stride, policy, size, variant):
    torch.manual_seed(0)
    config = ScConvConfig(variant=variant, stride_policy=policy, **extra)
    layer = ScConv(cin, cout, stride=stride, config=config)
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
    x = torch.randn(2, cin, size, size + 1)  # H and W differ, so a swapped axis shows
    expected = conv(x).shape
    assert layer(x).shape == expected
    # and the conv arithmetic itself: ceil(H / s) with k = 3, padding 1
    assert expected == (2, cout, -(-size // stride), -(-(size + 1) // stride))


# --------------------------------------------------------------------------------------------
# 2. Parameter counts from DESIGN's formulas
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels", [16, 32, 64, 256], ids=lambda c: f"C{c}")
def test_param_count_design_formula(channels, variant):
    torch.manual_seed(0)
    c = channels
    layer = ScConv(c, config=ScConvConfig(variant=variant))
    assert 29 * c * c % 16 == 0
    convs = 29 * c * c // 16  # DESIGN section 2, alpha=1/2, r=2, g=2, k=3
    gn_affine = 2 * c
    gwc_bias = c
    assert _conv_params(layer) == convs
    assert sum(p.numel() for p in layer.sru.parameters()) == gn_affine
    assert layer.cru.gwc.bias.numel() == gwc_bias
    assert _n_params(layer) == convs + gn_affine + gwc_bias


def test_param_count_docstring_example():
    torch.manual_seed(0)
    assert _n_params(ScConv(64)) == 7616  # 29 * 64**2 / 16 + 2 * 64 + 64


GENERAL_PARAM_CASES = [  # name, C_in, C_out, kernel, stride, policy, alpha, r, g
    ("widen-64-to-128", 64, 128, 3, 1, "inside", 0.5, 2, 2),
    ("narrow-128-to-64", 128, 64, 3, 1, "inside", 0.5, 2, 2),
    ("odd-33-to-32", 33, 32, 3, 1, "inside", 0.5, 2, 2),
    ("odd-9-to-8", 9, 8, 3, 1, "inside", 0.5, 2, 2),
    ("stride2-inside-64-to-128", 64, 128, 3, 2, "inside", 0.5, 2, 2),
    ("stride2-pool-64-to-128", 64, 128, 3, 2, "pool", 0.5, 2, 2),
    ("kernel5-32-to-48", 32, 48, 5, 1, "inside", 0.5, 2, 2),
    ("g4-r4-alpha0.25-64-to-96", 64, 96, 3, 1, "inside", 0.25, 4, 4),
]


@pytest.mark.parametrize("name,cin,cout,k,stride,policy,alpha,r,g", GENERAL_PARAM_CASES,
                         ids=[c[0] for c in GENERAL_PARAM_CASES])
def test_param_count_general_formula(name, cin, cout, k, stride, policy, alpha, r, g):
    torch.manual_seed(0)
    config = ScConvConfig(alpha=alpha, squeeze_ratio=r, gwc_groups=g, stride_policy=policy)
    layer = ScConv(cin, cout, kernel_size=k, stride=stride, config=config)
    up = int(alpha * cin)
    low = cin - up
    up_sq, low_sq = up // r, low // r
    squeeze1 = up * up_sq
    squeeze2 = low * low_sq
    gwc = (up_sq // g) * cout * k * k + cout  # grouped k x k conv, with bias
    pwc1 = up_sq * cout
    pwc2 = low_sq * (cout - low_sq)
    gn = 2 * cin
    assert layer.cru.squeeze1.weight.numel() == squeeze1
    assert layer.cru.squeeze2.weight.numel() == squeeze2
    assert sum(p.numel() for p in layer.cru.gwc.parameters()) == gwc
    assert layer.cru.pwc1.weight.numel() == pwc1
    assert layer.cru.pwc2.weight.numel() == pwc2
    assert _n_params(layer) == squeeze1 + squeeze2 + gwc + pwc1 + pwc2 + gn


# --------------------------------------------------------------------------------------------
# 3. Seed golden fixture
# --------------------------------------------------------------------------------------------

GOLDEN_CASES = [("c32", 32), ("c64", 64)]  # name, channels; as in make_seed_golden.CASES

SEED_TO_OURS = {  # seed key -> our key
    "SRU.gn.gamma": "sru.gn.weight",
    "SRU.gn.beta": "sru.gn.bias",
    "CRU.squeeze1.weight": "cru.squeeze1.weight",
    "CRU.squeeze2.weight": "cru.squeeze2.weight",
    "CRU.GWC.weight": "cru.gwc.weight",
    "CRU.GWC.bias": "cru.gwc.bias",
    "CRU.PWC1.weight": "cru.pwc1.weight",
    "CRU.PWC2.weight": "cru.pwc2.weight",
}


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN))


def _golden_state_dict(golden: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    prefix = f"{case}.state_dict."
    seed_keys = {k[len(prefix):] for k in golden if k.startswith(prefix)}
    assert seed_keys == set(SEED_TO_OURS)
    ours = {}
    for seed_key, our_key in SEED_TO_OURS.items():
        value = golden[prefix + seed_key]
        ours[our_key] = value.reshape(-1) if our_key.startswith("sru.gn.") else value
    return ours


def test_golden_file_holds_exactly_the_tested_cases(golden):
    cases = {k.split(".", 1)[0] for k in golden}
    assert cases == {name for name, _ in GOLDEN_CASES}
    assert GOLDEN.stat().st_size < 1_000_000  # size cap of make_seed_golden.py


@pytest.mark.parametrize("case,channels", GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_seed_variant_reproduces_golden(golden, case, channels):
    torch.manual_seed(0)
    layer = ScConv(channels, config=ScConvConfig(variant="seed")).eval()
    layer.load_state_dict(_golden_state_dict(golden, case), strict=True)
    x, expected = golden[f"{case}.input"], golden[f"{case}.output"]
    assert x.shape[1] == channels
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case,channels", GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_paper_variant_differs_from_golden(golden, case, channels):
    torch.manual_seed(0)
    layer = ScConv(channels, config=ScConvConfig(variant="paper")).eval()
    layer.load_state_dict(_golden_state_dict(golden, case), strict=True)
    with torch.no_grad():
        out = layer(golden[f"{case}.input"])
    diff = (out - golden[f"{case}.output"]).abs().max().item()
    assert diff > 1e-3, f"paper and seed variants agree to {diff}"


def test_seed_group_norm_matches_hand_reference():
    # The golden cannot see the std convention: with t = 0.5 the seed's hard masks depend only
    # on the sign of G * w, which a positive rescaling of G keeps. So check the norm itself:
    # unbiased std, eps added to the std (DESIGN section 2, seed variant).
    torch.manual_seed(0)
    gn = SeedGroupNorm(4, 8)
    with torch.no_grad():
        gn.bias.copy_(torch.randn(8))
    x = torch.randn(2, 8, 3, 3)
    grouped = x.reshape(2, 4, 18)
    n = grouped.shape[2]
    mean = grouped.sum(2, keepdim=True) / n
    std = (((grouped - mean) ** 2).sum(2, keepdim=True) / (n - 1)).sqrt()
    expected = ((grouped - mean) / (std + 1e-10)).reshape(2, 8, 3, 3)
    expected = expected * gn.weight.detach().reshape(1, 8, 1, 1) + gn.bias.detach().reshape(1, 8, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(gn(x), expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 4. Gradients reaching SRU's GroupNorm scale
# --------------------------------------------------------------------------------------------


def _backward(variant: str) -> ScConv:
    torch.manual_seed(0)
    layer = ScConv(16, config=ScConvConfig(variant=variant))
    x = torch.randn(2, 16, 8, 8)
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    return layer


def test_paper_gn_scale_gets_gradient():
    layer = _backward("paper")
    assert layer.sru.gn.weight.grad is not None
    assert layer.sru.gn.weight.grad.abs().max().item() > 0
    assert layer.sru.gn.bias.grad.abs().max().item() > 0
    assert layer.cru.gwc.weight.grad.abs().max().item() > 0


def test_seed_gn_scale_gets_no_gradient():
    # DESIGN: hard masks S >= t, S < t; gamma and beta are cut off from the loss entirely,
    # so autograd leaves their .grad as None (not a zero tensor).
    layer = _backward("seed")
    assert layer.sru.gn.weight.grad is None
    assert layer.sru.gn.bias.grad is None
    assert layer.cru.gwc.weight.grad.abs().max().item() > 0  # the backward did run


# --------------------------------------------------------------------------------------------
# 5. Finite outputs for degenerate GroupNorm scales
# --------------------------------------------------------------------------------------------


def _zero_sum(layer):
    c = layer.sru.gn.weight.numel()
    layer.sru.gn.weight.copy_(torch.tensor([1.0, -1.0] * (c // 2)))


def _zero_scale(layer):
    layer.sru.gn.weight.zero_()


def _all_zero(layer):
    for p in layer.parameters():
        p.zero_()


DEGENERATE_CASES = [  # name, how to set the weights, input maker, dtype
    ("gn-weight-sums-to-zero", _zero_sum, torch.randn, torch.float32),
    ("gn-weight-all-zero", _zero_scale, torch.randn, torch.float32),
    ("all-params-zero", _all_zero, torch.randn, torch.float32),
    ("gn-weight-sums-to-zero-zero-input", _zero_sum, torch.zeros, torch.float32),
    ("gn-weight-sums-to-zero-float16-zero-input", _zero_sum, torch.zeros, torch.float16),
]

def _degenerate_params():
    for name, setter, make_input, dtype in DEGENERATE_CASES:
        for variant in VARIANTS:
            # float16 with G == 0: gamma_ratio must stay finite (0 * inf would be NaN)
            yield pytest.param(setter, make_input, dtype, variant, id=f"{name}-{variant}")


@pytest.mark.parametrize("setter,make_input,dtype,variant", list(_degenerate_params()))
def test_output_finite_for_degenerate_gn_weights(setter, make_input, dtype, variant):
    torch.manual_seed(0)
    layer = ScConv(16, config=ScConvConfig(variant=variant), dtype=dtype)
    with torch.no_grad():
        setter(layer)
    x = make_input(2, 16, 8, 8).to(dtype).requires_grad_()
    y = layer(x)
    assert torch.isfinite(y).all()
    if dtype == torch.float32:
        (y * torch.randn_like(y)).sum().backward()
        assert torch.isfinite(x.grad).all()
        for name, p in layer.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_gamma_ratio_zero_sum_is_finite():
    gamma = torch.tensor([1.0, -1.0, 2.0, -2.0])
    assert gamma.sum().item() == 0.0
    w = gamma_ratio(gamma)
    assert w.shape == (4,)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, gamma / GAMMA_SUM_EPS, atol=0.0, rtol=1e-6)


def test_gamma_ratio_is_plain_ratio_with_sign():
    gamma = torch.tensor([1.0, 2.0, -4.0, 0.5])  # sum = -0.5: negative, not clamped
    torch.testing.assert_close(gamma_ratio(gamma), gamma / -0.5, atol=0.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# 6. channels_last
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("stride,policy", [(1, "inside"), (2, "inside"), (2, "pool")],
                         ids=["s1", "s2-inside", "s2-pool"])
def test_channels_last_same_values(variant, stride, policy):
    torch.manual_seed(0)
    layer = ScConv(16, 32, stride=stride, config=ScConvConfig(variant=variant, stride_policy=policy))
    x = torch.randn(2, 16, 8, 8)
    x_cl = x.to(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    with torch.no_grad():
        y, y_cl = layer(x), layer(x_cl)
    torch.testing.assert_close(y_cl, y, atol=1e-6, rtol=1e-5)
    if variant == "paper":
        assert y_cl.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------
# 8. reconstruct (eq. 4)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [2, 8, 16])
def test_reconstruct_even_matches_eq4(channels):
    torch.manual_seed(0)
    x1, x2 = torch.randn(2, channels, 3, 4), torch.randn(2, channels, 3, 4)
    h = channels // 2
    x11, x12 = x1[:, :h], x1[:, h:]
    x21, x22 = x2[:, :h], x2[:, h:]
    expected = torch.cat((x11 + x22, x12 + x21), dim=1)
    torch.testing.assert_close(reconstruct(x1, x2), expected, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("channels", [3, 9, 33])
def test_reconstruct_odd_uses_every_x2_channel_once(channels):
    torch.manual_seed(0)
    x1 = torch.zeros(2, channels, 3, 3)
    x2 = torch.arange(channels, dtype=torch.float32).reshape(1, -1, 1, 1).expand(2, -1, 3, 3)
    out = reconstruct(x1, x2)
    assert out.shape == (2, channels, 3, 3)
    per_channel = out[0, :, 0, 0]
    assert sorted(per_channel.tolist()) == list(range(channels))  # a permutation
    # x1 goes through unpermuted
    x1 = torch.randn(2, channels, 3, 3)
    torch.testing.assert_close(reconstruct(x1, torch.zeros_like(x1)), x1, atol=0.0, rtol=0.0)


# --------------------------------------------------------------------------------------------
# 9. The paper SRU against a hand-written DESIGN section 2, steps 1-6
# --------------------------------------------------------------------------------------------

SRU_CASES = [  # name, C, gn_groups bound, expected GroupNorm groups, gate threshold
    ("C16-gn4", 16, 4, 4, 0.5),
    ("C12-gn16-uses-12", 12, 16, 12, 0.5),
    ("C32-gn16", 32, 16, 16, 0.5),
    ("C16-gn16-t0.51", 16, 16, 16, 0.51),
]


@pytest.mark.parametrize("name,c,gn_bound,groups,t", SRU_CASES, ids=[s[0] for s in SRU_CASES])
def test_paper_sru_matches_hand_reference(name, c, gn_bound, groups, t):
    torch.manual_seed(0)
    sru = SRU(c, gn_groups=gn_bound, gate_threshold=t, variant="paper")
    assert sru.gn.num_groups == groups
    with torch.no_grad():
        sru.gn.weight.copy_(torch.rand(c) * 4 - 1)  # some negative scales
        sru.gn.bias.copy_(torch.randn(c) * 0.1)
    gamma, beta = sru.gn.weight.detach(), sru.gn.bias.detach()
    x = torch.randn(2, c, 6, 5)

    g = F.group_norm(x, groups, gamma, beta, eps=1e-5)  # step 1
    w = (gamma / gamma.sum()).reshape(1, c, 1, 1)  # step 2
    s = torch.sigmoid(g * w)  # step 3
    w1 = torch.where(s > t, torch.ones_like(s), s)  # step 4
    w2 = torch.where(s > t, torch.zeros_like(s), s)
    x1, x2 = w1 * x, w2 * x  # step 5
    h = c // 2
    expected = torch.cat((x1[:, :h] + x2[:, h:], x1[:, h:] + x2[:, :h]), dim=1)  # step 6

    assert (s > t).any() and (s <= t).any()  # both gate branches are exercised
    with torch.no_grad():
        out = sru(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("c", [16, 15])
def test_paper_sru_gradients_match_hand_reference(c):
    """The optimised forward (in-place ops, no torch.where) gives the reference's gradients."""
    torch.manual_seed(1)
    sru = SRU(c, gn_groups=4 if c == 16 else 5, variant="paper").double()
    with torch.no_grad():
        sru.gn.weight.copy_(torch.rand(c, dtype=torch.float64) * 4 - 1)
        sru.gn.bias.copy_(torch.randn(c, dtype=torch.float64) * 0.1)
    x = torch.randn(2, c, 6, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    gamma = sru.gn.weight.detach().clone().requires_grad_()
    beta = sru.gn.bias.detach().clone().requires_grad_()

    g = F.group_norm(x_ref, sru.gn.num_groups, gamma, beta, eps=1e-5)
    s = torch.sigmoid(g * (gamma / gamma.sum()).reshape(1, c, 1, 1))
    x1 = torch.where(s > 0.5, torch.ones_like(s), s) * x_ref
    x2 = torch.where(s > 0.5, torch.zeros_like(s), s) * x_ref
    expected = x1 + torch.roll(x2, -(c // 2), dims=1)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (sru(x) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(sru.gn.weight.grad, gamma.grad)
    torch.testing.assert_close(sru.gn.bias.grad, beta.grad)


# --------------------------------------------------------------------------------------------
# 10. The paper CRU against hand-written eqs. 5-9
# --------------------------------------------------------------------------------------------

CRU_CASES = [  # name, C_in, C_out, stride
    ("16-to-16", 16, 16, 1),
    ("16-to-24", 16, 24, 1),
    ("64-to-32", 64, 32, 1),
    ("odd-33-to-32", 33, 32, 1),
    ("16-to-24-stride2-inside", 16, 24, 2),
]


@pytest.mark.parametrize("name,cin,cout,stride", CRU_CASES, ids=[c[0] for c in CRU_CASES])
def test_paper_cru_matches_hand_reference(name, cin, cout, stride):
    torch.manual_seed(0)
    cru = CRU(cin, cout, stride=stride, variant="paper")
    x = torch.randn(2, cin, 8, 8)
    up = cin // 2  # int(alpha * C) with alpha = 1/2
    low = cin - up
    low_sq = low // 2  # r = 2
    p = {k: v.detach() for k, v in cru.state_dict().items()}
    assert p["pwc2.weight"].shape == (cout - low_sq, low_sq, 1, 1)

    xu = F.conv2d(x[:, :up], p["squeeze1.weight"])
    xl = F.conv2d(x[:, up:], p["squeeze2.weight"])
    y1 = (F.conv2d(xu, p["gwc.weight"], p["gwc.bias"], stride=stride, padding=1, groups=2)
          + F.conv2d(xu, p["pwc1.weight"], stride=stride))  # eq. 5
    reused = xl if stride == 1 else F.avg_pool2d(xl, stride)  # DESIGN section 3, policy inside
    y2 = torch.cat((F.conv2d(xl, p["pwc2.weight"], stride=stride), reused), dim=1)  # eq. 6
    s1, s2 = y1.mean(dim=(2, 3), keepdim=True), y2.mean(dim=(2, 3), keepdim=True)  # eq. 7
    b1 = torch.exp(s1) / (torch.exp(s1) + torch.exp(s2))  # eq. 8
    b2 = torch.exp(s2) / (torch.exp(s1) + torch.exp(s2))
    expected = b1 * y1 + b2 * y2  # eq. 9

    with torch.no_grad():
        out = cru(x)
    assert out.shape == (2, cout, 8 // stride, 8 // stride)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 11. Channel constraints
# --------------------------------------------------------------------------------------------

INELIGIBLE_CASES = [  # name, C_in, C_out, config extras, part of the message
    ("C1-needs-2", 1, 1, {}, "at least 2 channels"),
    ("C2-too-small", 2, 2, {}, "too small"),
    ("C3-too-small", 3, 3, {}, "too small"),
    ("g1-C3-too-small", 3, 3, {"gwc_groups": 1}, "too small"),
    ("out-63-not-divisible-by-g2", 64, 63, {}, "out_channels=63 is not divisible by gwc_groups=2"),
    ("out-66-not-divisible-by-g4", 64, 66, {"gwc_groups": 4},
     "out_channels=66 is not divisible by gwc_groups=4"),
    ("upper-squeeze-3-not-divisible", 12, 12, {}, "squeezed upper part (3 channels)"),
    ("upper-squeeze-2-not-divisible-by-g4", 8, 8, {"gwc_groups": 4},
     "squeezed upper part (2 channels)"),
    ("out-equals-low-squeeze", 64, 16, {}, "must exceed the reused lower part (16 channels)"),
    ("out-below-low-squeeze", 64, 8, {}, "must exceed the reused lower part (16 channels)"),
]

ELIGIBLE_CASES = [  # name, C_in, C_out, config extras
    ("C64", 64, 64, {}),
    ("C8-smallest-g2", 8, 8, {}),
    ("C4-smallest-g1", 4, 4, {"gwc_groups": 1}),
    ("odd-9-to-8", 9, 8, {}),
    ("widen-64-to-128", 64, 128, {}),
    ("out-just-above-low-squeeze", 64, 18, {}),
]


@pytest.mark.parametrize("name,cin,cout,extra,fragment", INELIGIBLE_CASES,
                         ids=[c[0] for c in INELIGIBLE_CASES])
def test_constraint_error_message_and_raise(name, cin, cout, extra, fragment):
    torch.manual_seed(0)
    config = ScConvConfig(**extra)
    message = scconv_constraint_error(cin, cout, config)
    assert isinstance(message, str)
    assert fragment in message
    with pytest.raises(ValueError, match=re.escape(message)):
        ScConv(cin, cout, config=config)


@pytest.mark.parametrize("name,cin,cout,extra", ELIGIBLE_CASES, ids=[c[0] for c in ELIGIBLE_CASES])
def test_constraint_none_when_eligible(name, cin, cout, extra):
    torch.manual_seed(0)
    config = ScConvConfig(**extra)
    assert scconv_constraint_error(cin, cout, config) is None
    layer = ScConv(cin, cout, config=config)
    assert layer(torch.randn(1, cin, 5, 5)).shape == (1, cout, 5, 5)


def test_even_kernel_rejected():
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        ScConv(16, kernel_size=4)


# --------------------------------------------------------------------------------------------
# 12. GroupNorm group count
# --------------------------------------------------------------------------------------------

GN_CASES = [  # name, channels, bound, expected
    ("64-bound16", 64, 16, 16),
    ("48-bound16", 48, 16, 16),
    ("40-bound16", 40, 16, 10),
    ("36-bound16", 36, 16, 12),
    ("9-bound16", 9, 16, 9),
    ("17-prime-bound16", 17, 16, 1),
    ("7-bound16", 7, 16, 7),
    ("64-bound1", 64, 1, 1),
    ("30-bound7", 30, 7, 6),
]


@pytest.mark.parametrize("name,channels,bound,expected", GN_CASES, ids=[c[0] for c in GN_CASES])
def test_gn_group_count(name, channels, bound, expected):
    assert gn_group_count(channels, bound) == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_sru_uses_gn_group_count(variant):
    torch.manual_seed(0)
    layer = ScConv(40, 40, config=ScConvConfig(variant=variant, gn_groups=16))
    assert layer.sru.gn.num_groups == 10


# --------------------------------------------------------------------------------------------
# 13. torch.compile
# --------------------------------------------------------------------------------------------


def test_compile_fullgraph_matches_eager_paper():
    torch.manual_seed(0)
    layer = ScConv(16, 32, stride=2, config=ScConvConfig(variant="paper"))
    x = torch.randn(2, 16, 8, 8)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = layer(x)
        out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 14. device and dtype
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_meta_device_builds_without_storage(variant):
    torch.manual_seed(0)
    layer = ScConv(64, 128, stride=2, config=ScConvConfig(variant=variant), device="meta")
    tensors = list(layer.parameters()) + list(layer.buffers())
    assert len(tensors) == 8  # gn weight, bias; squeeze1, squeeze2, gwc weight, bias, pwc1, pwc2
    assert all(t.device.type == "meta" for t in tensors)
    out = layer(torch.empty(2, 64, 8, 8, device="meta"))
    assert out.device.type == "meta"
    assert out.shape == (2, 128, 4, 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_parameters_and_output(variant):
    torch.manual_seed(0)
    layer = ScConv(16, config=ScConvConfig(variant=variant), dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    out = layer(torch.randn(2, 16, 6, 6, dtype=torch.float64))
    assert out.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# 15. ScConvConfig validation
# --------------------------------------------------------------------------------------------

BAD_CONFIGS = [  # name, kwargs, field named in the error
    ("alpha-0", {"alpha": 0.0}, "alpha"),
    ("alpha-1", {"alpha": 1.0}, "alpha"),
    ("squeeze-ratio-0", {"squeeze_ratio": 0}, "squeeze_ratio"),
    ("squeeze-ratio-float", {"squeeze_ratio": 1.5}, "squeeze_ratio"),
    ("gwc-groups-0", {"gwc_groups": 0}, "gwc_groups"),
    ("gwc-groups-bool", {"gwc_groups": True}, "gwc_groups"),
    ("gn-groups-0", {"gn_groups": 0}, "gn_groups"),
    ("gate-threshold-2", {"gate_threshold": 2.0}, "gate_threshold"),
    ("gate-threshold-negative", {"gate_threshold": -0.1}, "gate_threshold"),
]


@pytest.mark.parametrize("name,kwargs,field", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_config_rejects_bad_values(name, kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        ScConvConfig(**kwargs)


@pytest.mark.parametrize("name,kwargs", [("variant", {"variant": "fast"}),
                                         ("stride_policy", {"stride_policy": "crop"})],
                         ids=["bad-variant", "bad-stride-policy"])
def test_config_rejects_unknown_enum_value(name, kwargs):
    with pytest.raises(ValueError, match=f"'{list(kwargs.values())[0]}' is not a valid"):
        ScConvConfig(**kwargs)


def test_config_to_dict_plain_strings():
    config = ScConvConfig(variant="seed", stride_policy="pool")
    assert config.variant is Variant.SEED
    assert config.stride_policy is StridePolicy.POOL
    d = config.to_dict()
    assert type(d["variant"]) is str and d["variant"] == "seed"
    assert type(d["stride_policy"]) is str and d["stride_policy"] == "pool"
    assert d == {"variant": "seed", "alpha": 0.5, "squeeze_ratio": 2, "gwc_groups": 2,
                 "gn_groups": 16, "gate_threshold": 0.5, "stride_policy": "pool"}
    assert json.loads(json.dumps(d)) == d
    assert ScConvConfig(**d) == config  # round trip
