import os

import pytest
import torch

import scconv_surgery
from scconv_surgery import checkpoint
from scconv_surgery.checkpoint import FORMAT, FORMAT_VERSION, check_output_path, load, read_checkpoint
from scconv_surgery.errors import CheckpointError, OutputPathError, UnknownModelError
from scconv_surgery.layers import ScConv
from scconv_surgery.pipeline import run_conversion


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """resnet18 converted (stride policy 'inside') and saved, with its in-memory model."""
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pt"
    result = run_conversion("resnet18", output=path, input_size=(3, 64, 64))
    return path, result


def test_round_trip_gives_equal_outputs(saved):
    path, result = saved
    loaded = load(path)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model.eval()(x), rtol=0, atol=0)
    assert not loaded.training
    # every 3x3 conv of the 8 basic blocks, the widening strided ones included
    assert sum(isinstance(m, ScConv) for m in loaded.modules()) == len(result.plan.replaced) == 16


def test_file_is_plain_values_and_tensors(saved):
    path, result = saved
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "format_version", "manifest", "state_dict"}
    assert (payload["format"], payload["format_version"]) == (FORMAT, FORMAT_VERSION)
    manifest = payload["manifest"]
    assert manifest["source"] == {"library": "timm", "name": "resnet18", "kwargs": {},
                                  "weights": {"kind": "random"}}
    assert manifest["seed"] == 0
    assert [d["name"] for d in manifest["replaced"]] == [d.name for d in result.plan.replaced]
    assert manifest["counts"]["after"]["params"] == result.report.after.params
    assert set(manifest["versions"]) >= {"torch", "timm", "torchvision", "scconv-surgery"}
    assert payload["state_dict"].keys() == result.model.state_dict().keys()


def test_same_command_writes_the_same_tensors(saved, tmp_path):
    path, _ = saved
    again = run_conversion("resnet18", output=tmp_path / "again.pt", input_size=(3, 64, 64))
    a = torch.load(path, weights_only=True)["state_dict"]
    b = torch.load(again.output, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _manifest():
    from scconv_surgery.manifest import Manifest
    from scconv_surgery.models import ModelSource

    return Manifest(ModelSource("factory", "conftest:TinyNet"), ())


def test_interrupted_write_leaves_nothing(tiny_net, tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path / "m.pt", tiny_net, _manifest())
    assert os.listdir(tmp_path) == []


def test_existing_file_survives_a_failed_write(tiny_net, tmp_path, monkeypatch):
    target = tmp_path / "m.pt"
    target.write_bytes(b"previous")
    monkeypatch.setattr(checkpoint.torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(target, tiny_net, _manifest())
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["m.pt"]


@pytest.mark.parametrize("case, match", [
    ("missing directory", "does not exist"),
    ("a directory", "is a directory"),
    ("wrong suffix", "unsupported suffix"),
])
def test_output_path_checks(case, match, tmp_path):
    path = {"missing directory": tmp_path / "nope" / "m.pt", "a directory": tmp_path / "d.pt",
            "wrong suffix": tmp_path / "m.ckpt"}[case]
    if case == "a directory":
        path.mkdir()
    with pytest.raises(OutputPathError, match=match) as info:
        check_output_path(path)
    assert info.value.path == str(path)


def test_unwritable_directory(tmp_path, monkeypatch):
    # os.access is the boundary: as root (CI), chmod alone would not make a directory unwritable
    monkeypatch.setattr(checkpoint.os, "access", lambda path, mode: False)
    with pytest.raises(OutputPathError, match="not writable"):
        check_output_path(tmp_path / "m.pt")


def test_a_directory_that_refuses_new_files_is_named_as_such(tmp_path, monkeypatch):
    # /proc, a read-only mount: writable by its permissions, yet creating a file fails
    def refuse(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(checkpoint.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(OutputPathError, match="the file system refuses new files in .*choose another directory"):
        check_output_path(tmp_path / "m.pt")


def test_plain_state_dict_is_named_as_such(tiny_net, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(tiny_net.state_dict(), path)
    with pytest.raises(CheckpointError, match="holds a plain state_dict"):
        load(path)


def test_truncated_file(saved, tmp_path):
    path, _ = saved
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load(cut)


def _rewrite(saved, tmp_path, edit):
    path, _ = saved
    payload = torch.load(path, weights_only=True)
    edit(payload)
    out = tmp_path / "edited.pt"
    torch.save(payload, out)
    return out


def test_newer_format_version(saved, tmp_path):
    out = _rewrite(saved, tmp_path, lambda p: p.__setitem__("format_version", FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer than this release"):
        read_checkpoint(out)


def test_missing_and_unexpected_keys_are_listed(saved, tmp_path):
    def edit(p):
        p["state_dict"].pop("fc.bias")
        p["state_dict"]["extra.weight"] = torch.zeros(1)

    with pytest.raises(CheckpointError, match="fc.bias") as info:
        load(_rewrite(saved, tmp_path, edit))
    assert info.value.missing_keys == ("fc.bias",)
    assert info.value.unexpected_keys == ("extra.weight",)


def test_unknown_base_model(saved, tmp_path):
    out = _rewrite(saved, tmp_path, lambda p: p["manifest"]["source"].__setitem__("name", "resnet18_gone"))
    with pytest.raises(UnknownModelError, match="resnet18_gone"):
        load(out)


def test_base_model_that_no_longer_fits_the_plan(saved, tmp_path):
    out = _rewrite(saved, tmp_path, lambda p: p["manifest"]["replaced"][0]["spec"].__setitem__("in_channels", 32))
    with pytest.raises(CheckpointError, match="does not fit"):
        load(out)


def test_public_load_is_the_checkpoint_load():
    assert scconv_surgery.load is load


GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"


def test_a_checkpoint_of_an_earlier_release_keeps_loading():
    """tests/golden/v1_test_resnet.pt was written by release 0.1.0 (format version 1)."""
    from safetensors.torch import load_file

    io = load_file(str(GOLDEN / "v1_test_resnet_io.safetensors"))
    model = load(GOLDEN / "v1_test_resnet.pt")
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], rtol=1e-5, atol=1e-5)


def test_pt_and_safetensors_load_to_identical_models(saved, tmp_path):
    path, result = saved
    manifest = read_checkpoint(path).manifest
    st = checkpoint.save_checkpoint(tmp_path / "m.safetensors", result.model, manifest)
    a, b = load(path), load(st)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert read_checkpoint(st).manifest == manifest
    assert read_checkpoint(st).manifest.to_dict() == torch.load(path, weights_only=True)["manifest"]


def test_safetensors_shared_tensors_are_stored_once(tmp_path):
    from safetensors import safe_open

    from scconv_surgery.apply import convert
    from scconv_surgery.manifest import Manifest
    from scconv_surgery.models import ModelSource
    from conftest import AliasedConvNet

    model, plan = convert(AliasedConvNet())
    source = ModelSource("factory", "conftest:AliasedConvNet")
    path = checkpoint.save_checkpoint(tmp_path / "a.safetensors", model,
                                      Manifest(source, plan.replaced, seed=0, input_size=(16, 8, 8)))
    with safe_open(str(path), "pt") as f:
        stored = set(f.keys())
    assert all(k.startswith("conv.") for k in stored)  # "again.*" are the same tensors
    loaded = load(path)
    assert loaded.conv is loaded.again
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_safetensors_without_scconv_metadata(tmp_path, tiny_net):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_net.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="safetensors file without scconv metadata"):
        load(path)


def test_manifest_lists_new_parameters_and_stale_batchnorms(saved):
    path, result = saved
    manifest = torch.load(path, weights_only=True)["manifest"]
    assert len(manifest["new_parameters"]) == 16 * 8
    assert manifest["stale_batchnorms"] == list(result.stale_batchnorms)
    assert "layer1.0.bn2" in manifest["stale_batchnorms"] and manifest["reset_bn_stats"] is False


def test_load_of_a_directory_and_of_an_incomplete_manifest(saved, tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load(tmp_path)
    out = _rewrite(saved, tmp_path, lambda p: p["manifest"].pop("source"))
    with pytest.raises(CheckpointError, match="manifest or state_dict is missing"):
        load(out)
    out = _rewrite(saved, tmp_path, lambda p: p["manifest"]["source"].__setitem__("kwargs", {"no_such_kwarg": 1}))
    with pytest.raises(scconv_surgery.ScconvError, match="no_such_kwarg"):
        load(out)


def test_write_failure_is_an_output_path_error(tiny_net, tmp_path, monkeypatch):
    def disk_full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 2080960 vs 2080848")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OutputPathError, match="writing failed.*nothing was written"):
        checkpoint.save_checkpoint(tmp_path / "m.pt", tiny_net, _manifest())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content, words", [
    pytest.param(b"epoch,loss\n1,0.5\n", "not an scconv-surgery checkpoint: it is a text file (it starts with 'epoch,loss')",
                 id="text"),
    pytest.param(b"", "not an scconv-surgery checkpoint: it is an empty file", id="empty"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_as_such(content, words, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert words in str(info.value) and "truncated" not in str(info.value)
