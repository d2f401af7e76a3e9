"""selection: exact choices from an injected timer's profile, rules that replay, budgets checked."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from examples.factory import small_convnet
from scconv_surgery.errors import SelectionError
from scconv_surgery.plan import plan_conversion
from scconv_surgery.profiling import ProfileSettings, profile_plan
from scconv_surgery.rules import Rule, RuleAction
from scconv_surgery.rules_file import load_rules_file
from scconv_surgery.selection import Criterion, SelectionConfig, exact_rules, select_layers, write_rules_file
from tests.test_profiling import SIZE, SOURCE, TableTimer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return small_convnet(width=16)


@pytest.fixture(scope="module")
def plan(model):
    return plan_conversion(model)


@pytest.fixture(scope="module")
def profile(model, plan):
    # 1.0: twice as fast; 2.0: three times slower; 3.0: twice as fast, saving the most time
    timer = TableTimer({("1.0", "dense"): 2.0, ("1.0", "scconv"): 1.0, ("2.0", "dense"): 1.0,
                        ("2.0", "scconv"): 3.0, ("3.0", "dense"): 4.0, ("3.0", "scconv"): 2.0,
                        ("", "original"): 20.0})
    return profile_plan(model, SOURCE, plan, SIZE, ProfileSettings(repeats=3), timer=timer, cache_dir=False)


def test_faster_takes_only_the_faster_layers(profile, plan):
    selection = select_layers(profile, plan, "faster")
    assert selection.chosen == ("1.0", "3.0")
    assert selection.rules == (Rule("1.0"), Rule("3.0"))
    assert selection.predicted_latency == pytest.approx((20 - 1 - 2) / 20)
    assert selection.macs_ratio < 1 and selection.params_ratio < 1 and selection.objective == "latency"


def test_faster_margin(profile, plan):
    assert select_layers(profile, plan, "faster", margin=0.6).chosen == ()
    assert select_layers(profile, plan, "faster", margin=0.6).rules == (Rule("*", RuleAction.EXCLUDE),)


def test_macs_budget_prefers_the_faster_layers_and_lands_close(profile, plan):
    saved = {lp.name: lp.macs_before - lp.macs_after for lp in profile.layers}
    total = profile.model_macs
    # a budget that one layer meets: the one with the most time saved per MAC saved
    target = 1 - min(saved.values()) / total
    selection = select_layers(profile, plan, Criterion.TARGET_MACS, target)
    assert len(selection.chosen) == 1 and selection.chosen[0] in ("1.0", "3.0")
    assert selection.macs_ratio <= target
    every = 1 - sum(saved.values()) / total
    assert select_layers(profile, plan, "target_macs", every).chosen == ("1.0", "2.0", "3.0")


def test_sensitivity_changes_the_choice(profile, plan):
    saved = {lp.name: lp.macs_before - lp.macs_after for lp in profile.layers}
    target = 1 - min(saved.values()) / profile.model_macs
    sensitive = profile.with_sensitivities({"1.0": 5.0, "2.0": 0.1, "3.0": 5.0})
    selection = select_layers(sensitive, plan, "target_macs", target)
    assert selection.objective == "sensitivity" and selection.chosen == ("2.0",)
    assert select_layers(sensitive, plan, "target_macs", target, use_sensitivity=False).objective == "latency"


def test_latency_budget(profile, plan):
    assert select_layers(profile, plan, "target_latency", 0.9).chosen == ("3.0",)  # 18/20
    assert select_layers(profile, plan, "target_latency", 0.85).chosen == ("1.0", "3.0")  # 17/20
    with pytest.raises(SelectionError, match="cannot be reached"):
        select_layers(profile, plan, "target_latency", 0.5)


def test_selection_is_deterministic_ties_by_name(profile, plan):
    tied = dataclasses.replace(profile, layers=tuple(dataclasses.replace(lp, dense_seconds=1.0, scconv_seconds=0.5,
                                                                         macs_before=100, macs_after=0)
                                                     for lp in profile.layers), model_macs=300)
    assert select_layers(tied, plan, "target_macs", 0.7).chosen == ("1.0",)
    assert select_layers(tied, plan, "target_macs", 0.4).chosen == ("1.0", "2.0")


@pytest.mark.parametrize("value", [0, -0.1, 1.5, float("nan"), None])
def test_budget_outside_the_unit_interval_is_refused(profile, plan, value):
    with pytest.raises(SelectionError) as info:
        select_layers(profile, plan, "target_params", value)
    assert info.value.name == "target_params"
    with pytest.raises(SelectionError):
        SelectionConfig("target_macs", value)


def test_rules_carry_hyperparameters_and_escape_names(plan):
    seed_plan = plan_conversion(small_convnet(width=16), config=__import__("scconv_surgery.layers").layers.ScConvConfig(
        variant="seed"))
    (rule,) = exact_rules(seed_plan, ["1.0"])
    assert rule.variant.value == "seed" and rule.pattern == "1.0"
    from scconv_surgery.selection import _pattern

    assert _pattern("blocks[0].conv") == r"re:blocks\[0\]\.conv"


def test_rules_file_replays_the_choice(profile, plan, model, tmp_path):
    selection = select_layers(profile, plan, "faster")
    path = write_rules_file(tmp_path / "chosen.yaml", selection, profile)
    text = path.read_text()
    assert text.startswith("# Rules chosen by scconv-surgery's measured selection: faster (margin 0.05)")
    loaded = load_rules_file(path)
    assert loaded.rules == selection.rules
    replayed = plan_conversion(model, loaded.rules)
    assert [d.name for d in replayed.replaced] == list(selection.chosen)
