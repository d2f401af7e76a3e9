"""Weights files: wrapper prefixes, trainer layouts, files that are not weights."""
import re
from dataclasses import replace

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from scconv_surgery.errors import WeightsFileError
from scconv_surgery.models import create_model
from scconv_surgery.weights import WeightsSource, read_weights, strip_wrapper_prefixes


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


def _timm_training_checkpoint(path, live, ema):
    """What timm's train.py saves with --model-ema: both state_dicts, the optimizer, the args."""
    torch.save({"epoch": 9, "arch": "resnet18", "state_dict": live, "optimizer": {"state": {}, "param_groups": []},
                "state_dict_ema": ema, "metric": 71.5}, path)


def test_a_timm_checkpoint_with_an_ema_gives_the_ema_as_timm_load_checkpoint_does(tmp_path):
    import timm.models

    live, ema = _reference_state_dict(), {k: v + 1 if v.is_floating_point() else v
                                          for k, v in _reference_state_dict().items()}
    path = tmp_path / "checkpoint-9.pth.tar"
    _timm_training_checkpoint(path, live, ema)
    model, source = create_model("torchvision:resnet18", weights=path, num_classes=5)
    assert torch.equal(model.conv1.weight, ema["conv1.weight"])
    assert source.weights.entry == "state_dict_ema" and source.weights.to_dict()["entry"] == "state_dict_ema"
    timm_model, _ = create_model("torchvision:resnet18", num_classes=5)
    timm.models.load_checkpoint(timm_model, str(path))  # the file's own library picks the same
    assert torch.equal(timm_model.conv1.weight, model.conv1.weight)


def test_the_entry_can_be_chosen_and_a_missing_one_lists_those_there(tmp_path):
    live = _reference_state_dict()
    path = tmp_path / "checkpoint.pth.tar"
    _timm_training_checkpoint(path, live, {k: v * 0 for k, v in live.items()})
    model, source = create_model("torchvision:resnet18", weights=WeightsSource.file(path, entry="state_dict"),
                                 num_classes=5)
    assert torch.equal(model.conv1.weight, live["conv1.weight"]) and source.weights.entry == "state_dict"
    with pytest.raises(WeightsFileError, match=r"has no state_dict under 'model_ema' \(its entries that hold one: "
                                               r"state_dict, state_dict_ema\)"):
        create_model("torchvision:resnet18", weights=WeightsSource.file(path, entry="model_ema"), num_classes=5)


def test_a_plain_state_dict_records_no_entry(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_reference_state_dict(), path)
    _, source = create_model("torchvision:resnet18", weights=path, num_classes=5)
    assert source.weights.entry is None and source.weights.remapping is None


def _densenet_legacy_file(path):
    """torchvision's published DenseNet files: ``denselayerN.norm.1.weight`` and no num_batches_tracked."""
    torch.manual_seed(0)
    own = torchvision.models.densenet121().state_dict()
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v + 0.5 if v.is_floating_point() else v
              for k, v in own.items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, path)
    return legacy


def test_torchvision_densenet_weights_in_their_published_key_format_load(tmp_path):
    path = tmp_path / "densenet121-a639ec97.pth"
    legacy = _densenet_legacy_file(path)
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    model, source = create_model("torchvision:densenet121", weights=path)
    assert torch.equal(model.features.denseblock1.denselayer1.norm1.weight,
                       legacy["features.denseblock1.denselayer1.norm.1.weight"])
    assert source.weights.remapping.startswith("torchvision DenseNet legacy keys")


def test_a_file_without_num_batches_tracked_loads_as_batchnorm_itself_allows(tmp_path):
    """Files saved before PyTorch 0.4.1 (torchvision's first ResNet weights) lack the counter."""
    reference = {k: v for k, v in _reference_state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(reference, path)
    model, _ = create_model("torchvision:resnet18", weights=path, num_classes=5)
    assert torch.equal(model.layer1[0].bn1.running_var, reference["layer1.0.bn1.running_var"])


def test_a_timm_checkpoint_filter_fn_is_applied_as_timm_applies_it(tmp_path):
    """ConvNeXt trunk weights in OpenCLIP's layout: timm's convnext.checkpoint_filter_fn remaps them."""
    torch.manual_seed(0)
    own = timm.create_model("convnext_atto", num_classes=7).state_dict()
    clip = {f"visual.trunk.{k}": v + 1 for k, v in own.items() if not k.startswith("head.fc.")}
    clip["visual.head.proj.weight"] = own["head.fc.weight"] + 2
    path = tmp_path / "open_clip_convnext.bin"
    torch.save(clip, path)
    model, source = create_model("timm:convnext_atto", weights=path, num_classes=7)
    assert torch.equal(model.stem[0].weight, clip["visual.trunk.stem.0.weight"])
    assert torch.equal(model.head.fc.weight, clip["visual.head.proj.weight"])
    assert source.weights.remapping == "timm.models.convnext.checkpoint_filter_fn"


@pytest.mark.parametrize("case, kind", [
    ("prefix in the file", "a prefix: every key of the file starts with 'backbone.'"),
    ("prefix in the model", "a prefix: every key of the model starts with 'features.'"),
    ("unknown legacy format", "a legacy key format: 580 of the file's 580 unexpected keys are model keys spelled "
                              "differently (e.g. 'features.denseblock1.denselayer1.norm_1.bias' for "
                              "'features.denseblock1.denselayer1.norm1.bias')"),
    ("another architecture", "another architecture: only 0 of the model's 727 keys are in the file"),
    ("smaller variant", "a smaller variant of the architecture"),
])
def test_keys_that_still_do_not_fit_say_what_kind_of_mismatch(case, kind):
    from scconv_surgery.weights_remap import describe_mismatch

    own = torchvision.models.densenet121().state_dict()
    file_keys = {
        "prefix in the file": lambda: {f"backbone.{k}" for k in own},
        "prefix in the model": lambda: {k.removeprefix("features.") for k in own if k.startswith("features.")},
        "unknown legacy format": lambda: {re.sub(r"denselayer(\d+)\.norm(\d)", r"denselayer\1.norm_\2", k) for k in own},
        "another architecture": lambda: set(torchvision.models.resnet18().state_dict()),
        "smaller variant": lambda: {k for k in own if "denseblock4" not in k},
    }[case]()
    model_keys = {k for k in own if k.startswith("features.")} if case == "prefix in the model" else set(own)
    text = describe_mismatch(file_keys, model_keys)
    assert text.startswith(kind), text
    assert text.count("'") < 12  # a few examples, never hundreds of keys


def test_a_mismatch_message_names_its_kind_not_hundreds_of_keys(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({f"backbone.{k}": v for k, v in _reference_state_dict().items()}, path)
    with pytest.raises(WeightsFileError) as info:
        create_model("torchvision:densenet121", weights=path)
    assert "another architecture" in str(info.value) and len(str(info.value)) < 600
    assert len(info.value.missing_keys) == 727  # every key stays available on the error


def test_a_manifest_from_before_entries_were_recorded_rebuilds_from_the_live_weights(tmp_path):
    """Releases before the entry was recorded read ``state_dict`` before ``state_dict_ema``."""
    from scconv_surgery.models import ModelSource, rebuild_base

    live = _reference_state_dict()
    path = tmp_path / "checkpoint.pth.tar"
    _timm_training_checkpoint(path, live, {k: v * 0 for k, v in live.items()})
    old = {"kind": "file", "name": path.name, "sha256": None, "reinitialized": [], "stripped_prefixes": []}
    recorded = WeightsSource.from_dict(old)
    source = ModelSource("torchvision", "resnet18", {"num_classes": 5}, replace(recorded, path=path))
    model, record = rebuild_base(source)
    assert torch.equal(model.conv1.weight, live["conv1.weight"]) and record.weights.entry == "state_dict"
    assert WeightsSource.from_dict({**old, "entry": None}).entry is None  # recorded: a plain state_dict


def test_weights_of_another_variant_name_the_model_they_fit(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(WeightsFileError, match=r"a larger variant .* It fits torchvision:resnet34: build that model"):
        create_model("torchvision:resnet18", weights=path)
    torch.save({"a.weight": torch.zeros(3)}, path)  # nothing in common: no search, no suggestion
    with pytest.raises(WeightsFileError, match="another architecture") as err:
        create_model("torchvision:resnet18", weights=path)
    assert "It fits" not in str(err.value)
