"""Output settings (terminal or log, colour, width) and layouts that never crop a name."""
import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import LongNameNet
from scconv_surgery.cli import output
from scconv_surgery.cli.app import app

runner = CliRunner()
HIDE_CURSOR = "\x1b[?25l"


LOG = 140  # output.LOG_WIDTH


@pytest.mark.parametrize("is_tty, env, expected", [  # expected: (interactive, color, width)
    pytest.param(True, {}, (True, True, None), id="terminal"),
    pytest.param(False, {}, (False, False, LOG), id="log"),
    pytest.param(False, {"FORCE_COLOR": "1"}, (False, True, LOG), id="log with FORCE_COLOR"),
    pytest.param(True, {"NO_COLOR": "1"}, (False, False, None), id="terminal with NO_COLOR"),
    pytest.param(False, {"NO_COLOR": "1", "FORCE_COLOR": "1"}, (False, False, LOG), id="both"),
    pytest.param(True, {"TERM": "dumb"}, (False, True, None), id="dumb terminal"),
    pytest.param(False, {"COLUMNS": "100"}, (False, False, 100), id="log with COLUMNS"),
])
def test_terminal_settings_come_from_the_stream_not_from_force_color(is_tty, env, expected):
    assert output.LOG_WIDTH == LOG
    assert output.Terminal.detect(is_tty, env) == output.Terminal(*expected)


@pytest.fixture
def long_name_run(toy_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)

    def run(*extra):
        return runner.invoke(app, ["convert", "--factory", f"{toy_factory.removeprefix('factory:')}:long_names",
                                   "--input-size", "3x16x16", "--dry-run", *extra])
    return run


def test_force_color_in_a_log_colours_without_a_spinner(long_name_run, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    result = long_name_run()
    assert result.exit_code == 0, result.output
    assert "\x1b[32mreplace" in result.stdout  # coloured
    assert HIDE_CURSOR not in result.stderr and "\r" not in result.stderr  # no live spinner frames
    assert result.stderr.count("scconv: ") == 5  # one plain line per step


def test_no_color_writes_no_escape_code_at_all(long_name_run, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")
    result = long_name_run()
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stderr and "\x1b" not in result.stdout


def test_long_names_are_never_cropped_at_80_columns(long_name_run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = long_name_run()
    assert result.exit_code == 0, result.output
    names = [f"backbone_body.{LongNameNet.STAGE}.conv_{side}" for side in ("left", "right")]
    assert all(len(name) > 65 for name in names)
    lines = result.stdout.splitlines()
    assert all(name in lines for name in names)  # each whole, on its own line
    assert "…" not in result.stdout and max(map(len, lines)) <= 80
    reason = "in_channels=3 too small: squeezed parts have 0 and 1 channels (alpha=0.5, squeeze_ratio=2)"
    assert reason in " ".join(line.strip() for line in lines)  # wrapped, complete


def test_records_stay_a_table_where_they_fit():
    from scconv_surgery.cli.layout import Column, records
    from rich.table import Table

    console = Console(file=io.StringIO(), width=80)
    columns = (Column("name", key=True), Column("reason", wrap=True))
    assert isinstance(records(console, "t", columns, [["layer1.0.conv2", "a reason"]]), Table)
    assert not isinstance(records(console, "t", columns, [["x" * 60, "a reason"]]), Table)


@pytest.mark.parametrize("raised, code, kind", [(KeyboardInterrupt(), 130, "Interrupted"),
                                                (SystemExit(143), 143, "Terminated")], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_interruptions_are_reported_like_other_errors(raised, code, kind, as_json, capsys):
    import typer

    out = output.Output(json=as_json, console=Console(file=io.StringIO(), width=100))
    with pytest.raises((typer.Exit, SystemExit)) as info:
        with out.errors():
            raise raised
    assert getattr(info.value, "exit_code", getattr(info.value, "code", None)) == code
    if as_json:
        assert json.loads(capsys.readouterr().err) == {"error": {"type": kind, "message": "interrupted: nothing was "
                                                                 "written", "exit_code": code}}
    else:
        assert "interrupted: nothing was written" in out.console.file.getvalue()


def test_a_closed_pipe_on_a_table_exits_141_as_documented():
    """`scconv convert ... | head`: Rich's console would exit 1 on its own; the table's console hands
    the closed pipe to Output.errors, which exits 141 (EXIT_BROKEN_PIPE) and says nothing more."""
    import typer

    from scconv_surgery.cli.errors import EXIT_BROKEN_PIPE

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    terminal = output.Terminal(interactive=False, color=False, width=80)
    out = output.Output(terminal=terminal, console=terminal.console(), result=terminal.console(file=ClosedPipe()))
    with pytest.raises(typer.Exit) as caught, out.errors():
        out.result.print("a table row")
    assert caught.value.exit_code == EXIT_BROKEN_PIPE == 141
