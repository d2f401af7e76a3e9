"""Real architectures: convert with the default rules, forward at the model's own input size,
and round-trip through a checkpoint with equal outputs (DESIGN section 3)."""
import copy

import pytest
import torch

from conftest import load_script
from scconv_surgery.apply import apply_plan, check_shapes
from scconv_surgery.checkpoint import load, save_checkpoint
from scconv_surgery.manifest import Manifest
from scconv_surgery.models import create_model, default_input_size
from scconv_surgery.plan import plan_conversion

ZOO = [  # (case, model name, constructor kwargs, replaced, classes replaced, skip reasons that must appear)
    ("resnet18", "timm:resnet18", {}, 16, {"Conv2d"}, {"kernel", "pointwise"}),
    ("resnet50", "timm:resnet50", {}, 16, {"Conv2d"}, {"kernel", "pointwise"}),
    ("resnet50 output_stride=8", "timm:resnet50", {"output_stride": 8}, 8, {"Conv2d"}, {"dilated"}),
    ("tf_efficientnetv2_b0 (Conv2dSame)", "timm:tf_efficientnetv2_b0", {}, 5, {"Conv2d", "Conv2dSame"},
     {"grouped", "channels"}),
    ("resnetv2_50x1_bit (StdConv2d)", "timm:resnetv2_50x1_bit", {}, 16, {"StdConv2d"}, {"pointwise"}),
    ("inception_v3 (non-square kernels)", "timm:inception_v3", {}, 10, {"Conv2d"}, {"kernel", "padding"}),
    ("vgg16 (in != out)", "torchvision:vgg16", {}, 12, {"Conv2d"}, {"channels"}),
    ("densenet121 (adapted squeeze_ratio)", "timm:densenet121", {}, 58, {"Conv2d"}, {"kernel", "pointwise"}),
]


@pytest.mark.parametrize("case, name, kwargs, replaced, classes, reasons", ZOO, ids=[z[0] for z in ZOO])
def test_convert_forward_and_round_trip(case, name, kwargs, replaced, classes, reasons, tmp_path):
    torch.manual_seed(0)
    base, source = create_model(name, model_kwargs=kwargs)
    plan = plan_conversion(base)
    assert len(plan.replaced) == replaced
    assert {d.class_name for d in plan.replaced} == classes
    assert reasons <= set(plan.skip_summary())
    converted = apply_plan(copy.deepcopy(base), plan)
    size = default_input_size(base, source)
    check_shapes(base, converted, plan, size)  # every replacement returns its conv's shape
    path = save_checkpoint(tmp_path / "m.pt", converted, Manifest(source, plan.replaced, seed=0, input_size=size))
    loaded = load(path)
    x = torch.randn(1, *size)
    with torch.no_grad():
        out = converted.eval()(x)
        assert out.shape == (1, 1000)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)


def test_output_stride_8_skips_exactly_the_dilated_convs():
    base, _ = create_model("timm:resnet50", model_kwargs={"output_stride": 8})
    plan = plan_conversion(base)
    dilated = {d.name: d.detail for d in plan.skipped if d.reason.value == "dilated"}
    # layer3 and layer4 keep stride 1 and dilate instead; each stage's first 3x3 keeps the
    # previous stage's dilation (1 in layer3.0, which stays eligible; 2 in layer4.0)
    assert dilated == {**{f"layer3.{b}.conv2": "dilation 2x2" for b in range(1, 6)},
                       "layer4.0.conv2": "dilation 2x2", "layer4.1.conv2": "dilation 4x4",
                       "layer4.2.conv2": "dilation 4x4"}
    assert "layer3.0.conv2" in {d.name for d in plan.replaced}


@pytest.mark.parametrize("name", ["timm:tf_efficientnet_b0", "timm:mobilenetv3_large_100"])
def test_depthwise_networks_have_nothing_eligible(name):
    """Every 3x3 of these is depthwise, and the dense stem has 3 input channels: nothing to replace."""
    base, _ = create_model(name)
    plan = plan_conversion(base)
    assert plan.replaced == ()
    summary = plan.skip_summary()
    assert summary["grouped"] >= 7 and summary["channels"] == 1
    stem = next(d for d in plan.decisions if d.name == "conv_stem")
    assert "in_channels=3" in stem.detail


@pytest.mark.parametrize("factory, kwargs, replaced, params_delta", [
    # growth rate 8 (the paper's 32, scaled down): 58 dense 3x3 convs 32 -> 8, where squeeze_ratio 2 leaves PWC2
    # empty; at the adapted 4, each 2,304 -> 392 params (GroupNorm 2 * 32, squeezes 2 * 16 * 4, GWC 2 * 8 * 9 +
    # bias 8, PWC1 4 * 8, PWC2 4 * 4)
    ("densenet121_cifar", {"growth_rate": 8}, 58, -58 * (2_304 - 392)),
    # the 7 unstrided grouped 3x3 convs (8 groups) of widths 128, 256, 512: SCConv with GWC in 8 groups has
    # GroupNorm 2C, squeezes 2 * (C/2) * (C/4), GWC (C/32) * C * 9 + bias C, PWC1 (C/4) * C, PWC2 (C/4) * (3C/4)
    # parameters (16,256, 64,256, 255,488); the 2 strided ones would cost more MACs as SCConv
    ("resnext29_8x64d", {"base_width": 16}, 7, -3 * (18_432 - 16_256) - 2 * (73_728 - 64_256) - 2 * (294_912 - 255_488)),
], ids=["DenseNet-121 CIFAR", "ResNeXt-29 8x16d CIFAR"])
def test_the_paper_s_cifar_networks_convert_and_reload(factory, kwargs, replaced, params_delta, tmp_path):
    torch.manual_seed(0)
    base, source = create_model(f"factory:examples.cifar_models:{factory}", model_kwargs=kwargs)
    plan = plan_conversion(base)
    assert len(plan.replaced) == replaced
    converted = apply_plan(copy.deepcopy(base), plan)
    params = [sum(p.numel() for p in model.parameters()) for model in (base, converted)]
    assert params[1] - params[0] == params_delta
    assert {d.config.squeeze_ratio for d in plan.replaced} == ({4} if factory.startswith("dense") else {2})
    if factory.startswith("resnext"):
        assert {d.config.gwc_groups for d in plan.replaced} == {8}
        assert plan.skip_summary()["grouped"] == 2
    path = save_checkpoint(tmp_path / "m.pt", converted, Manifest(source, plan.replaced, seed=0, input_size=(3, 32, 32)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load(path)(x), converted.eval()(x), rtol=0, atol=0)


def test_the_zoo_benchmark_writes_its_json_and_docs_section(tmp_path):
    """benchmarks/zoo.py on two models, in this process, plan only: the docs/zoo.md generator stays working."""
    import json

    zoo = load_script("benchmarks/zoo.py")
    readme = tmp_path / "zoo.md"
    readme.write_text(f"# title\n{zoo.SECTION_START}\nold\n{zoo.SECTION_END}\nafter\n")
    assert zoo.main(["--filter", "resnet10t", "--filter", "vit_tiny_patch16_224", "--convert", "0", "--jobs", "0",
                     "--json", str(tmp_path / "zoo.json"), "--docs", str(readme)]) == 0
    summary = json.loads((tmp_path / "zoo.json").read_text())["summary"]
    assert (summary["models"], summary["convert"], summary["with_dense_3x3"]) == (2, 1, 1)
    assert summary["why_not"] == {"no_3x3": ["vit_tiny_patch16_224"]} and summary["plan_failures"] == {}
    text = readme.read_text()
    assert text.startswith("# title\n" + zoo.SECTION_START) and text.endswith(zoo.SECTION_END + "\nafter\n")
    assert "| convert (at least one conv replaced) | 1 |" in text and "old" not in text
