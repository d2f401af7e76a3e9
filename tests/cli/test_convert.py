import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from scconv_surgery import load
from scconv_surgery.cli.app import app
from scconv_surgery.cli.errors import EXIT_BAD_INPUT, EXIT_NOTHING_SELECTED

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def assert_clean_error(result, code, *words):
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dry_run_json_lists_every_conv_of_resnet50(in_tmp, resnet50_bottleneck_conv2):
    result = invoke("convert", "resnet50", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # exactly one JSON document on stdout
    assert doc["schema_version"] == 1 and doc["dry_run"] is True and doc["output"] is None
    decisions = doc["plan"]["decisions"]
    assert len(decisions) == 53
    assert all(d["action"] in ("replace", "skip") and (d["action"] == "replace" or d["reason"]) for d in decisions)
    assert {d["name"] for d in decisions if d["action"] == "replace"} == resnet50_bottleneck_conv2
    counts = doc["counts"]
    assert counts["input_size"] == [3, 224, 224]
    assert (counts["before"]["params"], counts["after"]["params"]) == (25_557_032, 16_530_280)
    assert (counts["before"]["macs"], counts["after"]["macs"]) == (4_111_512_576, 2_672_765_952)
    added = counts["uncounted_added"]  # per layer: the SRU gate and the fuse weights
    assert added["aten::sigmoid"] == 32
    assert os.listdir(in_tmp) == []


def test_convert_writes_a_checkpoint_that_loads(in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--out", "m.pt", "--input-size", "3x64x64",
                    "--include", "layer3.*", "--include", "layer4.*", "--exclude", "layer4.1.*")
    assert result.exit_code == 0, result.output
    assert "wrote m.pt" not in result.stderr  # the report is the result: stdout; progress: stderr
    assert "wrote m.pt" in result.stdout and "1x3x64x64" in result.stdout
    model = load("m.pt")
    replaced = sorted(name for name, m in model.named_modules() if type(m).__name__ == "ScConv")
    assert replaced == ["layer3.0.conv1", "layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2",
                        "layer4.0.conv1", "layer4.0.conv2"]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_json_convert_reports_the_output(in_tmp):
    result = invoke("convert", "resnet18", "-o", "r.pt", "--json", "--input-size", "96",
                    "--variant", "seed", "--stride-policy", "skip", "--seed", "7")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["output"] == "r.pt" and doc["seed"] == 7 and doc["counts"]["input_size"] == [3, 96, 96]
    replaced = [d for d in doc["plan"]["decisions"] if d["action"] == "replace"]
    assert len(replaced) == 13  # 16 3x3 convs less the 3 strided ones
    assert {d["config"]["variant"] for d in replaced} == {"seed"}
    assert torch.load("r.pt", weights_only=True)["manifest"]["seed"] == 7


def test_unknown_model_suggests_names(in_tmp):
    result = invoke("convert", "resnet5O", "--out", "m.pt")
    assert_clean_error(result, EXIT_BAD_INPUT, "unknown model 'resnet5O'", "resnet50")
    assert os.listdir(in_tmp) == []


def test_json_errors_go_to_stderr_as_json(in_tmp):
    result = invoke("convert", "resnet5O", "--dry-run", "--json")
    assert_clean_error(result, EXIT_BAD_INPUT)
    error = json.loads(result.stderr.splitlines()[-1])["error"]  # after the progress lines
    assert error["type"] == "UnknownModelError" and error["exit_code"] == 2 and "resnet50" in error["suggestions"]


@pytest.mark.parametrize("case, args, words", [
    ("missing output directory", ["--out", "nope/m.pt"], ["nope", "does not exist"]),
    ("output is a directory", ["--out", "adir.pt"], ["is a directory"]),
    ("missing weights file", ["--out", "m.pt", "--weights", "missing.pth"], ["missing.pth", "no such file"]),
    ("weights not a checkpoint", ["--out", "m.pt", "--weights", "junk.pth"], ["junk.pth", "not a weights file"]),
    ("no --out nor --dry-run", [], ["--out"]),
    ("bad input size", ["--dry-run", "--input-size", "3x224x"], ["CxHxW"]),
    ("pretrained and weights", ["--out", "m.pt", "--pretrained", "--weights", "junk.pth"], ["exclusive"]),
    ("bad regex", ["--dry-run", "--include", "re:layer[1"], ["invalid regular expression"]),
])
def test_bad_input_exits_2_and_leaves_nothing(case, args, words, in_tmp):
    (in_tmp / "adir.pt").mkdir()
    (in_tmp / "junk.pth").write_text("not a checkpoint")
    result = invoke("convert", "torchvision:resnet18", *args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert sorted(os.listdir(in_tmp)) == ["adir.pt", "junk.pth"]


def test_pretrained_offline_says_use_weights(in_tmp, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(in_tmp / "hf"))
    result = invoke("convert", "timm:resnet18", "--pretrained", "--out", "m.pt")
    assert_clean_error(result, EXIT_BAD_INPUT, "pretrained", "--weights")
    assert not (in_tmp / "m.pt").exists()


def test_weights_file_is_used_and_recorded(in_tmp):
    torch.manual_seed(1)
    import torchvision

    reference = torchvision.models.resnet18(num_classes=3)
    # saved from torch.compile(DDP(model)): both wrappers' prefixes
    torch.save({"state_dict": {f"_orig_mod.module.{k}": v for k, v in reference.state_dict().items()}}, "w.pth")
    result = invoke("convert", "torchvision:resnet18", "--weights", "w.pth", "--num-classes", "3",
                    "--out", "m.pt", "--input-size", "64", "--json")
    assert result.exit_code == 0, result.output
    weights = json.loads(result.stdout)["model"]["weights"]
    assert weights["name"] == "w.pth" and weights["stripped_prefixes"] == ["_orig_mod.", "module."]
    model = load("m.pt")
    assert torch.equal(model.fc.weight, reference.fc.weight)
    assert torch.equal(model.layer1[0].bn2.running_var, reference.layer1[0].bn2.running_var)


def test_include_matching_nothing_exits_3(in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--dry-run", "--include", "layer1.*",
                    "--include", "layer9.*")
    assert_clean_error(result, EXIT_NOTHING_SELECTED, "layer9.*")
    allowed = invoke("convert", "torchvision:resnet18", "--dry-run", "--include", "layer1.*",
                     "--include", "layer9.*", "--allow-unmatched", "--input-size", "32")
    assert allowed.exit_code == 0, allowed.output


def test_comma_is_not_a_separator(in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--dry-run", "--include", "layer1.0.conv1,layer1.0.conv2")
    assert_clean_error(result, EXIT_NOTHING_SELECTED, "'layer1.0.conv1,layer1.0.conv2'")


def test_nothing_selected_exits_3(in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--dry-run", "--exclude", "*")
    assert_clean_error(result, EXIT_NOTHING_SELECTED, "no conv was selected", "excluded",
                       "hint: each conv's reason is in the plan above")


def test_unmatched_exclude_is_a_warning(in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--dry-run", "--exclude", "nothing.*", "--input-size", "32")
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "nothing.*" in result.stderr


def test_installed_console_script_help():
    exe = shutil.which("scconv") or os.path.join(os.path.dirname(sys.executable), "scconv")
    done = subprocess.run([exe, "convert", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("--out", "--dry-run", "--json", "--include", "--exclude", "--variant", "--stride-policy",
                   "--input-size", "--pretrained", "--weights", "--num-classes", "--seed", "--allow-unmatched"):
        assert option in done.stdout


def test_rules_file_preset_and_flags(in_tmp):
    (in_tmp / "r.toml").write_text('[[rules]]\ninclude = "layer4.*"\nalpha = 0.75\n')
    result = invoke("convert", "torchvision:resnet18", "--dry-run", "--json", "--rules", "r.toml",
                    "--include", "layer1.0.conv2", "--input-size", "64")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    replaced = {d["name"]: d for d in doc["plan"]["decisions"] if d["action"] == "replace"}
    assert set(replaced) == {"layer1.0.conv2", "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1",
                             "layer4.1.conv2"}
    assert replaced["layer4.1.conv2"]["config"]["alpha"] == 0.75
    assert replaced["layer1.0.conv2"]["config"]["alpha"] == 0.5
    assert [(r.get("include"), r["matched"]) for r in doc["plan"]["rules"]] == [("layer4.*", 5), ("layer1.0.conv2", 1)]


def test_preset_paper(in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--dry-run", "--json", "--preset", "paper", "--input-size", "64")
    assert result.exit_code == 0, result.output
    replaced = [d["name"] for d in json.loads(result.stdout)["plan"]["decisions"] if d["action"] == "replace"]
    assert replaced == [f"layer{s}.{b}.conv2" for s in (1, 2, 3, 4) for b in (0, 1)]


def test_invalid_rules_file_exits_2(in_tmp):
    (in_tmp / "r.yaml").write_text("rules:\n  - include: 'layer1.*'\n  - include: 'x'\n    kernal_size: 3\n")
    result = invoke("convert", "torchvision:resnet18", "--out", "m.pt", "--rules", "r.yaml")
    assert_clean_error(result, EXIT_BAD_INPUT, "r.yaml", "rule 1", "'kernal_size'", "did you mean 'kernel_size'")
    assert not (in_tmp / "m.pt").exists()


def test_model_kwargs_are_passed_and_recorded(in_tmp):
    result = invoke("convert", "timm:resnet50", "--model-kwargs", "output_stride=8", "--out", "m.pt",
                    "--input-size", "64", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["kwargs"] == {"output_stride": 8}
    assert doc["plan"]["skip_reasons"]["dilated"] == 8
    assert load("m.pt").layer4[2].conv2.dilation == (4, 4)


@pytest.mark.parametrize("args, words", [
    (["--model-kwargs", "output_stride"], ["KEY=VALUE"]),
    (["--model-kwargs", "no_such_argument=1"], ["no_such_argument"]),
])
def test_bad_model_kwargs(args, words, in_tmp):
    result = invoke("convert", "timm:resnet18", "--dry-run", *args)
    assert_clean_error(result, EXIT_BAD_INPUT, *words)


def test_shape_mismatch_names_the_layer_and_saves_nothing(in_tmp, monkeypatch):
    from scconv_surgery import apply
    from scconv_surgery.layers import ScConv

    def wrong(decision, **kwargs):  # a replacement that halves the resolution
        return ScConv(decision.spec.in_channels, decision.spec.out_channels, stride=2, config=decision.config)

    monkeypatch.setattr(apply, "build_replacement", wrong)
    result = invoke("convert", "torchvision:resnet18", "--out", "m.pt", "--include", "layer1.0.conv2",
                    "--input-size", "64")
    assert_clean_error(result, 1, "layer1.0.conv2", "(1, 64, 8, 8)", "(1, 64, 16, 16)")
    assert not (in_tmp / "m.pt").exists()


def test_existing_output_needs_force_and_weights_are_never_overwritten(in_tmp):
    (in_tmp / "m.pt").write_bytes(b"keep me")
    result = invoke("convert", "torchvision:resnet18", "--out", "m.pt", "--input-size", "32")
    assert_clean_error(result, EXIT_BAD_INPUT, "exists", "--force")
    assert (in_tmp / "m.pt").read_bytes() == b"keep me"
    forced = invoke("convert", "torchvision:resnet18", "--out", "m.pt", "--input-size", "32", "--force")
    assert forced.exit_code == 0, forced.output
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), "w.pt")
    before = (in_tmp / "w.pt").read_bytes()
    same = invoke("convert", "torchvision:resnet18", "--weights", "w.pt", "--out", "w.pt", "--force")
    assert_clean_error(same, EXIT_BAD_INPUT, "is the base weights file")
    assert (in_tmp / "w.pt").read_bytes() == before


@pytest.mark.parametrize("case, args, words", [
    ("empty include", ["--include", ""], ["non-empty"]),
    ("bad YAML in model kwargs", ["--model-kwargs", "drop_rate=[1,2"], ["not valid YAML"]),
    ("contradicting num_classes", ["--model-kwargs", "num_classes=10", "--num-classes", "5"], ["contradicts"]),
    ("model kwarg given twice", ["--model-kwargs", "drop_rate=0.1", "--model-kwargs", "drop_rate=0.2"], ["twice"]),
    ("input size out of range", ["--input-size", "3x100000x100000"], ["out of range"]),
    ("input size with channels last", ["--input-size", "224x224x3"], ["puts the channels last", "3x224x224"]),
    ("seed above 2**63 - 1", ["--seed", str(2**63)], ["largest seed"]),
    ("channels the model does not take", ["--input-size", "1x64x64"], ["forward", "3 channels", "--input-size"]),
])
def test_more_bad_input_exits_2(case, args, words, in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--dry-run", *args)
    assert_clean_error(result, EXIT_BAD_INPUT, *words)
    as_json = invoke("convert", "torchvision:resnet18", "--dry-run", "--json", *args)
    assert as_json.exit_code == EXIT_BAD_INPUT and as_json.stdout == ""
    assert json.loads(as_json.stderr.splitlines()[-1])["error"]["exit_code"] == EXIT_BAD_INPUT


def test_nothing_eligible_still_shows_every_conv(in_tmp):
    result = invoke("convert", "timm:mobilenetv3_small_050", "--dry-run")
    assert_clean_error(result, EXIT_NOTHING_SELECTED, "no conv was selected", "depthwise", "conv_stem")


def test_suffix_pattern_gets_a_suggestion(in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--dry-run", "--include", "conv2")
    assert_clean_error(result, EXIT_NOTHING_SELECTED, "Did you mean '*.conv2'?")


def test_dry_run_json_says_what_it_would_write(in_tmp):
    result = invoke("convert", "torchvision:resnet18", "--dry-run", "--json", "--out", "m.pt", "--input-size", "32")
    doc = json.loads(result.stdout)
    assert (doc["output"], doc["would_write"]) == (None, "m.pt")
    assert not (in_tmp / "m.pt").exists()


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("scconv-surgery ")


def test_summary_prints_totals_without_a_row_per_conv(in_tmp):
    full = invoke("convert", "timm:test_resnet", "--dry-run", "--input-size", "32")
    result = invoke("convert", "timm:test_resnet", "--dry-run", "--input-size", "32", "--summary")
    assert result.exit_code == 0, result.output
    replaced = next(line for line in full.stdout.splitlines() if "convs replaced" in line).strip()
    assert replaced in result.stdout and "Totals at input 1x3x32x32" in result.stdout
    assert "layer1.0.conv1" in full.stdout and "layer1.0.conv1" not in result.stdout
    assert len(result.stdout.splitlines()) < len(full.stdout.splitlines()) // 3


def test_summary_applies_to_the_plan_shown_with_exit_3(in_tmp):
    args = ("convert", "timm:test_resnet", "--dry-run", "--input-size", "32", "--include", "nothing.matches")
    full, result = invoke(*args), invoke(*args, "--summary")
    assert full.exit_code == result.exit_code == 3
    assert "layer1.0.conv1" in full.stderr and "layer1.0.conv1" not in result.stderr
    assert "The plan, not applied" in result.stderr


def test_the_size_actually_counted_is_stated(in_tmp, toy_factory):
    """A model that resizes its input (as detectors do) is counted at the resized size."""
    factory = toy_factory.removeprefix("factory:") + ":resizing"
    result = invoke("convert", "--factory", factory, "--input-size", "3x64x64", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)["counts"]
    assert counts["input_size"] == [3, 64, 64] and counts["resized_input"] == [3, 32, 32]
    assert counts["before"]["macs_by_operator"]["conv"] == (3 * 16 + 16 * 16) * 9 * 32 * 32
    human = invoke("convert", "--factory", factory, "--input-size", "3x64x64", "--dry-run")
    assert "Totals at input 1x3x64x64, which the model resizes to 1x3x32x32 (the size counted)" in \
        " ".join(human.stdout.split())
