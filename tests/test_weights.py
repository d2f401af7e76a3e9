"""Weights files: wrapper prefixes, trainer layouts, files that are not weights."""
import pytest
import torch
from safetensors.torch import save_file

from scconv_surgery.errors import WeightsFileError
from scconv_surgery.models import create_model
from scconv_surgery.weights import read_weights, strip_wrapper_prefixes


def _reference_state_dict():
    torch.manual_seed(3)
    model, _ = create_model("torchvision:resnet18", num_classes=5)
    for p in model.parameters():
        p.data.normal_()
    return model.state_dict()


@pytest.mark.parametrize("layout", ["plain", "state_dict+module.", "model+_orig_mod.", "state_dict_ema",
                                    "safetensors"])
def test_weights_file_layouts(layout, tmp_path):
    reference = _reference_state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "plain":
        torch.save(reference, path)
    elif layout == "state_dict+module.":
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.items()}}, path)
    elif layout == "model+_orig_mod.":
        torch.save({"model": {f"_orig_mod.{k}": v for k, v in reference.items()}, "optimizer": {}}, path)
    elif layout == "state_dict_ema":
        torch.save({"state_dict_ema": reference}, path)
    else:
        save_file({k: v.contiguous() for k, v in reference.items()}, str(path))
    model, source = create_model("torchvision:resnet18", weights=path, num_classes=5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert source.weights.kind.value == "file" and source.weights.name == path.name
    assert len(source.weights.sha256) == 64


@pytest.mark.parametrize("case", ["missing", "not a checkpoint", "no tensors", "wrong keys", "wrong head"])
def test_bad_weights_files(case, tmp_path):
    path = tmp_path / "w.pt"
    if case == "not a checkpoint":
        path.write_text("hello")
    elif case == "no tensors":
        torch.save({"epoch": 1}, path)
    elif case == "wrong keys":
        torch.save({"fc.weight": torch.zeros(5, 512), "nonsense": torch.zeros(1)}, path)
    elif case == "wrong head":
        torch.save(_reference_state_dict(), path)  # 5 classes; the model below has 1000
    expected = {"missing": "no such file", "not a checkpoint": "not a weights file: it is a text file", "no tensors": "no state_dict",
                "wrong keys": "missing key", "wrong head": "shape mismatch"}[case]
    with pytest.raises(WeightsFileError, match=expected) as info:
        create_model("torchvision:resnet18", weights=path)
    assert info.value.path == str(path)
    if case == "wrong keys":
        assert "nonsense" in info.value.unexpected_keys
        assert "conv1.weight" in info.value.missing_keys


def test_training_checkpoint_with_argparse_namespace(tmp_path):
    """timm's CheckpointSaver and torchvision's reference scripts store their args beside the weights."""
    import argparse

    reference = _reference_state_dict()
    path = tmp_path / "train.pth"
    torch.save({"epoch": 9, "args": argparse.Namespace(lr=0.1, model="resnet18"),
                "state_dict": {f"module.{k}": v for k, v in reference.items()}}, path)
    model, _ = create_model("torchvision:resnet18", weights=path, num_classes=5)
    assert torch.equal(model.fc.weight, reference["fc.weight"])


def test_torchvision_ema_checkpoint(tmp_path):
    reference = _reference_state_dict()
    ema = {"n_averaged": torch.tensor(12), **{f"module.{k}": v for k, v in reference.items()}}
    path = tmp_path / "ema.pth"
    torch.save({"model": {f"module.{k}": v for k, v in reference.items()}, "model_ema": ema}, path)
    model, _ = create_model("torchvision:resnet18", weights=path, num_classes=5)
    assert torch.equal(model.conv1.weight, reference["conv1.weight"])


@pytest.mark.parametrize("case, match", [
    ("pickled module", "save model.state_dict()"),
    ("scconv checkpoint", "is an scconv-surgery checkpoint"),
    ("directory", "is a directory"),
])
def test_weights_that_are_something_else(case, match, tmp_path):
    path = tmp_path / "w.pt"
    if case == "pickled module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif case == "scconv checkpoint":
        torch.save({"format": "scconv-surgery", "format_version": 1, "manifest": {}, "state_dict": {}}, path)
    else:
        path.mkdir()
    with pytest.raises(WeightsFileError, match=match):
        create_model("torchvision:resnet18", weights=path)


@pytest.mark.parametrize("wrapping, prefixes", [
    pytest.param(lambda k: f"_orig_mod.module.{k}", ["_orig_mod.", "module."], id="torch.compile(DDP(model))"),
    pytest.param(lambda k: f"module._orig_mod.{k}", ["module.", "_orig_mod."], id="DDP(torch.compile(model))"),
    pytest.param(lambda k: f"module.module.{k}", ["module."], id="DDP(DataParallel(model))"),
    pytest.param(lambda k: f"_fsdp_wrapped_module.{k.replace('layer1.', 'layer1._checkpoint_wrapped_module.')}",
                 ["_fsdp_wrapped_module.", "_checkpoint_wrapped_module."], id="FSDP, a checkpointed stage"),
    pytest.param(lambda k: k.replace("layer2.", "layer2._orig_mod."), ["_orig_mod."], id="a compiled submodule"),
    pytest.param(lambda k: f"model.{k}", ["model."], id="Lightning's self.model"),
    pytest.param(lambda k: k, [], id="plain"),
])
def test_wrapper_prefixes_are_stripped_in_any_nesting_and_reported(wrapping, prefixes, tmp_path):
    reference = _reference_state_dict()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {wrapping(k): v for k, v in reference.items()}}, path)
    model, source = create_model("torchvision:resnet18", weights=path, num_classes=5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert list(source.weights.stripped_prefixes) == prefixes


def test_a_module_named_module_is_not_a_wrapper():
    """``module.`` is stripped only when every key carries it: here only some do."""
    state_dict = {"module.weight": torch.zeros(1), "head.weight": torch.zeros(1)}
    assert strip_wrapper_prefixes(state_dict) == (state_dict, ())


def test_keys_that_clash_once_stripped_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"conv.weight": torch.zeros(1), "conv._orig_mod.weight": torch.ones(1)}, path)
    with pytest.raises(WeightsFileError, match=r"keys clash once the wrapper prefixes _orig_mod\. are stripped"):
        read_weights(path)


@pytest.mark.parametrize("content, words", [
    pytest.param(b"# My project\n\nSee the docs.\n", "not a weights file: it is a text file (it starts with '# My project')",
                 id="README"),
    pytest.param(b"", "not a weights file: it is an empty file", id="empty"),
    pytest.param(b"\x7fELF\x02\x01\x01\x00\x00", "not a weights file: it is a file of unknown format (it starts with "
                 "bytes 7f 45 4c 46 02 01 01 00)", id="binary"),
])
def test_files_that_are_not_weights_are_named_and_no_unsafe_load_is_suggested(content, words, tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsFileError) as info:
        create_model("torchvision:resnet18", weights=path)
    assert words in str(info.value)
    assert "weights_only" not in str(info.value)


def test_a_pickled_module_is_named_without_suggesting_an_unsafe_load(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(WeightsFileError, match=r"pickled Python objects \(torch\.nn\.modules\.linear\.Linear\)") as info:
        create_model("torchvision:resnet18", weights=path)
    assert "weights_only" not in str(info.value) and "arbitrary code" not in str(info.value)


def test_a_safetensors_file_is_read_whatever_its_suffix(tmp_path):
    reference = _reference_state_dict()
    path = tmp_path / "w.bin"
    save_file({k: v.contiguous() for k, v in reference.items()}, str(path))
    model, _ = create_model("torchvision:resnet18", weights=path, num_classes=5)
    assert torch.equal(model.fc.weight, reference["fc.weight"])
