"""Real architectures: convert with the default rules, forward at the model's own input size,
and round-trip through a checkpoint with equal outputs (DESIGN section 3)."""
import copy

import pytest
import torch

from scconv_surgery.apply import apply_plan, check_shapes
from scconv_surgery.checkpoint import build_manifest, load, save_checkpoint
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
    path = save_checkpoint(tmp_path / "m.pt", converted, build_manifest(source, plan, seed=0, input_size=size))
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
