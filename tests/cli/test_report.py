import csv
import io
import json

import pytest
from typer.testing import CliRunner

from scconv_surgery.cli.app import app
from scconv_surgery.pipeline import run_conversion

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "r18.pt"
    result = run_conversion("torchvision:resnet18", output=path, input_size=(3, 64, 64), rules=())
    return path, result


def test_json_recount_at_the_recorded_size_matches_convert(checkpoint):
    path, result = checkpoint
    out = runner.invoke(app, ["report", str(path), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["counts"]["input_size"] == [3, 64, 64]
    assert doc["counts"]["after"]["macs"] == result.report.after.macs
    assert doc["counts"]["before"]["params"] == result.report.before.params
    assert doc["replaced"] == [d.name for d in result.plan.replaced]


def test_other_input_size_scales_conv_macs(checkpoint):
    path, _ = checkpoint
    small = json.loads(runner.invoke(app, ["report", str(path), "--json", "--input-size", "64"]).stdout)
    large = json.loads(runner.invoke(app, ["report", str(path), "--json", "--input-size", "3x128x128"]).stdout)
    # every conv of resnet18 scales with the area: 4x the pixels, 4x the conv MACs
    assert large["counts"]["after"]["macs_by_operator"]["conv"] == 4 * small["counts"]["after"]["macs_by_operator"]["conv"]


def test_markdown_renders_as_tables(checkpoint):
    path, result = checkpoint
    out = runner.invoke(app, ["report", str(path), "--format", "markdown"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].startswith("### torchvision:resnet18")
    tables = [i for i, line in enumerate(lines) if line.startswith("| ---")]
    assert len(tables) == 2
    for i in tables:  # header, separator and rows have the same number of cells
        header_cells = lines[i - 1].count("|")
        j = i + 1
        while j < len(lines) and lines[j].startswith("|"):
            assert lines[j].count("|") == header_cells, lines[j]
            j += 1
    assert "| params | 11.69 M |" in out.stdout
    assert sum(line.startswith("| `layer") for line in lines) == len(result.plan.replaced) == 16


def test_csv_has_raw_counts(checkpoint):
    path, result = checkpoint
    out = runner.invoke(app, ["report", str(path), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert rows[0]["scope"] == "total"
    assert int(rows[0]["macs_after"]) == result.report.after.macs
    assert [r["name"] for r in rows[1:]] == [d.name for d in result.plan.replaced]
    assert int(rows[1]["macs_before"]) == 64 * 64 * 9 * 16 * 16


def test_table_goes_to_stdout(checkpoint):
    """The report is the command's result: `scconv report m.pt > file` gets it."""
    path, _ = checkpoint
    out = runner.invoke(app, ["report", str(path), "--count-elementwise"])
    assert out.exit_code == 0, out.output
    assert "Replaced layers" not in out.stderr
    assert "Replaced layers" in out.stdout and "elementwise ops" in out.stdout


def test_not_a_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_text("nope")
    out = runner.invoke(app, ["report", str(bad)])
    assert out.exit_code == 2
    assert out.stdout == "" and "Traceback" not in out.stderr
    assert "not an scconv-surgery checkpoint: it is a text file" in " ".join(out.stderr.split())


@pytest.mark.parametrize("command", ["report", "verify"])
@pytest.mark.parametrize("size, words", [("0", "is not a size"), ("1x64x64", "3 channels")])
def test_bad_input_size_exits_2_for_report_and_verify(command, size, words, checkpoint):
    path, _ = checkpoint
    out = runner.invoke(app, [command, str(path), "--input-size", size, "--json"])
    assert out.exit_code == 2, out.output
    assert out.stdout == "" and "Traceback" not in out.stderr
    error = json.loads(out.stderr.splitlines()[-1])["error"]
    assert words in error["message"]


def test_json_and_another_format_conflict(checkpoint):
    path, _ = checkpoint
    out = runner.invoke(app, ["report", str(path), "--json", "--format", "markdown"])
    assert out.exit_code == 2 and "conflicts" in out.stderr


def test_fallback_counter_report_names_its_counter_and_has_per_layer_rows(checkpoint, monkeypatch):
    from scconv_surgery import counting

    def broken(*args, **kwargs):
        raise RuntimeError("tracing failed")

    monkeypatch.setattr(counting, "_count_fvcore", broken)
    path, result = checkpoint
    doc = json.loads(runner.invoke(app, ["report", str(path), "--json"]).stdout)["counts"]
    assert doc["after"]["counter"] == doc["before"]["counter"] == "torch.utils.flop_counter"
    assert doc["after"]["macs"] == result.report.after.macs  # the same operators, the same formulas
    assert [(row["macs_before"], row["macs_after"]) for row in doc["layers"]] == \
        [(layer.macs_before, layer.macs_after) for layer in result.report.layers]
    human = runner.invoke(app, ["report", str(path)])
    assert "Counted by torch.utils.flop_counter (FlopCounterMode, 2 FLOPs per MAC" in human.stdout
    assert "fvcore counts one fused" not in human.stdout and "+0.0%" not in human.stdout
    assert "note: fvcore failed (RuntimeError: tracing failed)" in human.stdout  # part of the report
