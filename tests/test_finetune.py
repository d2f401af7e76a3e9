import pytest
import timm
import torch
from torch import nn

from scconv_surgery.apply import convert
from scconv_surgery.finetune import (
    gradient_free_parameters,
    new_parameter_names,
    param_groups,
    reset_batchnorm_stats,
    stale_batchnorms,
)
from scconv_surgery.layers import ScConv, ScConvConfig
from scconv_surgery.probe import probe_model


@pytest.fixture(scope="module")
def converted_resnet50():
    torch.manual_seed(0)
    model, plan = convert(timm.create_model("resnet50"))
    return model, plan


def test_new_parameters_are_those_of_scconv_modules(converted_resnet50):
    model, plan = converted_resnet50
    names = new_parameter_names(model)
    per_layer = len(list(ScConv(64).parameters()))  # gn weight/bias, 5 conv weights, GWC bias
    assert per_layer == 8
    assert len(names) == 16 * per_layer
    assert "layer1.0.conv2.cru.gwc.weight" in names and "layer1.0.conv1.weight" not in names


def test_param_groups(converted_resnet50):
    model, _ = converted_resnet50
    groups = {g["name"]: g for g in param_groups(model, lr=1e-4, new_lr=1e-3, weight_decay=0.05)}
    assert list(groups) == ["pretrained", "pretrained_no_decay", "new", "new_no_decay"]
    assert (groups["new"]["lr"], groups["new"]["weight_decay"]) == (1e-3, 0.05)
    assert (groups["new_no_decay"]["lr"], groups["new_no_decay"]["weight_decay"]) == (1e-3, 0.0)
    assert (groups["pretrained_no_decay"]["lr"], groups["pretrained_no_decay"]["weight_decay"]) == (1e-4, 0.0)
    # every trainable parameter exactly once; no decay exactly on tensors of ndim <= 1
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(p.ndim <= 1 for g in ("pretrained_no_decay", "new_no_decay") for p in groups[g]["params"])
    assert all(p.ndim > 1 for g in ("pretrained", "new") for p in groups[g]["params"])
    # 16 layers x (5 conv weights) decayed; 16 x (gn weight, gn bias, gwc bias) not
    assert (len(groups["new"]["params"]), len(groups["new_no_decay"]["params"])) == (80, 48)
    torch.optim.AdamW(param_groups(model, lr=1e-4))  # a valid optimizer input


def test_param_groups_skip_frozen_and_default_new_lr(tiny_net):
    model, _ = convert(tiny_net)
    model.stem.weight.requires_grad_(False)
    groups = {g["name"]: g for g in param_groups(model, lr=0.1)}
    assert groups["new"]["lr"] == 0.1
    assert all(p is not model.stem.weight for g in groups.values() for p in g["params"])


def test_stale_batchnorms_follow_the_replaced_convs(converted_resnet50):
    model, plan = converted_resnet50
    names = [d.name for d in plan.replaced]
    assert stale_batchnorms(model, names, (3, 64, 64)) == [n.replace("conv2", "bn2") for n in names]
    assert all(not m._forward_hooks for m in model.modules())


def test_reset_batchnorm_stats(converted_resnet50):
    model, _ = converted_resnet50
    bn = model.layer1[0].bn2
    bn.running_mean.fill_(3.0)
    bn.num_batches_tracked.fill_(7)
    reset_batchnorm_stats(model, ["layer1.0.bn2"])
    assert torch.equal(bn.running_mean, torch.zeros(64)) and torch.equal(bn.running_var, torch.ones(64))
    assert bn.num_batches_tracked.item() == 0


@pytest.mark.parametrize("variant", ["paper", "seed"])
def test_parameters_that_never_get_a_gradient_are_frozen_and_left_out(variant):
    """The seed's hard masks give its group norm's scale and bias no gradient: under DDP a parameter
    that requires grad and never gets one stops training at the second step."""
    torch.manual_seed(0)
    model, _ = convert(timm.create_model("test_resnet"), config=ScConvConfig(variant=variant))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(gradient_free_parameters(model))
    model.requires_grad_(True).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    no_gradient = {name for name, p in model.named_parameters() if p.grad is None}
    assert no_gradient == frozen  # exactly the parameters no loss reaches
    scconv_layers = sum(isinstance(m, ScConv) for m in model.modules())
    assert len(no_gradient) == (2 * scconv_layers if variant == "seed" else 0)
    grouped = {id(p) for g in param_groups(model, lr=0.1) for p in g["params"]}  # even when requiring grad
    assert not grouped & {id(model.get_parameter(name)) for name in no_gradient}


def test_stale_norms_of_timm_s_batchnormact2d_are_found_and_reset():
    """RegNet's conv2 is a ConvNormAct: its norm, a BatchNormAct2d, calls its own act and drop
    modules, so it is a norm with children; the conv's next leaf is not it."""
    torch.manual_seed(0)
    base = timm.create_model("regnety_016", pretrained=False)
    converted, plan = convert(base)
    names = [d.name for d in plan.replaced]
    assert names == ["s1.b1.conv2.conv", "s1.b2.conv2.conv", "s2.b2.conv2.conv", "s2.b3.conv2.conv",
                     "s2.b4.conv2.conv", "s2.b5.conv2.conv", "s2.b6.conv2.conv"]
    stale = stale_batchnorms(base, names, (3, 32, 32))
    assert stale == [n.replace("conv2.conv", "conv2.bn") for n in names]
    assert type(converted.get_submodule(stale[0])) is timm.layers.BatchNormAct2d
    assert stale_batchnorms(converted, names, (3, 32, 32)) == stale  # the converted model runs the same modules
    bn = converted.get_submodule("s1.b1.conv2.bn")
    bn.running_mean.fill_(3.0)
    bn.running_var.fill_(5.0)
    bn.num_batches_tracked.fill_(7)
    reset_batchnorm_stats(converted, stale)
    assert torch.equal(bn.running_mean, torch.zeros(48)) and torch.equal(bn.running_var, torch.ones(48))
    assert bn.num_batches_tracked.item() == 0


def test_frozen_batchnorms_are_found_and_reset_to_mean_0_var_1():
    import torchvision
    torch.manual_seed(0)
    base = torchvision.models.resnet18(norm_layer=torchvision.ops.FrozenBatchNorm2d)
    converted, plan = convert(base)
    names = [d.name for d in plan.replaced]
    assert names == [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3, 4) for b in (0, 1) for c in (1, 2)]
    stale = stale_batchnorms(probe_model(base, (3, 32, 32)), names)
    assert stale == [n.replace(".conv", ".bn") for n in names]
    bn = converted.layer2[1].bn2
    for norm in (bn, converted.bn1):  # as pretrained statistics would be
        norm.running_mean.fill_(3.0)
        norm.running_var.fill_(5.0)
    weight = bn.weight.clone()
    reset_batchnorm_stats(converted, stale)
    assert torch.equal(bn.running_mean, torch.zeros(128)) and torch.equal(bn.running_var, torch.ones(128))
    assert torch.equal(bn.weight, weight)  # the affine part (buffers too) is kept
    assert torch.equal(converted.bn1.running_var, torch.full((64,), 5.0))  # the stem's norm: not after a replaced conv


class OwnStatistics(nn.Module):
    """A custom norm keeping running statistics as buffers, without an nn.BatchNorm base or a reset method."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("running_mean", torch.full((channels,), 2.0))
        self.register_buffer("running_var", torch.full((channels,), 4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.running_mean[:, None, None]) / self.running_var[:, None, None].sqrt()


class EveryNormNet(nn.Module):
    """Five replaceable convs, each followed by another kind of norm (or none keeping statistics)."""

    def __init__(self):
        super().__init__()
        conv = lambda: nn.Conv2d(16, 16, 3, padding=1, bias=False)  # noqa: E731
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv_sync, self.sync = conv(), nn.SyncBatchNorm(16)
        self.conv_own, self.own = conv(), OwnStatistics(16)
        self.conv_instance, self.instance = conv(), nn.InstanceNorm2d(16, affine=True, track_running_stats=True)
        self.conv_untracked, self.untracked = conv(), nn.BatchNorm2d(16, track_running_stats=False)
        self.conv_group, self.group = conv(), nn.GroupNorm(4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for kind in ("sync", "own", "instance", "untracked", "group"):
            x = getattr(self, kind)(getattr(self, f"conv_{kind}")(x))
        return x


def test_every_norm_keeping_statistics_is_found_and_reset():
    torch.manual_seed(0)
    converted, plan = convert(EveryNormNet().eval())
    names = [d.name for d in plan.replaced]
    assert names == ["conv_sync", "conv_own", "conv_instance", "conv_untracked", "conv_group"]
    stale = stale_batchnorms(converted, names, (3, 8, 8))
    assert stale == ["sync", "own", "instance"]  # untracked BatchNorm and GroupNorm keep no statistics
    converted.sync.running_mean.fill_(3.0)
    converted.instance.running_var.fill_(9.0)
    reset_batchnorm_stats(converted, stale)
    for name in stale:
        norm = converted.get_submodule(name)
        assert torch.equal(norm.running_mean, torch.zeros(16)) and torch.equal(norm.running_var, torch.ones(16)), name
    with pytest.raises(ValueError, match="'group'"):
        reset_batchnorm_stats(converted, ["own", "group"])
