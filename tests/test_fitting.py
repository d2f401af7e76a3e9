"""Fitting SCConv's hyperparameters to a conv's channels, and the cost of a replacement."""
import itertools
import logging

import pytest
import torch
from torch import nn

from scconv_surgery.fitting import Adaptation, conv_cost, fit_config, scconv_cost, scconv_macs, suggest_fixes
from scconv_surgery.layers import ScConv, ScConvConfig, scconv_constraint_error

PAPER = ScConvConfig()

FITS = [  # (case, in, out, groups, squeeze_ratio, gwc_groups, adapted keys)
    ("fits as configured", 64, 64, None, 2, 2, ()),
    ("DenseNet-121 128->32: PWC2 empty at r=2, r=3 leaves 21 squeezed channels for g=2", 128, 32, None, 4, 2,
     ("squeeze_ratio",)),
    ("DenseNet-161 192->48: r=3 gives 32 squeezed channels each", 192, 48, None, 3, 2, ("squeeze_ratio",)),
    ("odd squeezed upper part (36: 9 channels) takes g=1 before a larger r", 36, 36, None, 2, 1, ("gwc_groups",)),
    ("odd out_channels", 16, 15, None, 2, 1, ("gwc_groups",)),
    ("grouped conv: GWC takes its 8 groups", 512, 512, 8, 2, 8, ("gwc_groups",)),
    ("grouped conv with 2 groups: the paper's g", 256, 256, 2, 2, 2, ()),
]


@pytest.mark.parametrize("case, c_in, c_out, groups, squeeze_ratio, gwc_groups, keys", FITS, ids=[f[0] for f in FITS])
def test_fit_config(case, c_in, c_out, groups, squeeze_ratio, gwc_groups, keys):
    config, adapted = fit_config(c_in, c_out, PAPER, groups=groups)
    assert (config.squeeze_ratio, config.gwc_groups) == (squeeze_ratio, gwc_groups)
    assert tuple(a.key for a in adapted) == keys
    assert scconv_constraint_error(c_in, c_out, config) is None
    assert (config.alpha, config.gn_groups, config.variant) == (PAPER.alpha, PAPER.gn_groups, PAPER.variant)


def test_adaptation_names_the_constraint_the_configured_value_fails():
    _, (adaptation,) = fit_config(128, 32, PAPER)
    assert adaptation == Adaptation("squeeze_ratio", 2, 4, "out_channels=32 must exceed the reused lower part "
                                    "(32 channels)")
    assert Adaptation.from_dict(adaptation.to_dict()) == adaptation
    _, (grouped,) = fit_config(512, 512, PAPER, groups=8)
    assert grouped.why == "GWC takes the conv's groups"


@pytest.mark.parametrize("c_in, c_out", [(3, 32), (16, 1), (1, 8)], ids=["rgb stem", "one output", "one input"])
def test_nothing_fits_within_the_allowed_directions(c_in, c_out):
    assert fit_config(c_in, c_out, PAPER) is None


def test_strict_changes_nothing_but_a_grouped_convs_gwc():
    assert fit_config(128, 32, PAPER, strict=True) is None
    config, adapted = fit_config(512, 512, PAPER, groups=8, strict=True)
    assert (config.squeeze_ratio, config.gwc_groups, [a.key for a in adapted]) == (2, 8, ["gwc_groups"])


def test_adaptation_starts_from_the_configured_values():
    config, adapted = fit_config(128, 32, ScConvConfig(squeeze_ratio=8, gwc_groups=4))
    assert (config.squeeze_ratio, config.gwc_groups, adapted) == (8, 4, ())


@pytest.mark.parametrize("c_in, c_out, fixes", [
    (128, 32, [{"squeeze_ratio": 4}, {"alpha": 0.625}]),
    (3, 32, [{"squeeze_ratio": 1, "gwc_groups": 1}]),
    (16, 1, []),
], ids=["densenet", "rgb stem", "nothing"])
def test_suggest_fixes(c_in, c_out, fixes):
    assert suggest_fixes(c_in, c_out, PAPER) == fixes
    for fix in fixes:
        assert scconv_constraint_error(c_in, c_out, ScConvConfig(**fix)) is None


def test_every_fitted_config_builds_a_layer_of_the_formula_size():
    """Over a grid of channel counts: what fit_config returns, ScConv accepts, and scconv_cost
    counts its parameters exactly (built on the meta device)."""
    for c_in, c_out in itertools.product(range(2, 130, 9), range(1, 130, 11)):
        fitted = fit_config(c_in, c_out, PAPER)
        if fitted is None:
            continue
        config = fitted[0]
        layer = ScConv(c_in, c_out, config=config, device="meta")
        assert sum(p.numel() for p in layer.parameters()) == scconv_cost(c_in, c_out, 3, 1, config).params, (c_in, c_out)


@pytest.mark.parametrize("c_in, c_out, size, groups, stride", [(128, 32, 8, 1, 1), (36, 36, 9, 1, 2), (64, 64, 6, 8, 2)],
                         ids=["densenet adapted", "odd squeeze, stride 2", "grouped, stride 2"])
def test_fitted_layers_run(c_in, c_out, size, groups, stride):
    config, _ = fit_config(c_in, c_out, PAPER, groups=groups if groups > 1 else None)
    torch.manual_seed(0)
    layer = ScConv(c_in, c_out, stride=stride, config=config)
    out = layer(torch.randn(2, c_in, size, size))
    expected = (size + stride - 1) // stride
    assert out.shape == (2, c_out, expected, expected)
    assert torch.isfinite(out).all()


def _fvcore_macs(module: nn.Module, shape: tuple[int, ...]) -> int:
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    return FlopCountAnalysis(module.eval(), torch.zeros(shape)).unsupported_ops_warnings(False).total()


@pytest.mark.parametrize("stride, policy, size", [(1, "inside", 8), (2, "inside", 8), (2, "pool", 8)])
def test_scconv_macs_equal_fvcore(stride, policy, size):
    config = ScConvConfig(stride_policy=policy)
    layer = ScConv(64, 128, stride=stride, config=config)
    out_size = size // stride
    expected = _fvcore_macs(layer, (1, 64, size, size))
    assert scconv_macs(64, 128, 3, config, input_hw=(size, size), output_hw=(out_size, out_size)) == expected
    if policy == "inside":
        assert scconv_cost(64, 128, 3, stride, config).macs_per_position * out_size ** 2 == expected


def test_conv_cost():
    cost = conv_cost(128, 256, 3, groups=8, bias=True)
    assert (cost.params, cost.macs_per_position) == (256 * 16 * 9 + 256, 256 * 16 * 9)
    assert cost.macs_per_position * 4 == _fvcore_macs(nn.Conv2d(128, 256, 3, padding=1, groups=8), (1, 128, 2, 2))
