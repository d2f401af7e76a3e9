"""profiling: exact medians with an injected timer, the cache, device checks, one real smoke run."""
from __future__ import annotations

import json

import pytest
import torch

from examples.factory import small_convnet
from scconv_surgery.errors import DeviceError, ProfileMismatchError
from scconv_surgery.layers import ScConvConfig
from scconv_surgery.models import ModelSource
from scconv_surgery.plan import plan_conversion
from scconv_surgery.rules import Rule, RuleAction
from scconv_surgery.profiling import (
    Profile,
    ProfileSettings,
    check_profile,
    profile_model,
    profile_plan,
    time_models,
)
from scconv_surgery.timing import ThreadTimer, resolve_device

SOURCE = ModelSource.factory("examples.factory:small_convnet", kwargs={"width": 16})
SIZE = (3, 32, 32)


class TableTimer:
    """Seconds from a table by (layer, variant); records the order of the calls."""

    name = "table"

    def __init__(self, table: dict[tuple[str, str], float]):
        self.table, self.calls = table, []

    def __call__(self, fn, label):
        self.calls.append(label)
        return self.table.get(label, self.table.get(("*", label[1]), 1.0))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return small_convnet(width=16)


def table():
    return {("1.0", "dense"): 2.0, ("1.0", "scconv"): 1.0, ("2.0", "dense"): 1.0, ("2.0", "scconv"): 3.0,
            ("3.0", "dense"): 4.0, ("3.0", "scconv"): 2.0, ("", "original"): 20.0}


def test_injected_timer_gives_exact_medians_and_ratios(model):
    plan = plan_conversion(model)
    timer = TableTimer(table())
    profile = profile_plan(model, SOURCE, plan, SIZE, ProfileSettings(repeats=3), timer=timer, cache_dir=False)
    assert [lp.name for lp in profile.layers] == ["1.0", "2.0", "3.0"]
    first = profile.layer("1.0")
    assert (first.dense_seconds, first.scconv_seconds, first.ratio, first.spread) == (2.0, 1.0, 0.5, 0.0)
    assert profile.layer("2.0").ratio == 3.0 and profile.model_seconds == 20.0
    assert first.input_shape == (1, 16, 32, 32) and first.macs_after < first.macs_before
    assert first.params_before == 16 * 16 * 9 and profile.timer == "table"
    # interleaved with a rotating order: dense first, then scconv first, then dense first
    layer_calls = [c for c in timer.calls if c[0] == "1.0"]
    assert layer_calls == [("1.0", "dense"), ("1.0", "scconv"), ("1.0", "scconv"), ("1.0", "dense"),
                           ("1.0", "dense"), ("1.0", "scconv")]


def test_batch_size_multiplies_the_probed_batch(model):
    profile = profile_plan(model, SOURCE, plan_conversion(model), SIZE, ProfileSettings(batch_size=4, repeats=3),
                           timer=TableTimer(table()), cache_dir=False)
    assert profile.layer("3.0").input_shape == (4, 32, 16, 16)


def test_profile_round_trips_through_json(model, tmp_path):
    profile = profile_plan(model, SOURCE, plan_conversion(model), SIZE, ProfileSettings(repeats=3),
                           timer=TableTimer(table()), cache_dir=False).with_sensitivities({"1.0": 0.25})
    path = profile.save(tmp_path / "p.json")
    assert Profile.load(path) == profile
    assert json.loads(path.read_text())["layers"][0]["sensitivity"] == 0.25
    with pytest.raises(ProfileMismatchError):
        Profile.load(tmp_path / "missing.json")


def test_cache_makes_a_second_profile_skip_the_timing(model, tmp_path):
    plan = plan_conversion(model)
    first = profile_plan(model, SOURCE, plan, SIZE, ProfileSettings(repeats=3), timer=TableTimer(table()),
                         cache_dir=tmp_path)
    timer = TableTimer({})
    second = profile_plan(model, SOURCE, plan, SIZE, ProfileSettings(repeats=3), timer=timer, cache_dir=tmp_path)
    assert second.cached_layers == 3 and second.layers == first.layers
    assert timer.calls == []  # neither the layers nor the whole network were timed again
    other = profile_plan(model, SOURCE, plan, SIZE, ProfileSettings(repeats=3, dtype="bfloat16"),
                         timer=TableTimer(table()), cache_dir=tmp_path)
    assert other.cached_layers == 0  # another dtype is another measurement


@pytest.mark.parametrize("device, problem", [("tpu", "not a device name"), ("cuda:99", "CUDA"),
                                             ("meta", "not meta")])
def test_a_device_that_does_not_exist_is_refused_before_any_work(device, problem, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was built before the device was checked")

    monkeypatch.setattr("scconv_surgery.models.rebuild_base", fail)
    with pytest.raises(DeviceError) as info:
        profile_model(SOURCE, ProfileSettings(device=device))
    assert info.value.device == device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


def test_a_profile_of_another_model_or_device_is_refused(model):
    plan = plan_conversion(model)
    profile = profile_plan(model, SOURCE, plan, SIZE, ProfileSettings(repeats=3), timer=TableTimer(table()),
                           cache_dir=False)
    check_profile(profile, SOURCE, plan, "cpu")
    with pytest.raises(ProfileMismatchError, match="not timm:resnet18"):
        check_profile(profile, ModelSource("timm", "resnet18"), plan, "cpu")
    with pytest.raises(ProfileMismatchError, match="measured on"):
        check_profile(Profile.from_dict({**profile.to_dict(), "device_name": "another cpu"}), SOURCE, plan, "cpu")
    with pytest.raises(ProfileMismatchError, match="measured on cuda:0, not cpu"):
        check_profile(Profile.from_dict({**profile.to_dict(), "settings": {**profile.settings.to_dict(),
                                                                           "device": "cuda:0"}}),
                      SOURCE, plan, "cpu")


def test_a_profile_measured_with_other_scconv_hyperparameters_is_refused(model):
    plan = plan_conversion(model)
    profile = profile_plan(model, SOURCE, plan, SIZE, ProfileSettings(repeats=3), timer=TableTimer(table()),
                           cache_dir=False)
    assert profile.layer("1.0").config == plan.replaced[0].config  # recorded per conv
    assert Profile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    with pytest.raises(ProfileMismatchError, match=r"measured '1.0' as an SCConv with variant='paper'; this "
                       r"conversion replaces it with variant='seed' \(and 2 more convs\)") as info:
        check_profile(profile, SOURCE, plan_conversion(model, config=ScConvConfig(variant="seed")), "cpu")
    assert (info.value.layer, info.value.hyperparameters) == ("1.0", ("variant",))
    with pytest.raises(ProfileMismatchError, match=r"'3.0' as an SCConv with alpha=0.5, gate_threshold=0.5; .* "
                       r"alpha=0.25, gate_threshold=0.7$") as info:  # one conv's hyperparameters from a rule
        check_profile(profile, SOURCE, plan_conversion(model, [Rule("*"), Rule("3.0", alpha=0.25, gate_threshold=0.7)]),
                      "cpu")
    assert info.value.hyperparameters == ("alpha", "gate_threshold")
    # a conv the conversion leaves alone is no candidate: its hyperparameters do not matter
    check_profile(profile, SOURCE, plan_conversion(model, [Rule("3.0", RuleAction.EXCLUDE)]), "cpu")
    # a profile measured with the conversion's hyperparameters fits
    seed_plan = plan_conversion(model, config=ScConvConfig(variant="seed"))
    check_profile(profile_plan(model, SOURCE, seed_plan, SIZE, ProfileSettings(repeats=3), timer=TableTimer(table()),
                               cache_dir=False), SOURCE, seed_plan, "cpu")


def test_a_profile_without_recorded_hyperparameters_is_refused(model):
    plan = plan_conversion(model)
    document = profile_plan(model, SOURCE, plan, SIZE, ProfileSettings(repeats=3), timer=TableTimer(table()),
                            cache_dir=False).to_dict()
    old = {**document, "schema_version": 1, "layers": [{k: v for k, v in layer.items() if k != "config"}
                                                        for layer in document["layers"]]}
    with pytest.raises(ProfileMismatchError, match="does not record the SCConv hyperparameters") as info:
        check_profile(Profile.from_dict(old), SOURCE, plan, "cpu")
    assert info.value.layer == "1.0" and "variant" in info.value.hyperparameters


def test_the_cache_keeps_profiles_of_other_hyperparameters_apart(model, tmp_path):
    paper = profile_plan(model, SOURCE, plan_conversion(model), SIZE, ProfileSettings(repeats=3),
                         timer=TableTimer(table()), cache_dir=tmp_path)
    seed_plan = plan_conversion(model, config=ScConvConfig(variant="seed"))
    seed = profile_plan(model, SOURCE, seed_plan, SIZE, ProfileSettings(repeats=3), timer=TableTimer(table()),
                        cache_dir=tmp_path)
    assert seed.cached_layers == 0 and paper.layer("1.0").config != seed.layer("1.0").config
    again = profile_plan(model, SOURCE, seed_plan, SIZE, ProfileSettings(repeats=3), timer=TableTimer({}),
                         cache_dir=tmp_path)
    assert again.cached_layers == 3 and again.layers == seed.layers


def test_settings_are_validated():
    with pytest.raises(ValueError, match="dtype"):
        ProfileSettings(dtype="int8")
    with pytest.raises(ValueError, match="repeats"):
        ProfileSettings(repeats=1)


def test_smoke_real_timing_restores_threads(model):
    """One real measurement: thread CPU time, one thread meanwhile, restored after; a train step too."""
    threads = torch.get_num_threads()
    plan = plan_conversion(model)
    profile = profile_plan(model, SOURCE, plan, (3, 16, 16), ProfileSettings(repeats=3), cache_dir=False)
    assert torch.get_num_threads() == threads and profile.timer == "thread_time"
    assert all(lp.dense_seconds > 0 and lp.scconv_seconds > 0 for lp in profile.layers)
    train = profile_plan(model, SOURCE, plan, (3, 16, 16), ProfileSettings(repeats=3, train=True,
                                                                           channels_last=True), cache_dir=False)
    assert train.settings.train and all(lp.scconv_seconds > 0 for lp in train.layers)
    optimized = profile_plan(model, SOURCE, plan, (3, 16, 16), ProfileSettings(repeats=3, optimized=True),
                             cache_dir=False)
    assert [lp.macs_after for lp in optimized.layers] == [lp.macs_after for lp in profile.layers]
    timing = time_models(model, model, (3, 16, 16), ProfileSettings(repeats=3), timer=ThreadTimer(min_seconds=0))
    assert timing.original_seconds > 0 and timing.ratio > 0
