import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from scconv_surgery import load, read_checkpoint
from scconv_surgery.cli.app import app
from scconv_surgery.cli.errors import EXIT_BAD_INPUT
from test_convert import assert_clean_error

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
MODEL = ["--factory", "examples.factory:small_convnet", "--model-kwargs", "width=16", "--input-size", "32"]
REPLACED = ["1.0", "2.0", "3.0"]
FAST = ["--calibrate-images", "16", "--calibrate-steps", "20", "--calibrate-batch-size", "8"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The factory importable, smooth images in images/ (an ImageFolder), and trained-looking weights in w.pt."""
    monkeypatch.chdir(ROOT)
    rng = np.random.default_rng(0)
    for i in range(16):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        folder = tmp_path / "images" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(coarse).resize((40, 40), Image.BILINEAR).save(folder / f"{i}.png")
    from examples.factory import small_convnet

    torch.manual_seed(3)
    model = small_convnet(width=16)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_convert_with_calibrate_reports_and_records_each_layer(workdir):
    out = workdir / "m.pt"
    result = invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--calibrate", workdir / "images", *FAST,
                    "--out", out, "--json")
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)["calibration"]
    assert [layer["name"] for layer in calibration["layers"]] == REPLACED
    assert all(layer["error_after"] < layer["error_before"] for layer in calibration["layers"])
    assert (calibration["num_images"], calibration["held_out"], calibration["steps"]) == (16, 2, 20)
    assert calibration["batchnorms"] == ["0.1", "1.1", "2.1", "3.1"]
    assert calibration["data"] == str(workdir / "images") and calibration["input_size"] == [3, 32, 32]
    assert (calibration["images_available"], calibration["images_requested"]) == (16, 16)
    assert read_checkpoint(out).manifest.calibration == calibration
    assert "1.0: 20 steps, loss" in result.stderr  # progress, one line per layer off a terminal
    verified = invoke("verify", out, "--weights", workdir / "w.pt", "--json")  # re-estimated statistics allowed
    assert verified.exit_code == 0, verified.output


def test_human_report_has_the_calibration_table(workdir):
    result = invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--calibrate", workdir / "images", *FAST,
                    "--calibrate-images", 100, "--out", workdir / "m.pt")
    assert result.exit_code == 0, result.output
    assert "error before" not in result.stderr  # the result goes to stdout, progress to stderr
    assert "holds 16 images, fewer than the 100 asked for: all were used" in " ".join(result.stdout.split())
    assert "Calibration on 16 images" in result.stdout and "error before" in result.stdout
    assert "BatchNorm statistics re-estimated on the 16 images: 4 layers" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--calibrate", "{tmp}/images"], ["random weights", "--allow-random-weights"]),
    (["--weights", "{tmp}/w.pt", "--calibrate", "{tmp}/empty"], ["holds no image files"]),
    (["--weights", "{tmp}/w.pt", "--calibrate", "{tmp}/missing"], ["no such folder"]),
    (["--weights", "{tmp}/w.pt", "--calibrate", "{tmp}/images", "--calibrate-device", "gpu"], ["not a device"]),
], ids=["random-weights", "empty", "missing", "device"])
def test_bad_calibration_input_exits_2_before_any_work(workdir, args, words):
    args = [a.format(tmp=workdir) for a in args]
    result = invoke("convert", *MODEL, *args, "--out", workdir / "m.pt")
    assert_clean_error(result, EXIT_BAD_INPUT, *words)
    assert not (workdir / "m.pt").exists()


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_file_that_is_not_an_image_is_named_before_the_model_is_built(workdir, dry_run):
    (workdir / "images" / "class0" / "notes.png").write_text("not an image")
    result = invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--calibrate", workdir / "images",
                    *(["--dry-run"] if dry_run else ["--out", workdir / "m.pt"]))
    assert_clean_error(result, EXIT_BAD_INPUT, "notes.png", "cannot be read as an image")
    assert "building" not in result.stderr and not (workdir / "m.pt").exists()


def test_dry_run_checks_but_does_not_calibrate(workdir):
    result = invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--calibrate", workdir / "images",
                    "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["calibration"] is None
    human = invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--calibrate", workdir / "images", "--dry-run")
    assert "would calibrate on 16 images from" in " ".join(human.stdout.split())


def test_calibrate_command_fits_a_saved_checkpoint(workdir):
    plain, calibrated = workdir / "m.pt", workdir / "c.safetensors"
    assert invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--out", plain).exit_code == 0
    result = invoke("calibrate", plain, "--data", workdir / "images", "--out", calibrated, "--weights",
                    workdir / "w.pt", "--images", 16, "--steps", 20, "--batch-size", 8, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["output"] == str(calibrated)
    assert [layer["name"] for layer in doc["calibration"]["layers"]] == REPLACED
    manifest = read_checkpoint(calibrated).manifest
    assert manifest.calibration == doc["calibration"]
    assert manifest.replaced == read_checkpoint(plain).manifest.replaced
    before, after = load(plain).state_dict(), load(calibrated).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in changed if "running" not in k
            and "num_batches" not in k} == set(REPLACED)
    # verify: it loads, runs, and every tensor outside the replaced layers is the weights file's
    # (BatchNorm statistics re-estimated by the calibration excepted)
    verified = invoke("verify", calibrated, "--weights", workdir / "w.pt", "--json")
    assert verified.exit_code == 0, verified.output
    checks = json.loads(verified.stdout)["checks"]
    assert all(check["passed"] for check in checks) and "weights" in " ".join(c["name"] for c in checks)


def test_calibrate_command_rebuilds_the_original_only_as_recorded(workdir):
    plain = workdir / "m.pt"
    assert invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--out", plain).exit_code == 0
    common = ["calibrate", plain, "--data", workdir / "images", "--out", workdir / "c.pt", "--steps", 1]
    assert_clean_error(invoke(*common), EXIT_BAD_INPUT, "converted from the weights file 'w.pt'", "--weights FILE")
    torch.manual_seed(4)
    from examples.factory import small_convnet

    torch.save(small_convnet(width=16).state_dict(), workdir / "other.pt")
    assert_clean_error(invoke(*common, "--weights", workdir / "other.pt"), EXIT_BAD_INPUT, "sha256 differs")
    assert not (workdir / "c.pt").exists()


def test_calibrate_command_on_random_weights_needs_the_flag(workdir):
    plain = workdir / "r.pt"
    assert invoke("convert", *MODEL, "--out", plain, "--seed", 7).exit_code == 0
    common = ["calibrate", plain, "--data", workdir / "images", "--out", workdir / "c.pt", "--images", 8,
              "--steps", 2]
    assert_clean_error(invoke(*common), EXIT_BAD_INPUT, "random weights", "--allow-random-weights")
    result = invoke(*common, "--allow-random-weights")  # rebuilt from the recorded seed: it fits the checkpoint
    assert result.exit_code == 0, result.output


def test_calibrating_a_trained_checkpoint_is_refused(workdir):
    plain, trained = workdir / "m.pt", workdir / "trained.pt"
    assert invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--out", plain).exit_code == 0
    payload = read_checkpoint(plain).to_dict()
    payload["state_dict"]["0.0.weight"] = payload["state_dict"]["0.0.weight"] + 0.01  # as fine-tuning would
    torch.save(payload, trained)
    result = invoke("calibrate", trained, "--data", workdir / "images", "--out", workdir / "c.pt", "--weights",
                    workdir / "w.pt", "--steps", 1)
    assert_clean_error(result, EXIT_BAD_INPUT, "differs from checkpoint", "0.0.weight")


def test_few_images_and_a_layer_that_got_worse_are_warned_about(workdir, monkeypatch):
    from scconv_surgery import calibration

    real = calibration._relative_error
    calls = []

    def error(*args, **kwargs):  # the second measurement of each layer (after the fit) reads worse
        calls.append(1)
        return real(*args, **kwargs) + (10.0 if len(calls) % 2 == 0 else 0.0)

    monkeypatch.setattr(calibration, "_relative_error", error)
    result = invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--calibrate", workdir / "images",
                    "--calibrate-images", 4, "--calibrate-steps", 2, "--out", workdir / "m.pt")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert "the error grew during the fit for 1.0, 2.0, 3.0" in text
    assert "4 images are few for calibration" in text
