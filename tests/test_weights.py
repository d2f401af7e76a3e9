"""Weights files: wrapper prefixes, trainer layouts, files that are not weights."""
import pytest
import torch

import scconv_surgery
from scconv_surgery.errors import WeightsFileError
from scconv_surgery.models import create_model


def _reference_state_dict():
    torch.manual_seed(3)
    model, _ = create_model("torchvision:resnet18", num_classes=5)
    for p in model.parameters():
        p.data.normal_()
    return model.state_dict()


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
    assert source.weights["stripped_prefixes"] == prefixes


def test_a_module_named_module_is_not_a_wrapper():
    """``module.`` is stripped only when every key carries it: here only some do."""
    state_dict = {"module.weight": torch.zeros(1), "head.weight": torch.zeros(1)}
    assert scconv_surgery.strip_wrapper_prefixes(state_dict) == (state_dict, ())


def test_keys_that_clash_once_stripped_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"conv.weight": torch.zeros(1), "conv._orig_mod.weight": torch.ones(1)}, path)
    with pytest.raises(WeightsFileError, match=r"keys clash once the wrapper prefixes _orig_mod\. are stripped"):
        scconv_surgery.read_weights(path)


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
    from safetensors.torch import save_file

    reference = _reference_state_dict()
    path = tmp_path / "w.bin"
    save_file({k: v.contiguous() for k, v in reference.items()}, str(path))
    model, _ = create_model("torchvision:resnet18", weights=path, num_classes=5)
    assert torch.equal(model.fc.weight, reference["fc.weight"])
