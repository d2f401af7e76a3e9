"""examples/finetune.py's pieces, imported from the script (the torchrun run is in tests/cli)."""
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import fake_digits, load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finetune():
    return load_script("examples/finetune.py")


LOGITS, AUX, LABELS = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), \
    torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("output, aux_terms", [
    pytest.param(LOGITS, 0, id="tensor"),
    pytest.param((LOGITS, AUX), 1, id="tuple (Inception with aux_logits)"),
    pytest.param({"out": LOGITS, "features": torch.zeros(4, 8, 2, 2), "aux": AUX}, 1, id="dict with a feature map"),
])
def test_loss_of_nested_outputs_uses_logits_and_auxiliary_classifiers(finetune, output, aux_terms):
    expected = nn.functional.cross_entropy(LOGITS, LABELS) + aux_terms * 0.4 * nn.functional.cross_entropy(AUX, LABELS)
    torch.testing.assert_close(finetune.classification_loss(output, LABELS), expected)


def test_a_model_without_logits_is_refused(finetune):
    features = [torch.zeros(1, 64, 16, 16), torch.zeros(1, 128, 8, 8)]  # timm features_only
    with pytest.raises(ValueError, match=r"returns output\[0\] \(1, 64, 16, 16\), output\[1\] \(1, 128, 8, 8\)"):
        finetune.logits_and_auxiliary(features)


@pytest.fixture
def tiny_checkpoint(toy_factory, tmp_path, monkeypatch):
    from scconv_surgery.pipeline import run_conversion

    monkeypatch.chdir(tmp_path)
    run_conversion(f"{toy_factory}:tiny", output=tmp_path / "tiny.pt", input_size=(3, 16, 16))
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    from PIL import Image

    for image in ("loose/a.png", "loose/b.png", "loose/extra/c.png", "one/cat/a.png", "hollow/cat/a.png"):
        (tmp_path / image).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / image)
    (tmp_path / "hollow" / "dog").mkdir()
    return "tiny.pt"


@pytest.mark.parametrize("args, words", [
    pytest.param(["tiny.pt", "--out", "ft.txt"], "unsupported suffix '.txt'", id="--out suffix"),
    pytest.param(["tiny.pt", "--out", "/nonexistent/ft.pt"], "directory '/nonexistent' does not exist",
                 id="--out directory"),
    pytest.param(["tiny.pt", "--out", "tiny.pt", "--force"], "is the checkpoint being fine-tuned", id="--out = input"),
    pytest.param(["notes.txt", "--out", "ft.pt"], "not an scconv-surgery checkpoint", id="not a checkpoint"),
    pytest.param(["tiny.pt", "--out", "ft.pt", "--steps", "0"], "--steps must be at least 1", id="--steps 0"),
    pytest.param(["tiny.pt", "--out", "ft.pt", "--lr", "nan"], "--lr must be a finite number", id="--lr nan"),
    pytest.param(["tiny.pt", "--out", "ft.pt", "--data", "no_such_dir"], "is not a directory", id="--data"),
    pytest.param(["tiny.pt", "--out", "ft.pt", "--synthetic-images", "4", "--batch-size", "8"],
                 "fewer than one batch", id="no full batch"),
    pytest.param(["tiny.pt", "--out", "ft.pt", "--data", "loose"], "holds 2 image file(s) beside its 1 class folder(s) "
                 "(extra), e.g. 'a.png': ImageFolder would ignore them", id="--data files beside class folders"),
    pytest.param(["tiny.pt", "--out", "ft.pt", "--data", "one"], "has 1 class folder(s) (cat): a classifier needs "
                 "at least 2 classes", id="--data one class"),
    pytest.param(["tiny.pt", "--out", "ft.pt", "--data", "hollow"], "has class folders without images: dog",
                 id="--data empty class"),
])
def test_bad_arguments_exit_2_before_any_work(args, words, finetune, tiny_checkpoint, monkeypatch, capsys):
    """The example used to train first and then die on its output path."""
    monkeypatch.setattr("sys.argv", ["finetune.py", *args])
    monkeypatch.setattr(finetune.scconv_surgery, "load", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        finetune.main()
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err
    assert not Path("ft.pt").exists()


def _pipeline_copy(tmp_path: Path, with_venv: bool) -> Path:
    """examples/pipeline.sh in a repository of its own, with or without a .venv holding scconv."""
    (tmp_path / "examples").mkdir()
    script = tmp_path / "examples" / "pipeline.sh"
    script.write_text((ROOT / "examples" / "pipeline.sh").read_text())
    if with_venv:
        bin_dir = tmp_path / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "scconv").write_text("#!/bin/sh\necho \"venv scconv $*\" >&2\nexit 5\n")
        (bin_dir / "scconv").chmod(0o755)
    return script


@pytest.mark.parametrize("with_venv, code, words", [
    pytest.param(False, 127, "'scconv' not found: install the project into .venv", id="no virtualenv"),
    pytest.param(True, 5, "venv scconv convert resnet50 --dry-run --json", id="the repository's .venv"),
])
def test_pipeline_script_finds_the_repository_virtualenv(with_venv, code, words, tmp_path):
    import subprocess

    script = _pipeline_copy(tmp_path, with_venv)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == code, done.stderr
    assert words in done.stderr


def test_calibrate_digits_runs_end_to_end_and_reports_every_row(tmp_path, monkeypatch, capsys):
    # examples/calibrate_digits.py with tiny settings; synthetic images in place of scikit-learn's
    # digits (not a test dependency), so that the script's code path, tables and JSON stay working
    import json

    digits = load_script("examples/calibrate_digits.py")
    fake = fake_digits(96, 40)
    monkeypatch.setattr(digits, "digits", lambda seed=0: fake)
    out = tmp_path / "digits.json"
    monkeypatch.setattr("sys.argv", ["calibrate_digits.py", "--train-steps", "3", "--calibration-images", "32",
                                     "--calibration-steps", "2", "--finetune-steps", "4", "--evaluate-every", "2",
                                     "--json", str(out)])
    digits.main()
    printed = capsys.readouterr().out
    for row in ("| original |", "| converted, not calibrated |", "| converted, calibrated (0 labels) |",
                "| random init |", "| calibrated |"):
        assert row in printed
    document = json.loads(out.read_text())
    assert document["rows"]["original"]["agreement"] == 1.0
    assert [layer["name"] for layer in document["calibration"]["layers"]] == [f"features.{i}.0" for i in range(1, 7)]
    assert [step for step, _ in document["finetune"]["calibrated"]["history"]] == [2, 4]


def test_yolo_example_runs_offline_at_tiny_sizes(tmp_path, monkeypatch):
    """examples/yolo.py: build, convert (yolo preset), YOLO(path) predict / train / val, fuse, ONNX."""
    pytest.importorskip("ultralytics")
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    module = load_script("examples/yolo.py")
    report = module.main(["--out-dir", str(tmp_path / "demo"), "--imgsz", "64", "--images", "2", "--epochs", "1",
                          "--batch", "2"])
    assert report["replaced"] == 20  # yolov8n's C2f bottleneck convs
    assert report["scconv_layers_trained"] == 20  # YOLO(path).train() trained the SCConv model
    assert report["params"][1] < report["params"][0] and report["macs"][1] < report["macs"][0]
    assert report["fuse_max_abs_diff"] < 1e-3 and report["onnx_max_abs_diff"] < 1e-3
    assert (tmp_path / "demo" / "model.pt").is_file() and (tmp_path / "demo" / "model_yolo.pt").is_file()


def test_ctrl_c_during_training_is_a_line_not_a_traceback(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    from scconv_surgery.pipeline import run_conversion

    monkeypatch.chdir(ROOT)  # the factory, importable in the subprocess through PYTHONPATH
    run_conversion("factory:examples.factory:small_convnet", output=tmp_path / "tiny.pt", input_size=(3, 16, 16))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(ROOT / "examples" / "finetune.py"), "tiny.pt", "--out", "ft.pt",
                                "--steps", "100000", "--batch-size", "2", "--synthetic-images", "8"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert '"step": 1' in process.stdout.readline()  # training
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "interrupted: stopped" in stderr
    assert not (tmp_path / "ft.pt").exists()
