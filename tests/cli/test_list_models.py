"""``scconv models`` and ``scconv convert --strict-paper``."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scconv_surgery.cli.app import app
from scconv_surgery.cli.errors import EXIT_NOTHING_SELECTED

runner = CliRunner()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCCONV_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_models_json_lists_counts_and_why_not(cache):
    result = runner.invoke(app, ["models", "*densenet121", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["schema_version"], doc["count"], doc["eligible_only"], doc["pattern"]) == (1, 2, False, "*densenet121")
    rows = {m["name"]: (m["replaced"], m["adapted"], m["coverage"]) for m in doc["models"]}
    assert rows == {"densenet121": (58, 58, "converts"), "torchvision:densenet121": (58, 58, "converts")}
    assert len(list(cache.glob("models-*.json"))) == 1
    (vit,) = json.loads(runner.invoke(app, ["models", "vit_tiny_patch16_224", "--json"]).stdout)["models"]
    assert (vit["replaced"], vit["coverage"]) == (0, "no_3x3")


def test_models_eligible_table_goes_to_stdout(cache):
    """The listing is the command's result: `scconv models | head` gets it (progress stays on stderr)."""
    result = runner.invoke(app, ["models", "regnetx_00[24]", "--eligible"])
    assert result.exit_code == 0, result.output
    assert "│ regnetx_004" not in result.stderr  # (its name is in the progress lines)
    assert "│ regnetx_004 " in result.stdout and "│ regnetx_002 " not in result.stdout  # SCConv costs more there
    assert "1 of 1 models" in result.stdout
    assert "not listed (--eligible), no conv to replace: 1 grouped" in " ".join(result.stdout.split())


def test_a_pattern_that_matches_nothing_warns_on_stderr_with_json_too(cache):
    result = runner.invoke(app, ["models", "nosuch_model*", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 0
    assert "no model name matches 'nosuch_model*'" in result.stderr


def test_models_strict_paper_counts_what_the_paper_fits(cache):
    result = runner.invoke(app, ["models", "torchvision:densenet121", "--strict-paper", "--json"])
    (row,) = json.loads(result.stdout)["models"]
    assert (row["replaced"], row["coverage"], row["skip_reasons"]["channels"]) == (0, "channels", 58)


def test_models_without_a_match_suggests_names(cache):
    result = runner.invoke(app, ["models", "resnet_18"])
    assert result.exit_code == 0, result.output
    assert "no model name matches 'resnet_18'" in result.stderr and "resnet18" in result.stderr


def test_convert_strict_paper_skips_with_the_fix_and_exits_3(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # examples/ is importable from the repository root
    result = runner.invoke(app, ["convert", "--factory", "examples.cifar_models:densenet121_cifar", "--model-kwargs",
                                 "growth_rate=8", "--input-size", "3x32x32", "--dry-run", "--strict-paper"])
    assert result.exit_code == EXIT_NOTHING_SELECTED, result.output
    assert "squeeze_ratio: 4" in result.stderr and "strict paper hyperparameters" in result.stderr
