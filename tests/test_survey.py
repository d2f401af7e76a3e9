"""Surveying the zoos on the meta device: names, coverage classes, MACs, the cache, worker isolation."""
import pytest

from scconv_surgery import survey
from scconv_surgery.pipeline import run_conversion
from scconv_surgery.survey import (
    Coverage,
    ModelSurvey,
    build_model_on_meta,
    list_model_names,
    survey_model,
    survey_models,
)


def test_list_model_names_globs_case_insensitively():
    assert list_model_names(["RESNET18"]) == ["resnet18"]
    assert list_model_names(["torchvision:resnet1*"]) == ["torchvision:resnet101", "torchvision:resnet152",
                                                          "torchvision:resnet18"]
    assert list_model_names(["timm:resnet18"]) == ["resnet18"]
    assert not any(n.startswith("torchvision:") for n in list_model_names(["timm:*"]))
    everything = list_model_names()
    assert everything.index("resnet18") < everything.index("torchvision:alexnet")  # timm first


SURVEYS = [  # (model, coverage, replaced, adapted)
    ("resnet18", Coverage.CONVERTS, 16, 0),
    ("torchvision:densenet121", Coverage.CONVERTS, 58, 58),
    ("vit_tiny_patch16_224", Coverage.NO_3X3, 0, 0),
    ("mobilenetv3_small_050", Coverage.DEPTHWISE_ONLY, 0, 0),
    ("nf_resnet26", Coverage.WEIGHT_STANDARDIZED, 0, 0),
    ("torchvision:regnet_x_400mf", Coverage.CONVERTS, 2, 1),  # built on the CPU: widths computed with tensors
]


@pytest.mark.parametrize("name, coverage, replaced, adapted", SURVEYS, ids=[s[0] for s in SURVEYS])
def test_survey_model(name, coverage, replaced, adapted):
    result = survey_model(name)
    assert result.error is None
    assert (result.coverage, result.replaced, result.adapted) == (coverage, replaced, adapted)
    assert ModelSurvey.from_dict(result.to_dict()) == result


def test_meta_models_hold_no_storage():
    model = build_model_on_meta("vit_large_patch16_224")  # 304 M parameters
    assert all(p.is_meta for p in model.parameters())


def test_survey_never_raises():
    result = survey_model("no_such_model")
    assert result.coverage is None
    assert result.error.startswith("build: UnknownModelError: unknown model 'timm:no_such_model': timm does not know it")


def test_meta_macs_delta_equals_fvcore_after_a_real_conversion():
    result = survey_model("resnet10t", count_macs=True)
    real = run_conversion("resnet10t").report
    assert result.input_size == real.input_size == (3, 176, 176)
    assert result.macs_delta == real.macs_delta == 536_999_168 - 1_073_998_336  # fvcore, 10 convs
    assert result.params_delta == real.params_delta


def test_cache_is_read_back_and_keyed_by_options(tmp_path, monkeypatch):
    first = survey_models(["resnet18", "vit_tiny_patch16_224"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("models-*.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("planned again")

    monkeypatch.setattr(survey, "survey_model", fail)
    assert survey_models(["vit_tiny_patch16_224", "resnet18"], cache_dir=tmp_path) == first[::-1]
    (again,) = survey_models(["resnet18"], cache_dir=tmp_path, strict_paper=True)  # another key: planned again
    assert again.error == "build: AssertionError: planned again"
