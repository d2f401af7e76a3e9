import pytest

from scconv_surgery.errors import InvalidRuleError
from scconv_surgery.cli.rules import assemble_rules
from scconv_surgery.errors import RuleFieldError
from scconv_surgery.rules import CONFIG_FIELDS, FILTER_FIELDS, OPTION_FIELDS, Rule, RuleAction, match_rules, validate_rules

INC, EXC = RuleAction.INCLUDE, RuleAction.EXCLUDE


PATTERN_CASES = [  # (case, pattern, module name, matches)
    ("glob crosses dots", "layer1.*", "layer1.0.conv2", True),
    ("layer1.* does not match layer10", "layer1.*", "layer10.0.conv2", False),
    ("full name, never suffix", "layer1.*", "model.layer1.0.conv2", False),
    ("dot is literal", "layer1.*", "layer1x0.conv2", False),
    ("glob without wildcard is exact", "conv1", "layer1.0.conv1", False),
    ("regex full match", r"re:layer\d\.\d+\.conv2", "layer2.3.conv2", True),
    ("regex is not a search", r"re:layer\d\.\d+\.conv2", "layer2.3.conv2.extra", False),
    ("regex dot is any char", r"re:layer1.0.conv2", "layer1x0.conv2", True),
]


@pytest.mark.parametrize("case, pattern, name, expected", PATTERN_CASES, ids=[c[0] for c in PATTERN_CASES])
def test_pattern_semantics(case, pattern, name, expected):
    assert Rule(pattern).matches(name) is expected


def _select(names, rules):
    """match_rules over the rules whose pattern matches one of ``names``."""
    return match_rules([i for i, r in enumerate(rules) if any(r.matches(n) for n in names)], rules)


def test_exclude_wins_over_a_later_include():
    rules = [Rule("*", INC), Rule("layer1.*", EXC), Rule("layer1.0.conv2", INC)]
    assert _select(["layer1.0.conv2"], rules) == (False, 1)
    assert _select(["layer2.0.conv2"], rules) == (True, 0)


def test_last_matching_include_decides():
    rules = [Rule("layer*", INC), Rule("layer2.*", INC)]
    assert _select(["layer2.0.conv2"], rules) == (True, 1)
    assert _select(["layer3.0.conv2"], rules) == (True, 0)


def test_no_include_rules_select_everything_not_excluded():
    assert _select(["a.b"], []) == (True, None)
    assert _select(["a.b"], [Rule("c.*", EXC)]) == (True, None)
    assert _select(["a.b"], [Rule("c.*", INC)]) == (False, None)


def test_any_alias_matching_counts():
    assert _select(["conv", "again"], [Rule("again", INC)]) == (True, 0)
    assert _select(["conv", "again"], [Rule("again", EXC)]) == (False, 0)


def test_comma_is_part_of_the_pattern():
    rule = Rule("layer1.0.conv2,layer2.0.conv2")
    assert not rule.matches("layer1.0.conv2")
    assert not rule.matches("layer2.0.conv2")


def test_bad_regex_fails_when_the_rule_is_made():
    with pytest.raises(RuleFieldError, match="invalid regular expression") as info:
        Rule("re:layer[1")
    assert (info.value.key, info.value.pattern, info.value.index) == ("pattern", "re:layer[1", None)
    assert isinstance(info.value, InvalidRuleError)


def test_bad_regex_on_the_command_line_names_the_rule_index():
    with pytest.raises(InvalidRuleError, match=r"rule 1 .*invalid regular expression") as info:
        assemble_rules(include=["ok.*", "re:layer[1"])
    assert info.value.index == 1
    assert info.value.pattern == "re:layer[1"


def test_validate_rules_names_what_is_not_a_rule():
    validate_rules([Rule("ok.*")])
    with pytest.raises(InvalidRuleError, match="rule 1 .*not a Rule") as info:
        validate_rules([Rule("ok.*"), "layer1.*"])
    assert info.value.index == 1


CONTRADICTIONS = [  # (case, Rule arguments, key, words in the message)
    ("bounds", dict(min_out_channels=64, max_out_channels=32), "min_out_channels", "is above max_out_channels=32"),
    ("exclude with hyperparameters", dict(action="exclude", gwc_groups=4, strict_paper=True), "gwc_groups",
     "cannot set hyperparameters (gwc_groups, strict_paper)"),
    ("even kernel", dict(kernel_size=4), "kernel_size", "odd kernels"),
    ("zero filter", dict(groups=0), "groups", "groups=0 must be at least 1"),
    ("hyperparameter out of range", dict(gate_threshold=2.0), "gate_threshold", "gate_threshold must be in [0, 1]"),
    ("unknown variant", dict(variant="fast"), "variant", "'fast'"),
    ("unknown action", dict(action="keep"), "action", "'keep'"),
    ("strict_paper not a bool", dict(strict_paper="yes"), "strict_paper", "true or false"),
]


@pytest.mark.parametrize("case, arguments, key, words", CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS])
def test_invalid_rules_name_their_key(case, arguments, key, words):
    with pytest.raises(RuleFieldError) as info:
        Rule("a.*", **arguments)
    assert info.value.key == key
    assert words in info.value.problem and str(info.value) == f"rule 'a.*': {info.value.problem}"  # names the rule


def test_rule_fields_are_pattern_action_filters_hyperparameters_options():
    from dataclasses import fields

    assert tuple(f.name for f in fields(Rule)) == ("pattern", "action", *FILTER_FIELDS, *CONFIG_FIELDS, *OPTION_FIELDS)


def test_empty_pattern_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        Rule("")


def test_round_trip_to_dict():
    rule = Rule("re:layer4\\..*", EXC)
    assert Rule.from_dict(rule.to_dict()) == rule


def test_round_trip_to_dict_with_filters_and_hyperparameters():
    rule = Rule("layer4.*", kernel_size=5, min_in_channels=64, alpha=0.75, variant="seed", strict_paper=False)
    assert rule.to_dict() == {"include": "layer4.*", "kernel_size": 5, "min_in_channels": 64, "variant": "seed",
                              "alpha": 0.75, "strict_paper": False}
    assert Rule.from_dict(rule.to_dict()) == rule
    assert rule.filters() == {"kernel_size": 5, "min_in_channels": 64}
