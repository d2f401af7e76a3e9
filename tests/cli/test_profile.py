"""scconv profile and convert --select / --target-*: JSON, exit codes, a saved profile reused, rules written."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from scconv_surgery.cli.app import app
from scconv_surgery.cli.errors import EXIT_BAD_INPUT
from scconv_surgery.rules_file import load_rules_file

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
MODEL = ["--factory", "examples.factory:small_convnet", "--model-kwargs", "width=16", "--input-size", "32"]
QUICK = ["--repeats", "3"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SCCONV_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_profile_json_and_out_then_convert_reuses_it(workdir):
    out = workdir / "profile.json"
    result = invoke("profile", *MODEL, *QUICK, "--json", "--out", out)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [layer["name"] for layer in document["layers"]] == ["1.0", "2.0", "3.0"]
    assert document["settings"]["device"] == "cpu" and document["timer"] == "thread_time"
    assert json.loads(out.read_text()) == document
    again = json.loads(invoke("profile", *MODEL, *QUICK, "--json").stdout)
    assert again["cached_layers"] == 3  # the same architecture again: from the cache
    rules = workdir / "chosen.yaml"
    converted = invoke("convert", *MODEL, "--dry-run", "--json", "--target-params", "0.9", "--profile", out,
                       "--write-rules", rules)
    assert converted.exit_code == 0, converted.output
    selection = json.loads(converted.stdout)["selection"]
    assert selection["criterion"] == "target_params" and selection["params_ratio"] <= 0.9
    assert selection["measured_latency"] > 0 and selection["profile_seconds"] == 0
    assert [r.pattern for r in load_rules_file(rules).rules] == selection["chosen"]
    replay = json.loads(invoke("convert", *MODEL, "--dry-run", "--json", "--rules", rules).stdout)
    assert [d["name"] for d in replay["plan"]["decisions"] if d["action"] == "replace"] == selection["chosen"]


def test_human_report_names_the_selection(workdir):
    result = invoke("convert", *MODEL, "--dry-run", "--summary", "--target-macs", "0.9")
    assert result.exit_code == 0, result.output
    assert "Selection: target_macs 0.9, least latency" in result.output and "measured" in result.output


@pytest.mark.parametrize("args, words", [
    (["--target-macs", "1.5"], "--target-macs"),
    (["--target-latency", "0"], "--target-latency"),
    (["--select", "faster", "--target-macs", "0.5"], "exclusive"),
    (["--device", "cuda:9"], "needs --select"),
    (["--select", "faster", "--device", "cuda:9"], "cuda:9"),
    (["--select", "faster", "--device", "gpu"], "gpu"),
])
def test_bad_selection_options_exit_2(args, words):
    result = invoke("convert", *MODEL, "--dry-run", *args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert words in result.output


def test_profile_refuses_a_missing_device_and_random_weights_for_sensitivity(workdir):
    result = invoke("profile", *MODEL, "--device", "cuda:9")
    assert result.exit_code == EXIT_BAD_INPUT and "cuda:9" in result.output
    result = invoke("profile", *MODEL, "--data", workdir)
    assert result.exit_code == EXIT_BAD_INPUT and "trained weights" in result.output
    assert "--pretrained or --weights" in result.output


def test_unwritable_outputs_exit_2_before_any_work(workdir, monkeypatch):
    monkeypatch.setattr("scconv_surgery.pipeline.rebuild_base", lambda *a: (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr("scconv_surgery.cli.profile.rebuild_base", lambda *a: (_ for _ in ()).throw(AssertionError))
    missing = workdir / "no" / "such"
    result = invoke("profile", *MODEL, "--out", missing / "p.json")
    assert result.exit_code == EXIT_BAD_INPUT and "does not exist" in result.stderr.replace("\n", ""), result.output
    result = invoke("convert", *MODEL, "--dry-run", "--select", "faster", "--write-rules", missing / "r.yaml")
    assert result.exit_code == EXIT_BAD_INPUT and "does not exist" in result.stderr.replace("\n", ""), result.output


def test_the_profile_table_is_a_result_on_stdout(workdir):
    result = invoke("profile", *MODEL, *QUICK)
    assert result.exit_code == 0 and "sensitivity" in result.stdout and "sensitivity" not in result.stderr, result.output


def test_profile_of_another_model_is_refused(workdir):
    out = workdir / "p.json"
    assert invoke("profile", *MODEL, *QUICK, "--out", out).exit_code == 0
    other = ["--factory", "examples.factory:small_convnet", "--model-kwargs", "width=8", "--input-size", "32"]
    result = invoke("convert", *other, "--dry-run", "--select", "faster", "--profile", out)
    assert result.exit_code == EXIT_BAD_INPUT and "width" in result.output


def test_profile_of_other_scconv_hyperparameters_is_refused_and_one_measured_alike_is_reused(workdir):
    out = workdir / "p.json"
    assert invoke("profile", *MODEL, *QUICK, "--out", out).exit_code == 0
    result = invoke("convert", *MODEL, "--dry-run", "--json", "--select", "faster", "--select-margin", "0",
                    "--variant", "seed", "--profile", out)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    error = json.loads(result.stderr.splitlines()[-1])["error"]  # after the progress lines
    assert error["type"] == "ProfileMismatchError" and error["hyperparameters"] == ["variant"]
    assert "variant='paper'" in error["message"] and "variant='seed'" in error["message"]
    assert "--variant" in error["hint"]
    rules = workdir / "rules.yaml"
    rules.write_text("rules:\n- include: '*'\n  alpha: 0.25\n")
    seed = workdir / "seed.json"
    assert invoke("profile", *MODEL, *QUICK, "--variant", "seed", "--rules", rules, "--out", seed).exit_code == 0
    assert {layer["config"]["variant"] for layer in json.loads(seed.read_text())["layers"]} == {"seed"}
    result = invoke("convert", *MODEL, "--dry-run", "--json", "--target-macs", "0.95", "--variant", "seed",
                    "--profile", seed)
    assert result.exit_code == EXIT_BAD_INPUT and "alpha=0.25" in result.stderr  # the rules file's alpha too
    result = invoke("convert", *MODEL, "--dry-run", "--json", "--target-macs", "0.95", "--variant", "seed",
                    "--rules", rules, "--profile", seed)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["selection"]["profile_seconds"] == 0


def test_profile_with_sensitivity(workdir):
    for i in range(4):
        Image.new("RGB", (40, 40), (60 * i, 20, 200 - 40 * i)).save(workdir / f"{i}.png")
    from examples.factory import small_convnet

    torch.manual_seed(3)
    torch.save(small_convnet(width=16).state_dict(), workdir / "w.pt")
    result = invoke("profile", *MODEL, *QUICK, "--weights", workdir / "w.pt", "--data", workdir, "--images", "4",
                    "--steps", "1", "--json")
    assert result.exit_code == 0, result.output
    assert all(layer["sensitivity"] is not None for layer in json.loads(result.stdout)["layers"])


def test_a_selection_of_nothing_is_exit_3_with_a_hint():
    result = invoke("convert", *MODEL, "--dry-run", "--summary", "--select", "faster", "--select-margin", "0.99")
    assert result.exit_code == 3, result.output
    assert "the measured selection chose no conv" in result.output
