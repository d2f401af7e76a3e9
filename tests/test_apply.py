import copy

import pytest
import torch
from torch import nn

from conftest import AliasedConvNet, BatchFoldingNet
from scconv_surgery.apply import apply_plan, check_shapes, convert
from scconv_surgery.errors import PlanMismatchError, ShapeMismatchError
from scconv_surgery.layers import ScConv
from scconv_surgery.plan import plan_conversion
from scconv_surgery.probe import probe_model


def test_convert_leaves_the_input_model_untouched(tiny_net):
    before = copy.deepcopy(tiny_net.state_dict())
    converted, plan = convert(tiny_net)
    assert [d.name for d in plan.replaced] == ["block1", "block2"]
    assert type(tiny_net.block1) is nn.Conv2d
    assert isinstance(converted.block1, ScConv) and isinstance(converted.block2, ScConv)
    assert tiny_net.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in tiny_net.state_dict().items())


def test_untouched_layers_keep_their_weights(tiny_net):
    converted, _ = convert(tiny_net)
    for name in ("stem.weight", "proj.weight", "head.weight"):
        assert torch.equal(converted.state_dict()[name], tiny_net.state_dict()[name])


def test_replacements_are_drop_ins(tiny_net):
    x = torch.randn(2, 3, 15, 15)
    converted, _ = convert(tiny_net)
    shapes = {}
    for name in ("block1", "block2"):
        getattr(tiny_net, name).register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, o.shape))
    tiny_net(x)
    with torch.no_grad():
        h = torch.relu(converted.stem(x))
        assert converted.block1(h).shape == shapes["block1"]
        assert converted.block2(h).shape == shapes["block2"] == (2, 32, 8, 8)
    assert converted(x).shape == (2, 10)


def test_same_seed_same_tensors_and_global_rng_untouched(tiny_net):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, _ = convert(tiny_net, seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # conversion did not consume the global RNG
    b, _ = convert(tiny_net, seed=0)
    c, _ = convert(tiny_net, seed=1)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.block1.cru.gwc.weight, c.block1.cru.gwc.weight)


def test_mode_dtype_and_hooks_are_carried(tiny_net):
    tiny_net.double().train()
    tiny_net.block2.eval()
    calls = []
    tiny_net.block1.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    converted, _ = convert(tiny_net)
    assert converted.block1.training and not converted.block2.training
    assert converted.block1.cru.gwc.weight.dtype == torch.float64
    converted(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert calls == [(1, 16, 8, 8)]


def test_aliases_share_one_replacement():
    converted, plan = convert(AliasedConvNet())
    assert converted.conv is converted.again
    assert isinstance(converted.conv, ScConv)
    assert sum(1 for m in converted.modules() if isinstance(m, ScConv)) == 1


def test_meta_device_conversion_allocates_nothing(tiny_net):
    meta = copy.deepcopy(tiny_net).to("meta")
    converted, _ = convert(meta, inplace=True)
    assert converted is meta
    assert converted.block1.cru.gwc.weight.is_meta


def test_apply_plan_checks_everything_before_mutating(tiny_net):
    plan = plan_conversion(tiny_net)
    other = copy.deepcopy(tiny_net)
    other.block2 = nn.Conv2d(16, 32, 3, padding=1)  # stride differs from the plan's spec
    with pytest.raises(PlanMismatchError, match="block2") as info:
        apply_plan(other, plan)
    assert info.value.name == "block2"
    assert type(other.block1) is nn.Conv2d  # block1 came first in the plan and was not replaced


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_models_with_weight_hooks_convert_after_a_training_step(tiny_net):
    """The old-style hooks keep a computed, non-leaf weight on the module: deepcopy refused it."""
    nn.utils.weight_norm(tiny_net.block1)
    nn.utils.spectral_norm(tiny_net.block2)
    tiny_net.train()
    tiny_net(torch.randn(2, 3, 8, 8)).sum().backward()
    converted, plan = convert(tiny_net)
    assert {d.name: d.reason.value for d in plan.skipped if d.name.startswith("block")} == \
        {"block1": "weight_hook", "block2": "weight_hook"}
    assert not tiny_net.block1.weight.is_leaf  # the input model is as it was
    torch.testing.assert_close(converted.eval()(torch.ones(1, 3, 8, 8)), tiny_net.eval()(torch.ones(1, 3, 8, 8)))


def test_backward_hooks_are_carried(tiny_net):
    seen = []
    tiny_net.block1.register_full_backward_hook(lambda m, grad_in, grad_out: seen.append(grad_out[0].shape))
    tiny_net.block1.register_full_backward_pre_hook(lambda m, grad_out: seen.append("pre"))
    converted, _ = convert(tiny_net)
    converted(torch.randn(1, 3, 8, 8)).sum().backward()
    assert seen == ["pre", (1, 16, 8, 8)]


def test_check_shapes_reads_a_probe_of_the_base_model(tiny_net):
    converted, plan = convert(tiny_net)
    probe = probe_model(tiny_net, (3, 15, 15))
    check_shapes(probe, converted, plan)  # no forward of either model
    check_shapes(tiny_net, converted, plan, (3, 15, 15))  # the convenience path probes the base itself
    calls = []
    handle = converted.block2.register_forward_hook(lambda m, a, o: calls.append((tuple(a[0].shape), tuple(o.shape))))
    check_shapes(probe, converted, plan)
    handle.remove()
    assert calls == [((1, 16, 15, 15), (1, 32, 8, 8))]  # the replacement alone, at its conv's input shape
    folding = BatchFoldingNet()
    converted, plan = convert(folding)
    calls.clear()
    handle = converted.conv.register_forward_hook(lambda m, a, o: calls.append(tuple(a[0].shape)))
    check_shapes(folding, converted, plan, (16, 5, 5))
    handle.remove()
    assert calls == [(2, 16, 5, 5)]  # the batch the conv was called with, not the input's
    with pytest.raises(ValueError, match="input_size="):
        check_shapes(folding, converted, plan)


def test_check_shapes_names_the_layer_whose_shape_differs(tiny_net):
    converted, plan = convert(tiny_net)
    converted.block2 = nn.Conv2d(16, 32, 3, stride=1, padding=1)  # keeps the resolution its conv halved
    with pytest.raises(ShapeMismatchError) as caught:
        check_shapes(probe_model(tiny_net, (3, 16, 16)), converted, plan)
    assert (caught.value.name, caught.value.expected, caught.value.actual) == ("block2", (1, 32, 8, 8), (1, 32, 16, 16))


@pytest.mark.parametrize("kind", ["forward", "forward_pre", "forward_with_kwargs", "always_call", "full_backward"])
def test_a_handle_from_before_an_inplace_convert_removes_the_moved_hook(kind):
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1))
    calls: list[str] = []
    conv = model[0]
    register = {
        "forward": lambda: conv.register_forward_hook(lambda m, a, o: calls.append(type(m).__name__)),
        "forward_pre": lambda: conv.register_forward_pre_hook(lambda m, a: calls.append(type(m).__name__)),
        "forward_with_kwargs": lambda: conv.register_forward_hook(
            lambda m, a, k, o: calls.append(type(m).__name__), with_kwargs=True),
        "always_call": lambda: conv.register_forward_hook(lambda m, a, o: calls.append(type(m).__name__),
                                                          always_call=True),
        "full_backward": lambda: conv.register_full_backward_hook(lambda m, gi, go: calls.append(type(m).__name__)),
    }[kind]
    handle = register()
    convert(model, inplace=True)
    x = torch.randn(1, 16, 4, 4, requires_grad=True)
    model(x).sum().backward()
    assert calls == ["ScConv"]
    handle.remove()
    model(x).sum().backward()
    assert calls == ["ScConv"]  # removed: it fires no more
    assert all(not getattr(model[0], attr) for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                        "_forward_hooks_with_kwargs", "_forward_hooks_always_called"))


def test_a_copy_keeps_its_own_hooks_when_the_original_s_handle_is_removed():
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1))
    calls: list[str] = []
    handle = model[0].register_forward_hook(lambda m, a, o: calls.append(type(m).__name__))
    converted, _ = convert(model)  # a deep copy: the original's handle is about the original
    handle.remove()
    converted(torch.randn(1, 16, 4, 4))
    assert calls == ["ScConv"]


@pytest.mark.parametrize("net, reader", [
    ("trident", "its parameters are also read by block's forward"),
    ("tied", "its weight is also held by tied.weight"),
    ("buffer", "its weight is also held by keeper.snapshot"),
])
def test_a_conv_whose_parameters_other_code_uses_is_skipped_with_the_reader_named(net, reader):
    from conftest import TiedConvNet, TridentBlockNet
    from scconv_surgery.plan import SkipReason

    torch.manual_seed(0)
    if net == "trident":
        model, name, other = TridentBlockNet(), "block.conv", "other"
    elif net == "tied":
        model, name, other = TiedConvNet(), "conv", "other"
    else:
        model, name, other = TiedConvNet(), "conv", "other"
        del model.tied
        model.tied = nn.Identity()
        model.keeper = nn.Module()
        model.keeper.register_buffer("snapshot", model.conv.weight.data)  # the same storage
    size = (3, 8, 8) if net == "trident" else (16, 8, 8)
    converted, plan = convert(model, input_size=size)
    decisions = {d.name: d for d in plan.decisions}
    assert decisions[name].reason is SkipReason.SHARED_WEIGHT
    assert decisions[name].detail.startswith(reader), decisions[name].detail
    assert decisions[other].is_replaced
    converted(torch.randn(1, *size))  # runs: nothing reads a weight SCConv does not have


def test_without_a_forward_only_held_parameters_are_found():
    """plan_conversion without a probe (the meta-device survey) cannot see a read in a forward."""
    from conftest import TiedConvNet, TridentBlockNet
    from scconv_surgery.plan import SkipReason

    assert {d.name for d in plan_conversion(TridentBlockNet()).replaced} == {"block.conv", "other"}
    with torch.device("meta"):  # built there, as the survey builds (.to("meta") would untie the weights)
        meta = TiedConvNet()
    tied = {d.name: d for d in plan_conversion(meta).decisions}
    assert tied["conv"].reason is SkipReason.SHARED_WEIGHT and tied["tied"].reason is not SkipReason.SHARED_WEIGHT
    assert tied["other"].is_replaced


def test_an_aliased_conv_is_not_sharing():
    _, plan = convert(AliasedConvNet(), input_size=(16, 8, 8))
    assert [(d.name, d.aliases) for d in plan.replaced] == [("conv", ("again",))]


def test_a_conv_also_kept_in_a_plain_list_is_skipped():
    """Replacing it would leave the list's reference calling the dense conv, untrained."""
    from scconv_surgery.plan import SkipReason

    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))
    model[1].__dict__["branches"] = [model[0]]
    decision = {d.name: d for d in plan_conversion(model).decisions}["0"]
    assert decision.reason is SkipReason.SHARED_WEIGHT
    assert decision.detail.startswith("the conv itself is also kept by 1 as a plain attribute (branches[0])")
