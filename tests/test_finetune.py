import pytest
import timm
import torch

from scconv_surgery.apply import convert
from scconv_surgery.finetune import (
    gradient_free_parameters,
    new_parameter_names,
    param_groups,
    reset_batchnorm_stats,
    stale_batchnorms,
)
from scconv_surgery.layers import ScConv, ScConvConfig


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
