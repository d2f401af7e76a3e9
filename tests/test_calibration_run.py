import pytest
import torch
from PIL import Image

from scconv_surgery import models
from scconv_surgery.models import WeightsSource, create_model
from scconv_surgery.errors import CalibrationError
from scconv_surgery.calibration_run import CalibrationConfig, calibrate_checkpoint
from scconv_surgery.pipeline import run_conversion


@pytest.fixture
def images(tmp_path):
    for i in range(4):
        Image.new("RGB", (40, 40), (60 * i, 20, 200 - 40 * i)).save(tmp_path / f"{i}.png")
    return tmp_path


def test_pretrained_base_is_rebuilt_with_the_recorded_tag(tmp_path, images, monkeypatch):
    """The original of a checkpoint made with --pretrained comes from the same timm tag (cache first)."""
    path = tmp_path / "m.pt"
    result = run_conversion("timm:resnet18", output=path, input_size=(3, 32, 32), seed=3)
    payload = torch.load(path, weights_only=True)
    payload["manifest"]["source"]["weights"] = {"kind": "pretrained", "tag": "a1_in1k"}
    torch.save(payload, path)
    base, _ = create_model("timm:resnet18", weights=WeightsSource.random(seed=3))  # the base it was made from
    asked = []
    real_build = models._build

    def build(library, name, kwargs, pretrained):  # the boundary: what would load the pretrained weights
        if not pretrained:
            return real_build(library, name, kwargs, pretrained)
        asked.append((library, name, kwargs))
        return base
    monkeypatch.setattr(models, "_build", build)
    config = CalibrationConfig(data=images, num_images=4, steps=1)
    done = calibrate_checkpoint(path, config, out=tmp_path / "c.pt")
    assert asked == [("timm", "resnet18.a1_in1k", {})]
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
