"""sensitivity: one replacement at a time, calibrated, scored by the output change; seeded."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from examples.factory import small_convnet
from scconv_surgery.errors import SelectionError
from scconv_surgery.models import ModelSource, WeightsSource
from scconv_surgery.plan import plan_conversion
from scconv_surgery.sensitivity import layer_sensitivities, output_change, sensitivities_from_folder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return small_convnet(width=16).eval()


def images(n=8, size=16):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_classifier_scores_are_kl_and_repeatable(model):
    plan = plan_conversion(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = layer_sensitivities(model, plan, images(), steps=3, batch_size=4)
    again = layer_sensitivities(model, plan, images(), steps=3, batch_size=4)
    assert first == again and set(first) == {"1.0", "2.0", "3.0"}
    assert all(score >= 0 for score in first.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the base is untouched


def test_each_layer_is_calibrated_as_calibrate_calibrates(model, monkeypatch):
    # at a tenth of calibrate's learning rate, 30 steps left the digits network's layers nearly at their
    # initialisation (KL 1-3.7 nats each): the score said how far the init was, not what calibration leaves
    from scconv_surgery import calibration, sensitivity

    seen = []

    def recording(*args, **kwargs):
        seen.append((kwargs["layers"], kwargs["lr"], kwargs["steps"]))
        return calibration.calibrate(*args, **kwargs)

    monkeypatch.setattr(sensitivity, "calibrate", recording)
    layer_sensitivities(model, plan_conversion(model), images(), steps=2, batch_size=4, names=["2.0"])
    assert seen == [(["2.0"], calibration.DEFAULT_LR, 2)]


def test_features_model_scores_relative_error():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    scores = layer_sensitivities(features, plan_conversion(features), images(4), steps=2, batch_size=2,
                                 names=["2"])
    assert list(scores) == ["2"] and 0 < scores["2"] < 10


def test_output_change():
    logits = [[torch.tensor([[1.0, 2.0, 3.0]])]]
    assert output_change(logits, logits) == pytest.approx(0.0, abs=1e-7)
    assert output_change(logits, [[torch.tensor([[3.0, 2.0, 1.0]])]]) > 0.5
    maps = [[torch.ones(1, 2, 2, 2)]]
    assert output_change(maps, [[torch.ones(1, 2, 2, 2) * 1.5]]) == pytest.approx(0.5)


def test_random_weights_are_refused_before_reading_images(model, tmp_path):
    with pytest.raises(SelectionError) as info:
        sensitivities_from_folder(model, ModelSource.factory("examples.factory:small_convnet"),
                                  plan_conversion(model), tmp_path / "missing", (3, 16, 16))
    assert info.value.name == "weights"


def test_from_a_folder_of_images(model, tmp_path):
    for i in range(4):
        Image.new("RGB", (20, 20), (60 * i, 20, 200 - 40 * i)).save(tmp_path / f"{i}.png")
    source = ModelSource.factory("examples.factory:small_convnet", weights=WeightsSource.file(tmp_path / "w.pt"))
    scores = sensitivities_from_folder(model, source, plan_conversion(model), tmp_path, (3, 16, 16), steps=1,
                                       batch_size=2, num_images=4)
    assert set(scores) == {"1.0", "2.0", "3.0"}


def test_digits_benchmark_runs_both_choices_at_half_the_replaceable_macs(tmp_path, monkeypatch, capsys):
    """benchmarks/sensitivity_digits.py at tiny settings, synthetic images in place of scikit-learn's
    digits (not a test dependency): both sets meet the budget, the table and the JSON have both."""
    import json

    from conftest import fake_digits, load_script

    bench = load_script("benchmarks/sensitivity_digits.py")
    fake = fake_digits(48, 20)
    monkeypatch.setattr(bench, "digits", lambda seed=0: fake)
    out = tmp_path / "digits.json"
    monkeypatch.setattr("sys.argv", ["sensitivity_digits.py", "--train-steps", "2", "--calibration-images", "16",
                                     "--calibration-steps", "1", "--sensitivity-images", "8", "--sensitivity-steps", "1",
                                     "--json", str(out)])
    bench.main()
    printed = capsys.readouterr().out
    assert "| sensitivity |" in printed and "| MACs-greedy |" in printed and "MACs-greedy top-1" in printed
    document = json.loads(out.read_text())
    assert [layer["name"] for layer in document["layers"]] == [f"features.{i}.0" for i in range(1, 7)]
    for arm in ("sensitivity", "MACs-greedy"):
        row = document["rows"][arm]
        assert row["saving_of_all"] >= 0.5 - 1e-9 and row["macs_ratio"] <= document["target_macs"] + 1e-9
    # MACs-greedy: the convs that save the most first (features.5 and 6 save the most, then 3)
    assert document["rows"]["MACs-greedy"]["chosen"] == ["features.3.0", "features.5.0", "features.6.0"]
