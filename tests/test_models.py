import urllib.error

import pytest
import torch

from scconv_surgery.errors import PretrainedWeightsError, UnknownModelError
from scconv_surgery.models import (
    ModelSource,
    WeightsKind,
    WeightsSource,
    build_model,
    create_model,
    default_input_size,
    rebuild_base,
)


@pytest.mark.parametrize("name, library, model_name", [
    ("resnet18", "timm", "resnet18"),
    ("timm:resnet18", "timm", "resnet18"),
    ("torchvision:resnet18", "torchvision", "resnet18"),
    ("vgg11", "timm", "vgg11"),
    ("torchvision:vgg11", "torchvision", "vgg11"),
    ("mobilenet_v3_small", "torchvision", "mobilenet_v3_small"),  # torchvision's name, unknown to timm
])
def test_names_resolve_timm_first(name, library, model_name):
    _, source = create_model(name)
    assert (source.library, source.name) == (library, model_name)
    assert source.weights.to_dict() == {"kind": "random"}


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError, match="resnet50") as info:
        create_model("resnet5O")
    assert "resnet50" in info.value.suggestions
    assert info.value.name == "resnet5O"


def test_unknown_library_prefix():
    with pytest.raises(UnknownModelError, match="timm:resnet50"):
        create_model("tf:resnet50")


def test_num_classes_reaches_the_constructor():
    model, source = create_model("torchvision:resnet18", num_classes=7)
    assert model.fc.out_features == 7
    assert source.kwargs == {"num_classes": 7}
    assert build_model(source).fc.out_features == 7


def test_pretrained_offline_fails_with_a_hint_to_use_weights(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no cache, no network: fails at once
    monkeypatch.setenv("HF_HOME", "/nonexistent-scconv-test")
    with pytest.raises(PretrainedWeightsError, match="local weights file"):
        create_model("timm:resnet18", weights=WeightsSource.pretrained())


def test_pretrained_torchvision_download_failure(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline, raising=False)
    with pytest.raises(PretrainedWeightsError, match="local weights file") as info:
        create_model("torchvision:resnet18", weights=WeightsSource.pretrained())
    assert info.value.name == "torchvision:resnet18"


def test_a_random_base_is_rebuilt_exactly_from_its_seed():
    first, source = create_model("torchvision:resnet18", weights=WeightsSource.random(seed=5))
    again, _ = rebuild_base(source)
    other, _ = create_model("torchvision:resnet18", weights=WeightsSource.random(seed=6))
    assert torch.equal(first.fc.weight, again.fc.weight)
    assert not torch.equal(first.fc.weight, other.fc.weight)


@pytest.mark.parametrize("name, size", [
    ("timm:resnet50", (3, 224, 224)),
    ("timm:inception_v3", (3, 299, 299)),
    ("torchvision:inception_v3", (3, 299, 299)),
    ("torchvision:resnet18", (3, 224, 224)),
])
def test_default_input_size(name, size):
    model, source = create_model(name)
    assert default_input_size(model, source) == size


def test_model_source_round_trip():
    source = ModelSource("timm", "resnet50", {"num_classes": 3}, WeightsSource.pretrained("a1_in1k"))
    assert source.to_dict()["weights"] == {"kind": "pretrained", "tag": "a1_in1k"}
    assert ModelSource.from_dict(source.to_dict()) == source
    recorded = ModelSource("timm", "resnet50", {}, WeightsSource(WeightsKind.FILE, seed=3, name="w.pt", sha256="ab",
                                                                 reinitialized=("fc.weight",)))
    assert ModelSource.from_dict(recorded.to_dict(), seed=3) == recorded  # the seed is the manifest's


def test_model_names_parse_into_requests():
    assert ModelSource.parse("resnet50") == ModelSource(None, "resnet50")
    assert ModelSource.parse("timm:hf-hub:timm/x").library == "timm"
    assert ModelSource.parse("factory:pkg.mod:build") == ModelSource.factory("pkg.mod:build")
    with pytest.raises(UnknownModelError, match="not a library prefix"):
        ModelSource.parse("tf:resnet50")


def test_torchvision_detection_models_download_no_backbone(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_download, raising=False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model, source = create_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn")
    assert source.kwargs == {} and model is not None


def test_unknown_name_messages():
    with pytest.raises(UnknownModelError, match="timm does not know it") as info:
        create_model("timm:resnet50x")
    assert len(info.value.suggestions) == len(set(info.value.suggestions))
    with pytest.raises(UnknownModelError, match="'foo' is not a library prefix"):
        create_model("foo:resnet50")


def test_unknown_timm_pretrained_tag_names_the_known_tags():
    with pytest.raises(UnknownModelError, match="timm knows 'resnet10t' but not its pretrained tag 'nosuchtag'") as info:
        create_model("timm:resnet10t.nosuchtag")
    assert info.value.suggestions == ("timm:resnet10t.c3_in1k",)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding timm/test_resnet.fake_in1k: its config.json and weights."""
    import json

    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    repo = tmp_path / "hub" / "models--timm--test_resnet.fake_in1k"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    config = {"architecture": "test_resnet", "num_classes": 10,
              "pretrained_cfg": {"tag": "fake_in1k", "input_size": [3, 48, 48], "num_classes": 10,
                                 "classifier": "fc", "mean": [0.5] * 3, "std": [0.5] * 3}}
    (snapshot / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", num_classes=10).state_dict()
    save_file({k: v.contiguous() for k, v in reference.items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return reference


@pytest.mark.parametrize("name", ["hf-hub:timm/test_resnet.fake_in1k", "timm:hf-hub:timm/test_resnet.fake_in1k"])
def test_hf_hub_names_build_from_the_local_cache(name, hf_cache, tmp_path):
    from scconv_surgery import load
    from scconv_surgery.pipeline import run_conversion

    model, source = create_model(name, weights=WeightsSource.pretrained())
    assert (source.library, source.name) == ("timm", "hf-hub:timm/test_resnet.fake_in1k")
    assert source.weights.to_dict() == {"kind": "pretrained", "tag": "fake_in1k"}
    assert torch.equal(model.fc.weight, hf_cache["fc.weight"]) and model.fc.out_features == 10
    assert default_input_size(model, source) == (3, 48, 48)  # from the Hub's config
    result = run_conversion(ModelSource.parse(name, weights=WeightsSource.pretrained()), output=tmp_path / "hub.pt")
    assert result.report.input_size == (3, 48, 48)
    loaded = load(tmp_path / "hub.pt")  # rebuilt from the cached config, offline
    assert torch.equal(loaded.fc.weight, hf_cache["fc.weight"])


def test_hf_hub_name_missing_from_the_cache_offline(hf_cache):
    with pytest.raises(UnknownModelError, match="neither in the local Hugging Face cache nor downloadable"):
        create_model("hf-hub:timm/not_in_the_cache")


def test_a_model_without_data_is_refused_where_data_is_needed(monkeypatch):
    import sys
    import types

    from torch import nn

    from scconv_surgery.errors import ModelDataError
    from scconv_surgery.models import build_model, create_model
    from scconv_surgery.models import ModelSource as Source

    module = types.ModuleType("scconv_test_meta")
    module.build = lambda: nn.Conv2d(16, 16, 3, device="meta")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises(ModelDataError, match=r"2 of its 2 tensors have no data \(the meta device, e.g. weight, bias\)") \
            as info:
        create_model("factory:scconv_test_meta:build")
    assert info.value.tensors == ("weight", "bias")
    with pytest.raises(ModelDataError):
        build_model(Source.factory("scconv_test_meta:build"))
    assert build_model(Source.factory("scconv_test_meta:build"), require_data=False).weight.is_meta  # a survey


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch.ao.quantization's own
def test_a_quantised_model_is_refused_naming_its_quantised_tensors(monkeypatch):
    import sys
    import types

    from torch import nn

    from scconv_surgery.errors import ModelDataError
    from scconv_surgery.models import create_model

    def build():
        model = nn.Sequential(nn.Linear(4, 4))
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)

    module = types.ModuleType("scconv_test_quantised")
    module.build = build
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises(ModelDataError, match="it is quantised .*convert the float model, then quantise"):
        create_model("factory:scconv_test_quantised:build")
