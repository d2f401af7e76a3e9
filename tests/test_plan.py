import copy

import pytest
import timm
import torch
import torch.nn.utils.prune
import torchvision
from torch import nn

from conftest import AliasedConvNet, SubclassConvNet
from scconv_surgery.errors import InvalidRuleError
from scconv_surgery.layers import ScConvConfig, StridePolicy
from scconv_surgery.plan import Action, ConvSpec, SkipReason, plan_conversion
from scconv_surgery.rules import Rule, RuleAction


def _scconv_params(c_in: int, c_out: int, k: int = 3) -> int:
    """DESIGN section 2 with alpha 1/2, r 2, g 2, generalised to C_out: convs + GN affine + GWC bias."""
    up, low = c_in // 2, c_in - c_in // 2
    squeeze = up * (up // 2) + low * (low // 2)
    gwc = (up // 2 // 2) * c_out * k * k
    pwc1 = (up // 2) * c_out
    pwc2 = (low // 2) * (c_out - low // 2)
    return squeeze + gwc + pwc1 + pwc2 + 2 * c_in + c_out


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_resnet50_default_plan_replaces_exactly_the_bottleneck_3x3(library, resnet50_bottleneck_conv2):
    model = (timm.create_model("resnet50") if library == "timm" else torchvision.models.resnet50())
    plan = plan_conversion(model)
    assert len(plan.decisions) == 53  # stem + 16 x 3 + 4 downsample
    assert {d.name for d in plan.replaced} == resnet50_bottleneck_conv2
    assert plan.skip_summary() == {"kernel": 1, "pointwise": 36}
    stem = next(d for d in plan.decisions if d.name == "conv1")
    assert stem.reason is SkipReason.KERNEL
    assert stem.detail.startswith("kernel 7x7: 3x3 only")
    by_name = {d.name: d for d in plan.decisions}
    assert by_name["layer1.0.conv2"].params_after == _scconv_params(64, 64) == 7616
    assert by_name["layer4.0.conv2"].spec.stride == (2, 2)
    assert by_name["layer4.0.conv2"].params_after == _scconv_params(512, 512)
    assert by_name["layer4.0.conv2"].params_before == 512 * 512 * 9


def test_plan_does_not_touch_the_model(tiny_net):
    before = copy.deepcopy(tiny_net.state_dict())
    modules = dict(tiny_net.named_modules())
    plan_conversion(tiny_net, [Rule("block*")])
    assert dict(tiny_net.named_modules()) == modules
    for key, value in tiny_net.state_dict().items():
        assert torch.equal(value, before[key])


INELIGIBLE = [  # (case, conv, reason, words in the detail)
    ("1x1", nn.Conv2d(16, 16, 1), SkipReason.POINTWISE, "1x1"),
    ("5x5 without a rule", nn.Conv2d(16, 16, 5, padding=2), SkipReason.KERNEL, "5x5"),
    ("non-square", nn.Conv2d(16, 16, (1, 3), padding=(0, 1)), SkipReason.KERNEL, "non-square"),
    ("dilated", nn.Conv2d(16, 16, 3, padding=2, dilation=2), SkipReason.DILATED, "dilation 2x2"),
    ("depthwise", nn.Conv2d(16, 16, 3, padding=1, groups=16), SkipReason.GROUPED, "depthwise"),
    # squeezes 2 * 64 * 32 + GWC (32 / 32) * 128 * 9 + PWC1 32 * 128 + PWC2 32 * 96 + GroupNorm 5 * 128
    # = 13,056 MACs; params add GroupNorm's 2 * 128 and GWC's bias 128; the conv: 128 * 4 * 9 = 4,608 (+128)
    ("grouped, SCConv costs more", nn.Conv2d(128, 128, 3, padding=1, groups=32), SkipReason.GROUPED,
     "costs 12,800 params, 13,056 MACs per output position, the conv 4,736 params, 4,608 MACs"),
    ("grouped, GWC cannot take the groups", nn.Conv2d(16, 16, 3, padding=1, groups=8), SkipReason.GROUPED,
     "squeezed upper part (4 channels) is not divisible by gwc_groups=8"),
    ("reflect padding", nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"), SkipReason.PADDING, "reflect"),
    ("valid padding", nn.Conv2d(16, 16, 3), SkipReason.PADDING, "not kernel_size // 2"),
    ("non-uniform stride", nn.Conv2d(16, 16, 3, stride=(2, 1), padding=1), SkipReason.STRIDE, "2x1"),
    ("too few channels", nn.Conv2d(3, 16, 3, padding=1), SkipReason.CHANNELS, "in_channels=3"),
    ("one output channel", nn.Conv2d(16, 1, 3, padding=1), SkipReason.CHANNELS,
     "no hyperparameters make SCConv map 16 -> 1 channels"),
]


@pytest.mark.parametrize("case, conv, reason, words", INELIGIBLE, ids=[c[0] for c in INELIGIBLE])
def test_ineligible_convs_are_skipped_with_the_failed_constraint(case, conv, reason, words):
    plan = plan_conversion(nn.Sequential(conv))
    (decision,) = plan.decisions
    assert decision.action is Action.SKIP
    assert decision.reason is reason
    assert words in decision.detail
    assert decision.params_after == decision.params_before == ConvSpec.from_conv(conv).params


def test_padding_same_string_is_eligible():
    (decision,) = plan_conversion(nn.Sequential(nn.Conv2d(16, 16, 3, padding="same"))).decisions
    assert decision.is_replaced


@pytest.mark.parametrize("policy, replaced", [("inside", True), ("pool", True), ("skip", False)])
def test_stride_policy(policy, replaced):
    model = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1))
    (decision,) = plan_conversion(model, config=ScConvConfig(stride_policy=policy)).decisions
    assert decision.is_replaced is replaced
    if not replaced:
        assert decision.reason is SkipReason.STRIDE
        assert "stride_policy 'skip'" in decision.detail
    else:
        assert decision.config.stride_policy is StridePolicy(policy)


def test_conv_subclass_with_its_own_forward_is_skipped():
    (decision,) = plan_conversion(SubclassConvNet()).decisions
    assert decision.reason is SkipReason.CONV_SUBCLASS
    assert decision.class_name == "OwnForwardConv"
    assert "own forward" in decision.detail


def test_timm_conv2d_same_is_replaceable():
    from timm.layers import Conv2dSame

    (decision,) = plan_conversion(nn.Sequential(Conv2dSame(16, 16, 3, stride=2))).decisions
    assert decision.is_replaced
    assert decision.class_name == "Conv2dSame"


def test_aliases_are_one_decision():
    plan = plan_conversion(AliasedConvNet())
    (decision,) = plan.decisions
    assert (decision.name, decision.aliases) == ("conv", ("again",))
    assert decision.is_replaced


def test_include_and_exclude(tiny_net):
    plan = plan_conversion(tiny_net, [Rule("block*"), Rule("block2", RuleAction.EXCLUDE)])
    decisions = {d.name: d for d in plan.decisions}
    assert [d.name for d in plan.replaced] == ["block1"]
    assert decisions["block1"].rule_index == 0
    assert (decisions["block2"].reason, decisions["block2"].rule_index) == (SkipReason.EXCLUDED, 1)
    assert decisions["proj"].reason is SkipReason.POINTWISE  # ineligibility comes first
    assert plan.rule_matches == (2, 1)


def test_include_that_matches_nothing_is_reported(tiny_net):
    plan = plan_conversion(tiny_net, [Rule("block1"), Rule("layer1.*")])
    assert plan.unmatched_includes() == ("layer1.*",)
    assert plan.decisions[2].reason is SkipReason.NOT_SELECTED


def test_bad_regex_raises_before_planning(tiny_net):
    with pytest.raises(InvalidRuleError):
        plan_conversion(tiny_net, [Rule("re:(")])


def test_plan_to_dict_round_trips_decisions(tiny_net):
    from scconv_surgery.plan import Decision

    plan = plan_conversion(tiny_net)
    doc = plan.to_dict()
    assert (doc["convs"], doc["replaced"], doc["skipped"]) == (4, 2, 2)
    assert [Decision.from_dict(d) for d in doc["decisions"]] == list(plan.decisions)


def _old_style(fn, *args):
    def make() -> nn.Conv2d:
        conv = nn.Conv2d(16, 16, 3, padding=1)
        fn(conv, *args)
        return conv
    return make


def _gradient_hooked() -> nn.Conv2d:
    conv = nn.Conv2d(16, 16, 3, padding=1)
    conv.weight.register_hook(lambda grad: grad.clamp(-1, 1))
    return conv


MANAGED_WEIGHTS = [  # (case, conv factory, reason, words in the detail)
    ("parametrizations.spectral_norm", _old_style(nn.utils.parametrizations.spectral_norm), "parametrized",
     "parametrized (weight by SpectralNorm, torch.nn.utils.parametrize)"),
    ("parametrizations.weight_norm", _old_style(nn.utils.parametrizations.weight_norm), "parametrized",
     "parametrized (weight by WeightNorm"),
    ("parametrizations.orthogonal", _old_style(nn.utils.parametrizations.orthogonal), "parametrized",
     "parametrized (weight by Orthogonal"),
    ("old-style spectral_norm", _old_style(nn.utils.spectral_norm), "weight_hook", "weight computed by SpectralNorm"),
    ("old-style weight_norm", _old_style(nn.utils.weight_norm), "weight_hook", "weight computed by WeightNorm"),
    ("pruned", _old_style(torch.nn.utils.prune.l1_unstructured, "weight", 0.5), "weight_hook",
     "weight computed by L1Unstructured"),
    ("gradient hook on the weight", _gradient_hooked, "weight_hook", "gradient hooks on its weight tensor"),
]


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize("case, make, reason, words", MANAGED_WEIGHTS, ids=[c[0] for c in MANAGED_WEIGHTS])
def test_convs_whose_weight_is_managed_are_skipped_with_a_named_reason(case, make, reason, words):
    """Parametrizations and weight hooks belong to a weight SCConv does not have."""
    model = nn.Sequential(make(), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    plan = plan_conversion(model, [Rule("*", conv_class=type(model[0]).__name__)])  # even when a rule names it
    assert (plan.decisions[0].action.value, plan.decisions[0].reason.value) == ("skip", reason)
    assert words in plan.decisions[0].detail
    assert plan_conversion(model).decisions[1].is_replaced


# -- beyond the paper's constraints: adapted hyperparameters, grouped convs, standardised weights --

def test_channels_failing_the_paper_get_an_adapted_squeeze_ratio():
    """A DenseNet-121 dense layer's 3x3 maps 128 to 32 channels: at squeeze_ratio 2 PWC2 is empty."""
    (decision,) = plan_conversion(nn.Sequential(nn.Conv2d(128, 32, 3, padding=1, bias=False))).decisions
    assert decision.is_replaced
    assert (decision.config.squeeze_ratio, decision.config.gwc_groups) == (4, 2)
    assert [(a.key, a.configured, a.used) for a in decision.adapted] == [("squeeze_ratio", 2, 4)]
    assert "adapted squeeze_ratio=4 (not 2: out_channels=32 must exceed the reused lower part" in decision.detail
    # GroupNorm 2 * 128, squeezes 2 * 64 * 16, GWC 8 * 32 * 9 + bias 32, PWC1 16 * 32, PWC2 16 * 16
    assert decision.params_after == 256 + 2048 + 2304 + 32 + 512 + 256


@pytest.mark.parametrize("strict_paper, rules", [(True, []), (False, [Rule("*", strict_paper=True)])],
                         ids=["argument", "rule key"])
def test_strict_paper_skips_and_says_what_would_fit(strict_paper, rules):
    model = nn.Sequential(nn.Conv2d(128, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1))
    plan = plan_conversion(model, rules, strict_paper=strict_paper)
    skipped, kept = plan.decisions
    assert skipped.reason is SkipReason.CHANNELS
    assert skipped.detail == ("out_channels=32 must exceed the reused lower part (32 channels); fits with "
                              "squeeze_ratio: 4 or alpha: 0.625 in a rule that matches it (strict paper hyperparameters: "
                              "no automatic adaptation)")
    assert kept.is_replaced and kept.adapted == ()


def test_a_later_rule_turns_strict_paper_off_for_what_it_matches():
    model = nn.Sequential(nn.Conv2d(128, 32, 3, padding=1), nn.Conv2d(128, 32, 3, padding=1))
    plan = plan_conversion(model, [Rule("*"), Rule("1", strict_paper=False)], strict_paper=True)
    assert [d.is_replaced for d in plan.decisions] == [False, True]
    assert len(plan.adapted) == 1 and plan.to_dict()["adapted"] == 1


def test_a_3_channel_stem_is_left_dense_and_the_skip_names_a_fix():
    (decision,) = plan_conversion(nn.Sequential(nn.Conv2d(3, 32, 3, padding=1))).decisions
    assert decision.reason is SkipReason.CHANNELS
    assert decision.detail.endswith("no squeeze_ratio >= 2, gwc_groups <= 2 fits; squeeze_ratio: 1, gwc_groups: 1 "
                                    "would, in a rule that matches it")


def test_grouped_conv_cheaper_as_scconv_is_replaced_with_its_groups():
    """ResNeXt-29 8x64d's first-stage 3x3: 512 channels in 8 groups."""
    (decision,) = plan_conversion(nn.Sequential(nn.Conv2d(512, 512, 3, padding=1, groups=8, bias=False))).decisions
    assert decision.is_replaced
    assert decision.config.gwc_groups == 8
    assert [(a.key, a.used, a.why) for a in decision.adapted] == [("gwc_groups", 8, "GWC takes the conv's groups")]
    # GroupNorm 2 * 512, squeezes 2 * 256 * 128, GWC 16 * 512 * 9 + bias 512, PWC1 128 * 512, PWC2 128 * 384
    assert (decision.params_before, decision.params_after) == (512 * 64 * 9, 1024 + 65536 + 73728 + 512 + 65536 + 49152)


def test_strided_grouped_conv_costing_more_macs_is_skipped_with_both_costs():
    """Under the 'inside' stride policy the squeezes run at the input resolution: 4x the MACs."""
    conv = nn.Conv2d(1024, 1024, 3, stride=2, padding=1, groups=8, bias=False)
    (decision,) = plan_conversion(nn.Sequential(conv)).decisions
    assert decision.reason is SkipReason.GROUPED
    assert "costs 1,018,880 params, 1,822,720 MACs per output position, the conv 1,179,648 params, 1,179,648" \
        in decision.detail
    (pooled,) = plan_conversion(nn.Sequential(conv), config=ScConvConfig(stride_policy="pool")).decisions
    assert pooled.is_replaced


class StdConvNet(nn.Module):
    """timm's weight-standardised convs, one followed by a GroupNorm (as in BiT), one by an activation
    (as in NF-ResNets)."""

    def __init__(self):
        super().__init__()
        from timm.layers import GroupNormAct, ScaledStdConv2d, StdConv2d

        self.conv1 = StdConv2d(16, 16, 3, padding=1)
        self.dropout = nn.Dropout(0.0)
        self.norm1 = GroupNormAct(16, 8)
        self.conv2 = ScaledStdConv2d(16, 16, 3, padding=1)
        self.act2 = nn.ReLU()


def test_weight_standardised_conv_is_replaced_only_before_a_norm():
    plan = plan_conversion(StdConvNet())
    before_norm, bare = plan.decisions
    assert before_norm.is_replaced
    assert "StdConv2d's weight standardisation is dropped, and norm1 normalises the output after it" in before_norm.detail
    assert bare.reason is SkipReason.WEIGHT_STANDARDIZED
    assert "no normalisation layer follows it" in bare.detail and "conv_class (ScaledStdConv2d)" in bare.detail
    opted_in = plan_conversion(StdConvNet(), [Rule("*"), Rule("*", conv_class="ScaledStdConv2d")])
    assert [d.is_replaced for d in opted_in.decisions] == [True, True]
    assert opted_in.decisions[1].detail == ("replaced by SCConv; ScaledStdConv2d's weight standardisation is dropped: "
                                            "an include rule names the class")


def test_following_norm_needs_the_conv_s_width():
    from scconv_surgery.std_conv import following_norm

    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Identity(), nn.BatchNorm2d(32), nn.Conv2d(32, 8, 3), nn.GroupNorm(4, 16))
    assert (following_norm(model, "0"), following_norm(model, "3")) == ("2", None)


def test_decisions_of_earlier_manifests_without_adaptations_still_read():
    from scconv_surgery.plan import Decision

    (decision,) = plan_conversion(nn.Sequential(nn.Conv2d(128, 32, 3, padding=1))).decisions
    doc = decision.to_dict()
    assert Decision.from_dict(doc) == decision
    del doc["adapted"]
    assert Decision.from_dict(doc).adapted == ()
