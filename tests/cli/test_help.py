"""--help of every command: flags without value placeholders, nothing cut, defaults that match."""
import pytest
from typer.testing import CliRunner

from scconv_surgery.cli.app import app

runner = CliRunner()
COMMANDS = [[]] + [[c.name] for c in app.registered_commands]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "scconv")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_flags_without_values_and_cuts_nothing(command, flag, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, [*command, flag])
    assert result.exit_code == 0, result.output
    for placeholder in ("<bool>", "<list[str]>", "{checkpoint}", "…"):
        assert placeholder not in result.stdout, placeholder


def test_convert_help_names_what_each_option_takes(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = runner.invoke(app, ["convert", "--help"]).stdout
    for option, metavar in [("--out", "FILE"), ("--include", "PATTERN"), ("--model-kwargs", "KEY=VALUE"),
                            ("--factory", "MODULE:FUNCTION"), ("--input-size", "CxHxW"), ("--seed", "N")]:
        line = next(line for line in text.splitlines() if line.startswith(f"│ {option} "))
        assert metavar in line, line
    assert "mypkg.models:build" in text  # the --factory example, whole


@pytest.mark.parametrize("command, default", [
    ("convert", "Default: the model's pretrained_cfg input_size"),
    ("report", "Default: the size recorded in the checkpoint"),
    ("verify", "Default: the size recorded in the checkpoint"),
])
def test_input_size_default_is_the_one_the_command_uses(command, default, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    text = " ".join(runner.invoke(app, [command, "--help"]).stdout.split())
    assert default in text


@pytest.mark.parametrize("command", [c.name for c in app.registered_commands])
def test_help_lists_the_exit_codes_of_the_one_table(command, monkeypatch):
    """Each command's --help lists exactly the codes EXIT_CODES gives it, in its words."""
    from scconv_surgery.cli.errors import EXIT_CODES

    monkeypatch.setenv("COLUMNS", "1000")
    text = " ".join(runner.invoke(app, [command, "--help"]).stdout.split())
    listed = "; ".join(f"{e.code} {e.brief}" for e in EXIT_CODES if command in e.commands)
    assert f"Exit codes: {listed}." in text
    assert ("3 an --include" in text) == (command == "convert") and ("4 a check failed" in text) == (command == "verify")
