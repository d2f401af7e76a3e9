"""Issue 20, sections 2-5 at the CLI: weights entries, models without data or in other dtypes,
shared conv parameters, verify's shape contract."""
import json
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from scconv_surgery.cli.app import app
from scconv_surgery.cli.errors import EXIT_BAD_INPUT

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def toys(toy_factory, tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    return toy_factory.removeprefix("factory:")


def test_a_timm_checkpoint_with_an_ema_reports_and_records_the_entry_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    live = torchvision.models.resnet18(num_classes=4).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in live.items()}
    torch.save({"epoch": 3, "state_dict": live, "state_dict_ema": ema}, "last.pth.tar")
    result = invoke("convert", "torchvision:resnet18", "--num-classes", "4", "--weights", "last.pth.tar",
                    "--input-size", "3x64x64", "--out", "m.pt")
    assert result.exit_code == 0, result.output
    assert "weights file last.pth.tar: entry 'state_dict_ema'" in result.stdout
    manifest = torch.load("m.pt", weights_only=True)["manifest"]
    assert manifest["source"]["weights"]["entry"] == "state_dict_ema"
    result = invoke("convert", "torchvision:resnet18", "--num-classes", "4", "--weights", "last.pth.tar",
                    "--weights-key", "state_dict", "--input-size", "3x64x64", "--out", "live.pt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["weights"]["entry"] == "state_dict"
    verify = invoke("verify", "live.pt", "--weights", "last.pth.tar", "--json")  # compares with the entry recorded
    assert verify.exit_code == 0, verify.output
    assert invoke("verify", "m.pt", "--weights", "last.pth.tar").exit_code == 0


def test_weights_key_without_weights_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("convert", "resnet18", "--weights-key", "state_dict", "--dry-run")
    assert result.exit_code == EXIT_BAD_INPUT and "--weights-key" in result.stderr


@pytest.fixture
def meta_checkpoint(toys, monkeypatch):
    """A checkpoint of the tiny net, whose factory then builds on the meta device."""
    result = invoke("convert", "--factory", f"{toys}:tiny", "--input-size", "3x16x16", "--out", "m.pt")
    assert result.exit_code == 0, result.output
    module = sys.modules[toys]
    monkeypatch.setattr(module, "tiny", module.tiny_meta)
    images = "images"
    import os
    os.mkdir(images)
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(f"{images}/{i}.png")
    return toys


@pytest.mark.parametrize("command", ["convert", "dry-run", "report", "verify", "calibrate"])
def test_a_model_without_data_is_refused_before_any_work_in_every_command(command, meta_checkpoint):
    args = {
        "convert": ["convert", "--factory", f"{meta_checkpoint}:tiny", "--input-size", "3x16x16", "--out", "n.pt"],
        "dry-run": ["convert", "--factory", f"{meta_checkpoint}:tiny", "--input-size", "3x16x16", "--dry-run"],
        "report": ["report", "m.pt"],
        "verify": ["verify", "m.pt"],
        "calibrate": ["calibrate", "m.pt", "--data", "images", "--out", "c.pt", "--allow-random-weights"],
    }[command]
    result = invoke(*args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "have no data (the meta device" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and "counting" not in result.stderr
    assert not any(p.exists() for p in map(__import__("pathlib").Path, ("n.pt", "c.pt")))


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", "float16"])
def test_a_model_in_another_dtype_converts_verifies_and_reports(dtype, toys):
    result = invoke("convert", "--factory", f"{toys}:tiny_dtype", "--model-kwargs", f"dtype={dtype}",
                    "--input-size", "3x16x16", "--out", "m.pt")
    assert result.exit_code == 0, result.output
    assert torch.load("m.pt", weights_only=True)["state_dict"]["block1.cru.gwc.weight"].dtype == getattr(torch, dtype)
    for args in (("verify", "m.pt"), ("report", "m.pt")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output


def test_a_conv_whose_weight_the_block_reads_is_skipped_naming_the_reader(toys):
    """TridentNet-style sharing made convert and --dry-run exit 1 with an AttributeError."""
    result = invoke("convert", "--factory", f"{toys}:trident", "--input-size", "3x16x16", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    decisions = {d["name"]: d for d in json.loads(result.stdout)["plan"]["decisions"]}
    assert decisions["block.conv"]["reason"] == "shared_weight"
    assert "block's forward" in decisions["block.conv"]["detail"]
    assert decisions["other"]["action"] == "replace"
    result = invoke("convert", "--factory", f"{toys}:trident", "--input-size", "3x16x16", "--out", "m.pt")
    assert result.exit_code == 0, result.output
    assert invoke("verify", "m.pt").exit_code == 0


def test_verify_weights_on_an_aliased_conv(toys):
    """``self.again = self.conv``: the replacement's tensors sit under both names (exit 4 before)."""
    torch.save(sys.modules[toys].aliased().state_dict(), "w.pth")
    result = invoke("convert", "--factory", f"{toys}:aliased", "--weights", "w.pth", "--input-size", "16x8x8",
                    "--out", "m.pt")
    assert result.exit_code == 0, result.output
    result = invoke("verify", "m.pt", "--weights", "w.pth", "--json")
    assert result.exit_code == 0, result.output
    check = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["untouched weights"]
    assert check["passed"] and check["detail"] == "0 untouched tensors equal the weights file"


def test_verify_compares_a_detector_s_shape_contract_not_its_detection_count(toys):
    result = invoke("convert", "--factory", f"{toys}:detector", "--input-size", "3x8x8", "--out", "m.pt")
    assert result.exit_code == 0, result.output
    result = invoke("verify", "m.pt", "--json")
    assert result.exit_code == 0, result.output
    check = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["output shape"]
    assert "output[0]['boxes'] (N, 4)" in check["detail"] and "output[0]['keypoints'] (N, 17, 3)" in check["detail"]
    assert "output[0]['image_score'] (1,)" in check["detail"]  # not data-dependent: compared in full
