import pytest

from scconv_surgery.errors import InvalidRuleError
from scconv_surgery.rules import Rule, RuleAction, match_rules, validate_rules

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


def test_bad_regex_names_the_rule_index():
    with pytest.raises(InvalidRuleError, match=r"rule 1 .*invalid regular expression") as info:
        validate_rules([Rule("ok.*"), Rule("re:layer[1")])
    assert info.value.index == 1
    assert info.value.pattern == "re:layer[1"


def test_empty_pattern_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        Rule("")


def test_round_trip_to_dict():
    rule = Rule("re:layer4\\..*", EXC)
    assert Rule.from_dict(rule.to_dict()) == rule
