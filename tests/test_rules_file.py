"""Rules files (YAML / TOML), presets, and the shipped examples."""
from pathlib import Path

import pytest
import timm

from scconv_surgery.errors import RulesFileError
from scconv_surgery.layers import ScConvConfig
from scconv_surgery.plan import plan_conversion
from scconv_surgery.cli.rules import assemble_rules
from scconv_surgery.rules import PRESETS, Rule, RuleAction
from scconv_surgery.rules_file import load_rules_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "rules"

YAML = """
preset: paper
rules:
  - include: "layer4.*"
    alpha: 0.75
    min_in_channels: 256
  - exclude: "re:layer4\\\\.0\\\\..*"
"""
TOML = """
preset = "paper"
[[rules]]
include = "layer4.*"
alpha = 0.75
min_in_channels = 256
[[rules]]
exclude = 're:layer4\\.0\\..*'
"""


def test_yaml_and_toml_give_the_same_rules(tmp_path):
    (tmp_path / "r.yaml").write_text(YAML)
    (tmp_path / "r.toml").write_text(TOML)
    yaml_file, toml_file = load_rules_file(tmp_path / "r.yaml"), load_rules_file(tmp_path / "r.toml")
    expected = (Rule("layer4.*", RuleAction.INCLUDE, alpha=0.75, min_in_channels=256),
                Rule(r"re:layer4\.0\..*", RuleAction.EXCLUDE))
    assert yaml_file.rules == toml_file.rules == expected
    assert yaml_file.preset == toml_file.preset == "paper"


def test_assemble_orders_preset_file_then_flags(tmp_path):
    (tmp_path / "r.yaml").write_text(YAML)
    rules = assemble_rules(rules_file=tmp_path / "r.yaml", include=["fc"], exclude=["conv1"])
    assert rules[0] == PRESETS["paper"][0]
    assert [r.pattern for r in rules[1:]] == ["layer4.*", r"re:layer4\.0\..*", "fc", "conv1"]
    assert [r.action for r in rules[3:]] == [RuleAction.INCLUDE, RuleAction.EXCLUDE]
    # a preset on the command line replaces the file's
    assert assemble_rules(preset="all", rules_file=tmp_path / "r.yaml")[0].pattern == "layer4.*"


REJECTED = [  # (case, file text, rule index, key, words in the message)
    ("unknown key with a suggestion", "rules:\n  - include: a\n    alpah: 0.5\n", 0, "alpah", "did you mean 'alpha'"),
    ("two unknown keys, both named", "rules:\n  - include: a\n    alpah: 0.5\n    gate_treshold: 0.3\n    zz: 1\n", 0,
     None, "unknown keys 'alpah' (did you mean 'alpha'?), 'gate_treshold' (did you mean 'gate_threshold'?), 'zz'; "
     "allowed: "),
    ("wrong type", "rules:\n  - include: a\n  - include: b\n    kernel_size: three\n", 1, "kernel_size", "must be int"),
    ("bool is not an int", "rules:\n  - include: a\n    stride: true\n", 0, "stride", "must be int"),
    ("bad choice", "rules:\n  - include: a\n    variant: fast\n", 0, "variant", "paper, seed"),
    ("bad regex", "rules:\n  - include: 're:layer[1'\n", 0, "include", "invalid regular expression"),
    ("contradictory bounds", "rules:\n  - include: a\n    min_in_channels: 64\n    max_in_channels: 32\n", 0,
     "min_in_channels",
     "min_in_channels=64 is above max_in_channels=32"),
    ("hyperparameter on an exclude", "rules:\n  - exclude: a\n    alpha: 0.75\n", 0, "alpha", "exclude rule cannot"),
    ("1x1 include", "rules:\n  - include: a\n    kernel_size: 1\n", 0, "kernel_size", "odd kernels of 3 or more"),
    ("out-of-range hyperparameter", "rules:\n  - include: a\n    alpha: 1.5\n", 0, "alpha", "alpha must be in (0, 1)"),
    ("stride zero", "rules:\n  - include: a\n    stride: 0\n", 0, "stride", "must be at least 1"),
    ("negative channel bound", "rules:\n  - include: a\n    min_in_channels: -1\n", 0, "min_in_channels",
     "must be at least 1"),
    ("both include and exclude", "rules:\n  - include: a\n    exclude: b\n", 0, None, "exactly one"),
    ("neither include nor exclude", "rules:\n  - stride: 2\n", 0, None, "exactly one"),
    ("empty pattern", "rules:\n  - include: ''\n", 0, "include", "non-empty"),
    ("rule not a mapping", "rules:\n  - layer1.*\n", 0, None, "must be a mapping"),
    ("unknown top-level key", "rule:\n  - include: a\n", None, "rule", "unknown top-level key"),
    ("rules not a list", "rules: layer1.*\n", None, "rules", "must be a list"),
    ("unknown preset", "preset: fancy\n", None, "preset", "unknown preset 'fancy'"),
    ("not YAML", "rules: [unclosed\n", None, None, "not valid YAML"),
    ("YAML indented wrong", "rules:\n  - include: 'a'\n   exclude: 'b'\n", None, None,
     "not valid YAML: expected <block end>, but found '<block mapping start>' at line 3, column 4 (while parsing a "
     "block collection from line 2, column 3)"),
    ("YAML list left open", "rules:\n  - include: 'a'\n    alpha: [0.5\n", None, None,
     "at line 4, column 1 (while parsing a flow sequence from line 3, column 12)"),
    ("strict_paper as text", "rules:\n  - include: a\n    strict_paper: 'yes'\n", 0, "strict_paper", "must be bool"),
    ("strict_paper on an exclude", "rules:\n  - exclude: a\n    strict_paper: true\n", 0, "strict_paper",
     "exclude rule cannot"),
    ("integer hyperparameter given as a bool", "rules:\n  - include: a\n    squeeze_ratio: true\n", 0,
     "squeeze_ratio", "must be int"),
]


@pytest.mark.parametrize("case, text, index, key, words", REJECTED, ids=[c[0] for c in REJECTED])
def test_rejected_files_name_the_file_rule_and_key(case, text, index, key, words, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesFileError) as info:
        load_rules_file(path)
    err = info.value
    assert (err.path, err.index, err.key) == (str(path), index, key)
    assert words in str(err)
    assert str(path) in str(err)


def test_toml_errors_and_file_errors(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text("[[rules]\ninclude = 'a'\n")
    with pytest.raises(RulesFileError, match="not valid TOML"):
        load_rules_file(bad)
    with pytest.raises(RulesFileError, match="no such file"):
        load_rules_file(tmp_path / "missing.yaml")
    upper = tmp_path / "R.YAML"
    upper.write_text("rules:\n  - include: 'a'\n")
    assert load_rules_file(upper).rules == (Rule("a"),)
    other = tmp_path / "r.txt"
    other.write_text("{}")
    with pytest.raises(RulesFileError, match="unknown suffix; use .yaml, .yml, .json, .toml"):
        load_rules_file(other)


def test_json_rules_files_are_read_and_give_the_yaml_rules(tmp_path):
    """JSON is valid YAML: `--rules rules.json` is read (as JSON), with the same rules."""
    (tmp_path / "r.yaml").write_text(YAML)
    (tmp_path / "r.json").write_text('{"preset": "paper", "rules": [{"include": "layer4.*", "alpha": 0.75, '
                                     '"min_in_channels": 256}, {"exclude": "re:layer4\\\\.0\\\\..*"}]}')
    assert load_rules_file(tmp_path / "r.json").rules == load_rules_file(tmp_path / "r.yaml").rules
    (tmp_path / "bad.json").write_text('{"rules": [}')
    with pytest.raises(RulesFileError, match="not valid JSON: .*line 1 column 12"):
        load_rules_file(tmp_path / "bad.json")


@pytest.mark.parametrize("name, text", [("empty.yaml", ""), ("blank.yml", "\n# only a comment\n"),
                                        ("empty.toml", ""), ("empty.json", "{}"), ("none.yaml", "rules: []\n")])
def test_an_empty_rules_file_is_refused_with_the_file_and_the_fix(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(RulesFileError) as info:
        load_rules_file(tmp_path / name)
    assert str(tmp_path / name) in str(info.value)
    assert "no preset" in str(info.value) and "rule" in info.value.problem


@pytest.fixture(scope="module")
def resnet50():
    return timm.create_model("resnet50")


@pytest.fixture(scope="module")
def resnet18():
    return timm.create_model("resnet18")


def _replaced(model, rules, **config):
    plan = plan_conversion(model, rules, config=ScConvConfig(**config))
    return {d.name: d for d in plan.replaced}


def test_presets_on_resnet18_and_resnet50(resnet18, resnet50, resnet50_bottleneck_conv2):
    basic_conv2 = {f"layer{s}.{b}.conv2" for s in (1, 2, 3, 4) for b in (0, 1)}
    assert set(_replaced(resnet18, PRESETS["paper"])) == basic_conv2
    assert len(_replaced(resnet18, PRESETS["all"])) == 16
    assert set(_replaced(resnet50, PRESETS["paper"])) == resnet50_bottleneck_conv2
    assert set(_replaced(resnet50, PRESETS["all"])) == resnet50_bottleneck_conv2


def test_example_paper_resnet(resnet50, resnet50_bottleneck_conv2):
    rules = assemble_rules(rules_file=EXAMPLES / "paper_resnet.yaml")
    assert set(_replaced(resnet50, rules)) == resnet50_bottleneck_conv2


def test_example_last_two_stages(resnet50):
    rules = assemble_rules(rules_file=EXAMPLES / "last_two_stages.yaml")
    expected = {f"layer3.{b}.conv2" for b in range(6)} | {f"layer4.{b}.conv2" for b in range(3)}
    assert set(_replaced(resnet50, rules)) == expected


def test_example_alpha_last_stage(resnet50, resnet50_bottleneck_conv2):
    replaced = _replaced(resnet50, assemble_rules(rules_file=EXAMPLES / "alpha_last_stage.toml"))
    assert set(replaced) == resnet50_bottleneck_conv2
    assert {n: d.config.alpha for n, d in replaced.items() if n.startswith("layer4")} == {
        "layer4.0.conv2": 0.75, "layer4.1.conv2": 0.75, "layer4.2.conv2": 0.75}
    assert replaced["layer3.0.conv2"].config.alpha == 0.5
    # alpha 3/4 on C=512: up=384 -> 192, low=128 -> 64; GWC 192/2*9*512 + PWC1 192*512 + PWC2 64*448
    expected = 384 * 192 + 128 * 64 + 96 * 9 * 512 + 512 + 192 * 512 + 64 * 448 + 2 * 512
    assert replaced["layer4.1.conv2"].params_after == expected


def test_later_include_overrides_and_filters(resnet50):
    rules = [Rule("*", alpha=0.75), Rule("layer1.*", alpha=0.25, squeeze_ratio=4),
             Rule("*", RuleAction.INCLUDE, stride=2, variant="seed")]
    replaced = _replaced(resnet50, rules)
    one = replaced["layer1.1.conv2"].config
    assert (one.alpha, one.squeeze_ratio, one.variant.value) == (0.25, 4, "paper")
    strided = replaced["layer2.0.conv2"].config
    assert (strided.alpha, strided.squeeze_ratio, strided.variant.value) == (0.75, 2, "seed")
    assert replaced["layer2.0.conv2"].rule_index == 2


def test_kernel_size_rule_makes_5x5_eligible():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(16, 16, 5, padding=2), nn.Conv2d(16, 16, 7, padding=3))
    plan = plan_conversion(model, [Rule("*", kernel_size=5)])
    assert [d.is_replaced for d in plan.decisions] == [True, False]
    assert plan.decisions[1].reason.value == "kernel"  # the rule asked for 5x5 only
    assert plan.rule_matches == (1,)


def test_conv_class_rule_makes_a_subclass_eligible():
    from conftest import SubclassConvNet

    plan = plan_conversion(SubclassConvNet(), [Rule("*", conv_class="OwnForwardConv")])
    assert plan.decisions[0].is_replaced


def test_strict_paper_key_in_yaml_and_toml(tmp_path):
    (tmp_path / "r.yaml").write_text("rules:\n  - include: 'features.*'\n    strict_paper: true\n")
    (tmp_path / "r.toml").write_text("[[rules]]\ninclude = 'features.*'\nstrict_paper = false\n")
    assert load_rules_file(tmp_path / "r.yaml").rules == (Rule("features.*", strict_paper=True),)
    assert load_rules_file(tmp_path / "r.toml").rules == (Rule("features.*", strict_paper=False),)
    assert Rule("features.*", strict_paper=True).to_dict() == {"include": "features.*", "strict_paper": True}
