import pytest
import torch
from PIL import Image

import scconv_surgery.calibration_run as calibration_run
from scconv_surgery import CalibrationConfig, CalibrationError, calibrate_checkpoint, read_checkpoint, run_conversion


@pytest.fixture
def images(tmp_path):
    for i in range(4):
        Image.new("RGB", (40, 40), (60 * i, 20, 200 - 40 * i)).save(tmp_path / f"{i}.png")
    return tmp_path


def test_pretrained_base_is_rebuilt_with_the_recorded_tag(tmp_path, images, monkeypatch):
    """The original of a checkpoint made with --pretrained comes from the same timm tag (cache first)."""
    path = tmp_path / "m.pt"
    result = run_conversion("timm:resnet18", out=path, input_size=(3, 32, 32), seed=3)
    payload = read_checkpoint(path)
    payload["manifest"]["source"]["weights"] = {"kind": "pretrained", "tag": "a1_in1k"}
    torch.save(payload, path)
    with torch.random.fork_rng(devices=[]):  # the base the checkpoint was made from
        torch.manual_seed(3)
        base, _ = calibration_run.create_model("timm:resnet18")
    asked = []

    def create_model(name, **kwargs):  # the boundary: what would load the pretrained weights
        asked.append((name, kwargs))
        return base, None
    monkeypatch.setattr(calibration_run, "create_model", create_model)
    config = CalibrationConfig(data=images, num_images=4, steps=1)
    done = calibrate_checkpoint(path, config, out=tmp_path / "c.pt")
    assert asked == [("timm:resnet18.a1_in1k", {"pretrained": True, "model_kwargs": {}})]
    assert [layer.name for layer in done.run.result.layers] == [d.name for d in result.plan.replaced]


@pytest.mark.parametrize("field, value, words", [
    ("num_images", 0, "'num_images': must be an integer >= 1"),
    ("steps", -1, "'steps'"),
    ("lr", 0.0, "'lr': must be positive"),
    ("lr", float("inf"), "'lr': must be positive and finite, got inf"),
    ("device", "gpu", "not a device"),
], ids=["images", "steps", "lr", "lr infinite", "device"])
def test_config_checks_its_values(tmp_path, field, value, words):
    with pytest.raises(CalibrationError, match=words):
        CalibrationConfig(data=tmp_path, **{field: value})
