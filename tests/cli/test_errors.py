"""Errors that say the right thing: exit codes, messages, and the --json error document."""
import json

import pytest
from typer.testing import CliRunner

from scconv_surgery.cli.app import app
from scconv_surgery.cli.errors import EXIT_BAD_INPUT, EXIT_NOTHING_SELECTED

runner = CliRunner()


def _strict_json(line: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in JSON")
    return json.loads(line, parse_constant=refuse)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_unknown_timm_tag_exits_2_with_the_known_tags(in_tmp):
    result = runner.invoke(app, ["convert", "timm:resnet10t.nosuchtag", "--dry-run"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "timm knows 'resnet10t' but not its pretrained tag 'nosuchtag'" in result.stderr
    assert "timm:resnet10t.c3_in1k" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("value, words", [
    pytest.param("when=2020-01-01", "'when=2020-01-01': datetime.date(2020, 1, 1) is a date", id="YAML date"),
    pytest.param("x=.nan", "'x=.nan': nan is not a finite number", id="NaN"),
    pytest.param("x=[1, .inf]", "'x=[1, .inf]': inf is not a finite number", id="infinity in a list"),
    pytest.param("x={1: 2}", "has keys that are not strings", id="integer keys"),
])
def test_model_kwargs_that_json_cannot_carry_exit_2_before_any_work(value, words, in_tmp):
    result = runner.invoke(app, ["convert", "timm:test_resnet", "--model-kwargs", value, "--out", "m.pt", "--json"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert result.stdout == "" and not (in_tmp / "m.pt").exists()
    error = _strict_json(result.stderr.splitlines()[-1])["error"]
    assert words in error["message"] and error["option"] == "--model-kwargs"
    assert "quote it for YAML" in error["message"]


@pytest.mark.parametrize("command", ["report", "verify"])
def test_a_text_file_is_not_a_checkpoint(command, in_tmp):
    (in_tmp / "notes.txt").write_text("loss went down\n")
    result = runner.invoke(app, [command, "notes.txt"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "not an scconv-surgery checkpoint: it is a text file (it starts with 'loss went down')" in result.stderr
    assert "truncated" not in result.stderr


def test_exit_3_json_error_carries_every_decision(in_tmp):
    result = runner.invoke(app, ["convert", "timm:test_resnet", "--dry-run", "--json", "--exclude", "*"])
    assert result.exit_code == EXIT_NOTHING_SELECTED, result.output
    error = _strict_json(result.stderr.splitlines()[-1])["error"]
    decisions = error["plan"]["decisions"]
    assert error["plan"]["replaced"] == 0 and len(decisions) == error["plan"]["convs"] > 0
    assert all(d["action"] == "skip" and d["reason"] and d["detail"] for d in decisions)
    assert "excluded" in {d["reason"] for d in decisions}


def test_a_failing_run_does_not_print_a_replaced_headline(in_tmp):
    result = runner.invoke(app, ["convert", "timm:test_resnet", "--dry-run", "--include", "layer1.*,layer2.*"])
    assert result.exit_code == EXIT_NOTHING_SELECTED, result.output
    assert "convs replaced" not in result.stderr and result.stdout == ""
    assert "The plan, not applied:" in result.stderr and "nothing was replaced or written" in result.stderr
    assert "Did you mean 'layer1.*', 'layer2.*'?" in result.stderr
    assert "give each pattern its own --include" in result.stderr
