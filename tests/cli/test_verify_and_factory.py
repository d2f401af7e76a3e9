import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from scconv_surgery import load
from scconv_surgery.cli.app import app
from scconv_surgery.cli.errors import EXIT_BAD_INPUT, EXIT_VERIFY_FAILED

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """A torchvision resnet18 state_dict with 1000 classes, in a working directory."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(5)
    model = torchvision.models.resnet18()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_()
    torch.save(model.state_dict(), "w.pth")
    return model.state_dict()


def test_head_reinitialised_untouched_weights_kept_and_verified(weights):
    result = runner.invoke(app, ["convert", "torchvision:resnet18", "--weights", "w.pth", "--num-classes", "10",
                                 "--out", "m.safetensors", "--input-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["weights"]["reinitialized"] == ["fc.bias", "fc.weight"]
    model = load("m.safetensors")
    replaced = {d["name"] for d in doc["plan"]["decisions"] if d["action"] == "replace"}
    for key, value in model.state_dict().items():  # every untouched tensor equals the loaded weights
        if key.startswith("fc.") or any(key.startswith(f"{r}.") for r in replaced):
            continue
        assert torch.equal(value, weights[key]), key
    assert model.fc.out_features == 10
    verified = runner.invoke(app, ["verify", "m.safetensors", "--weights", "w.pth", "--json"])
    assert verified.exit_code == 0, verified.output
    checks = {c["name"]: c for c in json.loads(verified.stdout)["checks"]}
    assert all(c["passed"] for c in checks.values())
    assert checks["output shape"]["detail"].startswith("(2, 10)")


def test_verify_fails_with_exit_4_when_weights_differ(weights):
    assert runner.invoke(app, ["convert", "torchvision:resnet18", "--weights", "w.pth", "--out", "m.pt",
                               "--input-size", "64"]).exit_code == 0
    other = dict(weights)
    other["conv1.weight"] = other["conv1.weight"] + 1  # the stem: never replaced
    torch.save(other, "other.pth")
    result = runner.invoke(app, ["verify", "m.pt", "--weights", "other.pth"])
    assert result.exit_code == EXIT_VERIFY_FAILED, result.output
    assert "FAIL untouched weights" in result.stdout and "conv1.weight" in result.stdout
    assert "not the file the model was converted from" in result.stdout.replace("\n", "")  # recorded sha256


def test_reset_bn_stats(weights):
    result = runner.invoke(app, ["convert", "torchvision:resnet18", "--weights", "w.pth", "--out", "m.pt",
                                 "--input-size", "64", "--reset-bn-stats", "--json"])
    assert result.exit_code == 0, result.output
    stale = json.loads(result.stdout)["stale_batchnorms"]
    assert "layer1.0.bn2" in stale and "layer1.0.bn1" in stale  # resnet18 replaces conv1 and conv2
    model = load("m.pt")
    assert torch.equal(model.layer1[0].bn2.running_mean, torch.zeros(64))
    assert torch.equal(model.bn1.running_mean, weights["bn1.running_mean"])  # the stem's BN is untouched
    verified = runner.invoke(app, ["verify", "m.pt", "--weights", "w.pth", "--json"])
    assert verified.exit_code == 0, verified.output  # reset statistics are not "changed weights"
    detail = {c["name"]: c for c in json.loads(verified.stdout)["checks"]}["untouched weights"]["detail"]
    # resnet18's 122 state_dict tensors, less the 16 replaced conv weights and the reset statistics of
    # the 16 BNs after them (running mean, var, count); their weight and bias are still compared
    assert detail.startswith("58 untouched tensors")
    changed = dict(weights)
    changed["layer1.0.bn2.weight"] = changed["layer1.0.bn2.weight"] + 5  # the affine of a reset BN
    torch.save(changed, "changed.pth")
    failed = runner.invoke(app, ["verify", "m.pt", "--weights", "changed.pth", "--json"])
    assert failed.exit_code == EXIT_VERIFY_FAILED
    check = {c["name"]: c for c in json.loads(failed.stdout)["checks"]}["untouched weights"]
    assert check["keys"] == ["layer1.0.bn2.weight"]


def test_factory_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "small.pt"
    result = runner.invoke(app, ["convert", "--factory", "examples.factory:small_convnet", "--model-kwargs",
                                 "width=16", "--num-classes", "5", "--input-size", "32", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"] == {"library": "factory", "name": "examples.factory:small_convnet",
                            "kwargs": {"width": 16, "num_classes": 5}, "weights": {"kind": "random"}}
    assert [d["name"] for d in doc["plan"]["decisions"] if d["action"] == "replace"] == ["1.0", "2.0", "3.0"]
    model = load(out)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("args, words", [
    (["--factory", "no_such_module_xyz:build"], ["no_such_module_xyz"]),
    (["--factory", "examples.factory:missing"], ["has no function 'missing'"]),
    (["--factory", "examples.factory"], ["package.module:function"]),
    (["resnet18", "--factory", "examples.factory:small_convnet"], ["one of them"]),
])
def test_bad_factory_exits_2(args, words, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["convert", *args, "--dry-run"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_finetune_under_torchrun_two_processes(tmp_path):
    """examples/finetune.py under torchrun --nproc_per_node=2 on CPU (gloo), synthetic data, on a
    checkpoint that mixes both variants: the seed layers' group norm never gets a gradient, which
    stopped DDP at step 2 ("Expected to have finished reduction in the prior iteration")."""
    from scconv_surgery import Rule
    from scconv_surgery.pipeline import run_conversion

    ckpt = tmp_path / "tr.pt"
    rules = [Rule("*"), Rule("layer1.*", variant="seed")]
    result = run_conversion("timm:test_resnet", rules=rules, output=ckpt, input_size=(3, 64, 64))
    seed_layers = [d.name for d in result.plan.replaced if d.config.variant.value == "seed"]
    assert seed_layers and len(seed_layers) < len(result.plan.replaced)
    manifest = torch.load(ckpt, weights_only=True)["manifest"]
    assert manifest["gradient_free_parameters"] == [f"{name}.sru.gn.{p}" for name in seed_layers
                                                    for p in ("weight", "bias")]
    out = tmp_path / "ft.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "examples" / "finetune.py"), str(ckpt), "--steps", "3", "--batch-size", "4",
                           "--synthetic-images", "32", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert lines[-1] == {"saved": str(out)}
    tuned, original = load(out), load(ckpt)
    assert not torch.equal(tuned.layer1[0].conv1.cru.gwc.weight, original.layer1[0].conv1.cru.gwc.weight)
    assert torch.load(out, weights_only=True)["manifest"]["finetune"]["world_size"] == 2


def test_pipeline_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "examples" / "pipeline.sh")]).returncode == 0
