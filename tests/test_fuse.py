"""scconv_surgery.fuse: the BatchNorm after an SCConv folds into a per-channel affine, exactly."""
import pytest
import timm
import torch
import torchvision
from torch import nn

from scconv_surgery.apply import convert
from scconv_surgery.fuse import FusedScConv, fold_batchnorm, fuse_scconv_bn
from scconv_surgery.layers import ScConv
from scconv_surgery.rules import PRESETS


def _random_stats(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    return bn.eval()


def test_fold_equals_scconv_then_batchnorm():
    torch.manual_seed(0)
    scconv = ScConv(16, 32).eval()
    bn = _random_stats(nn.BatchNorm2d(32), 1)
    x = torch.randn(2, 16, 8, 8)
    fused = fold_batchnorm(scconv, bn)
    assert fused.scconv is scconv and fused.weight.shape == (32,) and fused.bias.shape == (32,)
    torch.testing.assert_close(fused(x), bn(scconv(x)), rtol=1e-5, atol=1e-5)


def test_a_second_batchnorm_folds_into_the_affine():
    torch.manual_seed(0)
    scconv = ScConv(16).eval()
    bn1, bn2 = _random_stats(nn.BatchNorm2d(16), 1), _random_stats(nn.BatchNorm2d(16), 2)
    x = torch.randn(2, 16, 8, 8)
    twice = fold_batchnorm(fold_batchnorm(scconv, bn1), bn2)
    assert twice.scconv is scconv
    torch.testing.assert_close(twice(x), bn2(bn1(scconv(x))), rtol=1e-5, atol=1e-5)


def test_a_batchnorm_without_running_statistics_is_refused():
    with pytest.raises(ValueError, match="no running statistics"):
        fold_batchnorm(ScConv(16), nn.BatchNorm2d(16, track_running_stats=False))


def _with_trained_stats(model: nn.Module, size: int) -> nn.Module:
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


@pytest.mark.parametrize("build", [
    pytest.param(lambda: torchvision.models.resnet18(), id="torchvision resnet18"),
    pytest.param(lambda: timm.create_model("resnet10t", pretrained=False), id="timm resnet10t"),
])
def test_fuse_scconv_bn_keeps_outputs_and_leaves_the_model_alone(build):
    torch.manual_seed(0)
    converted, plan = convert(build(), PRESETS["paper"])
    converted = _with_trained_stats(converted, 64)
    x = torch.randn(2, 3, 64, 64)
    fused = fuse_scconv_bn(converted, (3, 64, 64))
    assert fused is not converted
    assert sum(isinstance(m, FusedScConv) for m in fused.modules()) == len(plan.replaced)
    first = plan.replaced[0].name  # e.g. layer1.0.conv2, whose bn2 became Identity
    assert isinstance(fused.get_submodule(first), FusedScConv)
    assert isinstance(fused.get_submodule(first.replace("conv2", "bn2")), nn.Identity)
    assert isinstance(converted.get_submodule(first), ScConv)  # a copy was fused
    torch.testing.assert_close(fused(x), converted(x), rtol=1e-4, atol=1e-4)


def test_fuse_in_place_returns_the_model():
    converted, _ = convert(torchvision.models.resnet18(), PRESETS["paper"])
    converted.eval()
    assert fuse_scconv_bn(converted, (3, 32, 32), inplace=True) is converted
    assert any(isinstance(m, FusedScConv) for m in converted.modules())
