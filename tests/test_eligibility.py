"""eligibility.decide: one conv in, a typed Replace or Skip out (rule selection is the planner's)."""
import pytest
from torch import nn

from conftest import OwnForwardConv
from scconv_surgery.eligibility import Replace, Skip, SkipReason, decide
from scconv_surgery.layers import ScConvConfig
from scconv_surgery.plan import ConvSpec
from scconv_surgery.rules import Rule


def _decide(conv: nn.Conv2d, *, includes=(), strict=False, config=None):
    model = nn.Sequential(conv)
    return decide(model, "0", conv, ConvSpec.from_conv(conv), config or ScConvConfig(), includes=list(includes),
                  strict=strict)


CASES = [  # (case, conv, includes, strict, the outcome's type, its reason or the adapted keys)
    ("dense 3x3", nn.Conv2d(64, 64, 3, padding=1), (), False, Replace, ()),
    ("1x1", nn.Conv2d(64, 64, 1), (), False, Skip, SkipReason.POINTWISE),
    ("depthwise", nn.Conv2d(64, 64, 3, padding=1, groups=64), (), False, Skip, SkipReason.GROUPED),
    ("5x5 without a rule", nn.Conv2d(64, 64, 5, padding=2), (), False, Skip, SkipReason.KERNEL),
    ("5x5 a rule names", nn.Conv2d(64, 64, 5, padding=2), (Rule("*", kernel_size=5),), False, Replace, ()),
    ("valid padding", nn.Conv2d(64, 64, 3), (), False, Skip, SkipReason.PADDING),
    ("DenseNet's 128 -> 32 adapted", nn.Conv2d(128, 32, 3, padding=1), (), False, Replace, ("squeeze_ratio",)),
    ("DenseNet's 128 -> 32 strict", nn.Conv2d(128, 32, 3, padding=1), (), True, Skip, SkipReason.CHANNELS),
    ("own forward", OwnForwardConv(16, 16, 3, padding=1), (), False, Skip, SkipReason.CONV_SUBCLASS),
    ("own forward a rule names", OwnForwardConv(16, 16, 3, padding=1), (Rule("*", conv_class="OwnForwardConv"),),
     False, Replace, ()),
]


@pytest.mark.parametrize("case, conv, includes, strict, kind, expected", CASES, ids=[c[0] for c in CASES])
def test_decide_returns_a_typed_outcome(case, conv, includes, strict, kind, expected):
    outcome = _decide(conv, includes=includes, strict=strict)
    assert type(outcome) is kind
    if isinstance(outcome, Skip):
        assert outcome.reason is expected and outcome.detail
    else:
        assert tuple(a.key for a in outcome.adapted) == expected
        assert outcome.detail.startswith("replaced by SCConv")
        assert outcome.config.squeeze_ratio >= ScConvConfig().squeeze_ratio
