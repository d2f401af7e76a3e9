"""Small things a new user hit (issue 20, sections 7 and 8): device options checked before any
work, sizes that read two ways, choices said plainly, a factory that cannot be imported."""
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from scconv_surgery.calibration import check_device
from scconv_surgery.cli.app import app
from scconv_surgery.cli.params import parse_input_size
from scconv_surgery.errors import CalibrationError

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
MODEL = ["--factory", "examples.factory:small_convnet", "--model-kwargs", "width=8", "--input-size", "16"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(text: str) -> str:
    return " ".join(text.split())


ABSENT = "cuda:99" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("device, words", [
    (ABSENT, "is not available on this machine" if ABSENT == "cuda" else "this machine has"),
    ("cuda:x", "is not a device"), ("meta", "holds no data"), ("nosuch", "is not a device")])
def test_device_options_are_checked_before_any_work_in_every_command(tmp_path, monkeypatch, device, words):
    monkeypatch.chdir(ROOT)
    for args, option in ((["convert", *MODEL, "--dry-run", "--calibrate", tmp_path, "--calibrate-device", device],
                          "--calibrate-device"),
                         (["calibrate", tmp_path / "missing.pt", "--data", tmp_path, "--out", tmp_path / "c.pt",
                           "--device", device], "--device")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        text = one_line(result.stderr)
        assert f"error: {option}: " in text and words in text, text
        assert "scconv: building" not in text and "scconv: reading" not in text  # nothing done first
        assert "device='cpu'" not in text  # no Python advice on the command line


def test_check_device_names_the_problem():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(CalibrationError) as info:
        check_device("meta")
    assert info.value.name == "device"


def test_an_hxw_size_whose_h_looks_like_channels_is_refused():
    from scconv_surgery.cli.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match=r"'3x224' reads as HxW, an image 3 pixels high and 224 wide; "
                                                 r"for 3 channels give CxHxW: 3x224x224"):
        parse_input_size("3x224")
    with pytest.raises(InvalidOptionError, match=r"'224x3' reads as HxW, an image 224 pixels high and 3 wide; "
                                                 r"sizes are CxHxW, channels first: 3x224x224"):
        parse_input_size("224x3")
    assert parse_input_size("224x160") == (3, 224, 160) and parse_input_size("8x8") == (3, 8, 8)
    assert parse_input_size("1x64x64") == (1, 64, 64)


@pytest.mark.parametrize("args, words", [
    (["convert", "resnet18", "--dry-run", "--variant", "papr"],
     "Invalid value for '--variant': 'papr' is not a variant; choose paper or seed (did you mean 'paper'?)"),
    (["convert", "resnet18", "--dry-run", "--calibrate-strategy", "foo"],
     "Invalid value for '--calibrate-strategy': 'foo' is not a strategy; choose independent or sequential"),
    (["convert", "resnet18", "--dry-run", "--stride-policy", "pooled"],
     "'pooled' is not a stride policy; choose inside, pool or skip (did you mean 'pool'?)"),
    (["convert", "resnet18", "--dry-run", "--preset", "papers"], "'papers' is not a preset; choose all, paper or yolo"),
    (["calibrate", "m.pt", "--data", ".", "--out", "c.pt", "--strategy", "indep"],
     "'indep' is not a strategy; choose independent or sequential (did you mean 'independent'?)"),
    (["report", "m.pt", "--format", "md"], "'md' is not a format; choose table, json, markdown or csv"),
])
def test_choices_are_said_plainly(args, words):
    result = invoke(*args)
    assert result.exit_code == 2
    text = one_line(result.output.replace("│", " "))
    assert words in text and "Value error" not in text, text


def test_usage_errors_with_json_are_one_json_line():
    result = invoke("convert", "resnet18", "--dry-run", "--variant", "papr", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    error = json.loads(result.stderr.splitlines()[-1])["error"]
    assert error["option"] == "--variant" and "choose paper or seed" in error["message"]
    unknown = invoke("report", "m.pt", "--format", "json", "--nope")
    assert json.loads(unknown.stderr.splitlines()[-1])["error"]["message"] == "No such option: --nope"


def test_a_factory_that_cannot_be_imported_from_here_gets_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "m.pt"
    assert invoke("convert", *MODEL, "--out", out).exit_code == 0
    monkeypatch.chdir(tmp_path)
    for name in [n for n in list(__import__("sys").modules) if n == "examples" or n.startswith("examples.")]:
        monkeypatch.delitem(__import__("sys").modules, name)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if Path(p or ".").resolve() != ROOT])
    result = invoke("verify", out)
    assert result.exit_code == 2, result.output
    text = one_line(result.stderr)
    assert "cannot import 'examples.factory'" in text
    assert "run the command from the directory that holds examples/ or examples.py" in text
    assert "PYTHONPATH" in text
    as_json = invoke("verify", out, "--json")
    assert "PYTHONPATH" in json.loads(as_json.stderr.splitlines()[-1])["error"]["hint"]
