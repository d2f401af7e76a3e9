"""`--json` output is strict JSON in every outcome; undefined numbers are null; paths that are not
UTF-8 stay exact (issue 20, section 6)."""
import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from scconv_surgery import read_checkpoint
from scconv_surgery.cli import convert as convert_command
from scconv_surgery.cli.app import app
from scconv_surgery.cli.output import json_text

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
MODEL = ["--factory", "examples.factory:small_convnet", "--model-kwargs", "width=16", "--input-size", "32"]
FAST = ["--calibrate-images", "16", "--calibrate-steps", "5", "--calibrate-batch-size", "8"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def strict(text: str) -> dict:
    """JSON as the standard says: NaN / Infinity refused, and no lone surrogate (which jq and most
    readers replace by U+FFFD)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in JSON")
    document = json.loads(text, parse_constant=refuse)
    json.dumps(document, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    return document


def error_line(result) -> dict:
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr
    return strict(result.stderr.splitlines()[-1])["error"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """All-black images, weights whose norms zero every activation (so every replaced conv's target is 0),
    and ordinary weights; the factory importable."""
    monkeypatch.chdir(ROOT)
    (tmp_path / "black").mkdir()
    for i in range(16):
        Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "black" / f"{i}.png")
    from examples.factory import small_convnet

    torch.manual_seed(3)
    model = small_convnet(width=16)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.zero_()
                module.bias.zero_()
    torch.save(model.state_dict(), tmp_path / "zero.pt")
    return tmp_path


def test_calibrating_on_a_zero_target_reports_the_error_as_undefined(workdir):
    out = workdir / "m.pt"
    result = invoke("convert", *MODEL, "--weights", workdir / "zero.pt", "--calibrate", workdir / "black", *FAST,
                    "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = strict(result.stdout)
    layers = doc["calibration"]["layers"]
    assert [(layer["error_before"], layer["error_after"]) for layer in layers] == [(None, None)] * 3
    assert all(layer["loss"] is not None for layer in layers)  # the fit itself is defined (its loss is 0-ish)
    (warning,) = [w for w in doc["warnings"] if "undefined" in w]
    assert "1.0, 2.0, 3.0" in warning and "zero" in warning
    assert "undefined" in result.stderr  # and a warning for the human reading stderr
    assert read_checkpoint(out).manifest.calibration["layers"][0]["error_before"] is None
    human = invoke("convert", *MODEL, "--weights", workdir / "zero.pt", "--calibrate", workdir / "black", *FAST,
                   "--out", workdir / "h.pt")
    assert human.exit_code == 0, human.output
    assert "undefined" in human.stdout and "inf" not in human.stdout.split()
    assert "warning:" in human.stderr and "is undefined" in " ".join(human.stderr.split())
    again = invoke("calibrate", out, "--data", workdir / "black", "--weights", workdir / "zero.pt", "--images", 16,
                   "--steps", 0, "--out", workdir / "c.pt", "--json")
    assert again.exit_code == 0, again.output
    calibrated = strict(again.stdout)
    assert calibrated["calibration"]["layers"][0]["loss"] is None  # 0 steps: no loss, not NaN
    assert any("undefined" in w for w in calibrated["warnings"])


def test_json_success_is_one_strict_document(workdir):
    result = invoke("convert", *MODEL, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert strict(result.stdout)["dry_run"] is True


@pytest.mark.parametrize("args, code, kind", [
    (["convert", *MODEL, "--out", "x.txt", "--json"], 2, "OutputPathError"),
    (["convert", *MODEL, "--dry-run", "--include", "nothing", "--json"], 3, "UnmatchedRuleError"),
    (["report", "missing.pt", "--json"], 2, "CheckpointError"),
    (["verify", "missing.pt", "--json"], 2, "CheckpointError"),
    (["calibrate", "missing.pt", "--data", ".", "--out", "c.pt", "--json"], 2, "OutputPathError"),
], ids=["bad-input", "nothing-selected", "report", "verify", "calibrate"])
def test_json_errors_are_one_strict_line_on_stderr(workdir, args, code, kind):
    os.chdir(workdir)
    if args[0] == "calibrate":
        Path("c.pt").write_bytes(b"")  # exists, no --force
    error = error_line(invoke(*args))
    assert (error["exit_code"], error["type"]) == (code, kind)


@pytest.mark.parametrize("raised, code, kind", [(RuntimeError("boom"), 1, "RuntimeError"),
                                                (KeyboardInterrupt(), 130, "Interrupted"),
                                                (SystemExit(143), 143, "Terminated")],
                         ids=["unexpected", "interrupt", "terminate"])
def test_json_unexpected_error_and_interrupts_are_one_strict_line(workdir, monkeypatch, raised, code, kind):
    def fail(*args, **kwargs):
        raise raised
    monkeypatch.setattr(convert_command, "run_conversion", fail)
    result = invoke("convert", *MODEL, "--dry-run", "--json")
    assert result.exit_code == code
    error = error_line(result)
    assert (error["exit_code"], error["type"]) == (code, kind) and "written" not in error


def test_verify_failure_is_a_strict_document_with_exit_4(workdir, monkeypatch):
    out = workdir / "m.pt"
    assert invoke("convert", *MODEL, "--weights", workdir / "w.pt", "--out", out).exit_code == 0
    result = invoke("verify", out, "--weights", workdir / "zero.pt", "--json")
    assert result.exit_code == 4, result.output
    assert strict(result.stdout)["passed"] is False


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "human"])
def test_an_exception_after_the_checkpoint_was_written_is_reported_not_a_traceback(workdir, monkeypatch, as_json):
    def broken(*args, **kwargs):
        raise RuntimeError("broken after the write")
    monkeypatch.setattr(convert_command, "render_conversion", broken)
    monkeypatch.setattr(convert_command.Output, "emit_json", broken)
    out = workdir / "m.pt"
    result = invoke("convert", *MODEL, "--out", out, *(["--json"] if as_json else []))
    assert result.exit_code == 1
    assert read_checkpoint(out).manifest.replaced  # complete
    if as_json:
        error = error_line(result)
        assert error["written"] == str(out) and "broken after the write" in error["message"]
    else:
        assert "Traceback" not in result.stderr
        assert f"{out} was written before this error (it is complete)" in " ".join(result.stderr.split())


def test_a_path_that_is_not_utf8_is_written_readably_and_exactly(workdir):
    os.chdir(workdir)
    raw = b"caf\xe9.pt"
    result = invoke("convert", *MODEL, "--out", os.fsdecode(raw), "--json")
    assert result.exit_code == 0, result.output
    doc = strict(result.stdout)
    assert doc["output"] == "caf\\xe9.pt"
    assert base64.b64decode(doc["output_bytes"]) == raw and os.path.exists(raw)
    assert "output_bytes" not in strict(invoke("convert", *MODEL, "--out", "plain.pt", "--json").stdout)
    error = error_line(invoke("convert", *MODEL, "--out", os.fsdecode(raw), "--json"))  # exists: exit 2
    assert base64.b64decode(error["path_bytes"]) == raw and "exists" in error["message"]


def test_json_text_nulls_what_json_cannot_hold_and_says_where():
    text, notes = json_text({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "names": ["x", os.fsdecode(b"\xff")]})
    assert strict(text) == {"a": [1.0, None], "b": {"c": None}, "names": ["x", "\\xff"], "names_bytes": [None, "/w=="]}
    assert notes == ["a[1] was nan (written as null)", "b.c was inf (written as null)"]


def test_a_change_from_zero_is_not_shown_as_zero_percent():
    from scconv_surgery.cli.render.report import _percent

    assert _percent(0, 120, 2) == "n/a"  # e.g. elementwise ops a plain conv net does not have
    assert (_percent(0, 0, 2), _percent(200, 100, 1)) == ("+0.00%", "-50.0%")
