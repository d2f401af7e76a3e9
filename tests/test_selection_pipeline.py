"""run_conversion with a measured selection: chosen set, predicted and measured latency, warnings."""
from __future__ import annotations

import pytest

from scconv_surgery.errors import DeviceError, NothingSelectedError, ProfileMismatchError, SelectionError
from scconv_surgery.layers import ScConvConfig
from scconv_surgery.models import ModelSource
from scconv_surgery.pipeline import run_conversion
from scconv_surgery.profiling import ProfileSettings
from scconv_surgery.rules import Rule, RuleAction
from scconv_surgery.rules_file import load_rules_file
from scconv_surgery.selection import SelectionConfig
from tests.test_profiling import TableTimer

SOURCE = ModelSource.factory("examples.factory:small_convnet", kwargs={"width": 16})
SIZE = (3, 32, 32)


def timer(converted=17.0):
    return TableTimer({("1.0", "dense"): 2.0, ("1.0", "scconv"): 1.0, ("2.0", "dense"): 1.0,
                       ("2.0", "scconv"): 3.0, ("3.0", "dense"): 4.0, ("3.0", "scconv"): 2.0,
                       ("", "original"): 20.0, ("", "converted"): converted})


def selection(**kwargs):
    kwargs.setdefault("timer", timer())
    return SelectionConfig(kwargs.pop("criterion", "faster"), settings=ProfileSettings(repeats=3), cache_dir=False,
                           **kwargs)


def test_faster_converts_only_the_faster_convs_and_reports_both_latencies(tmp_path):
    rules_path = tmp_path / "chosen.yaml"
    result = run_conversion(SOURCE, input_size=SIZE, selection=selection(write_rules=rules_path))
    assert [d.name for d in result.plan.replaced] == ["1.0", "3.0"]
    document = result.to_dict()["selection"]
    assert document["chosen"] == ["1.0", "3.0"] and document["predicted_latency"] == pytest.approx(0.85)
    assert document["measured_latency"] == pytest.approx(0.85) and not document["prediction_missed"]
    assert result.warnings == ()
    assert load_rules_file(rules_path).rules == (Rule("1.0"), Rule("3.0"))
    assert result.plan.rules == (Rule("1.0"), Rule("3.0"))  # the manifest records the exact rules


def test_a_missed_prediction_is_a_warning():
    result = run_conversion(SOURCE, input_size=SIZE, selection=selection(timer=timer(converted=20.0)))
    assert result.selection.missed
    assert any("predicted 0.850x" in w and "measured 1.000x" in w for w in result.warnings)


def test_user_rules_restrict_the_candidates():
    result = run_conversion(SOURCE, input_size=SIZE, rules=[Rule("3.0", RuleAction.EXCLUDE)],
                            selection=selection())
    assert [d.name for d in result.plan.replaced] == ["1.0"]


def test_nothing_faster_is_nothing_selected():
    with pytest.raises(NothingSelectedError):
        run_conversion(SOURCE, input_size=SIZE, selection=selection(margin=0.9))


def test_device_checked_before_any_work(monkeypatch):
    monkeypatch.setattr("scconv_surgery.pipeline.rebuild_base", lambda *a: (_ for _ in ()).throw(AssertionError))
    with pytest.raises(DeviceError):
        run_conversion(SOURCE, selection=SelectionConfig("faster", settings=ProfileSettings(device="cuda:7")))


def test_saved_profile_is_reused_and_checked(tmp_path):
    first = run_conversion(SOURCE, input_size=SIZE, selection=selection())
    assert first.selection.profile_seconds > 0
    from scconv_surgery.profiling import profile_model

    profile = profile_model(SOURCE, ProfileSettings(repeats=3), input_size=SIZE, timer=timer(), cache_dir=False)
    path = profile.save(tmp_path / "profile.json")
    again = run_conversion(SOURCE, input_size=SIZE, selection=selection(profile=path))
    assert [d.name for d in again.plan.replaced] == ["1.0", "3.0"] and again.selection.profile_seconds == 0
    other = ModelSource.factory("examples.factory:small_convnet", kwargs={"width": 8})
    with pytest.raises(ProfileMismatchError, match="width"):
        run_conversion(other, input_size=SIZE, selection=selection(profile=path))
    with pytest.raises(ProfileMismatchError, match="variant='paper'; this conversion replaces it with variant='seed'"):
        run_conversion(SOURCE, input_size=SIZE, config=ScConvConfig(variant="seed"),
                       selection=selection(profile=path))
    with pytest.raises(ProfileMismatchError, match="squeeze_ratio=2; .* squeeze_ratio=4"):
        run_conversion(SOURCE, input_size=SIZE, rules=[Rule("*", squeeze_ratio=4)], selection=selection(profile=path))
    bigger = (SIZE[0], SIZE[1] * 2, SIZE[2] * 2)
    with pytest.raises(ProfileMismatchError, match=f"measured at input size {'x'.join(map(str, SIZE))}, this "
                       f"conversion runs at {'x'.join(map(str, bigger))}"):
        run_conversion(SOURCE, input_size=bigger, selection=selection(profile=path))


def test_unreachable_budget():
    with pytest.raises(SelectionError, match="cannot be reached"):
        run_conversion(SOURCE, input_size=SIZE, selection=selection(criterion="target_macs", value=0.05))
