"""Tests for scconv_surgery.inference: optimize_for_inference as reversible module state."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from scconv_surgery import ScConv, optimize_for_inference
from scconv_surgery.layers import MergePolicy


def _layer() -> ScConv:
    torch.manual_seed(0)
    layer = ScConv(16, 32, stride=2)
    with torch.no_grad():
        layer.sru.gn.weight.uniform_(-1.0, 2.0)
        layer.sru.gn.bias.normal_(0.0, 0.1)
    return layer.eval()


def _input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 16, 8, 8)


def test_optimize_for_inference_is_module_state():
    layer = _layer()
    x = _input()
    with torch.no_grad():
        expected = layer(x)
    assert optimize_for_inference(layer, merge=MergePolicy.ALWAYS, kernels=False) == {"": True}
    assert layer.cru.y1_weight.shape == (32, 4, 3, 3)  # dense: up // r = 4 input channels
    assert "cru.y1_weight" not in layer.state_dict()  # checkpoints are unchanged
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    # load_state_dict: the cache follows the new weights at the next forward
    other = _layer()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
        wanted = other(x)
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), wanted, atol=1e-5, rtol=1e-5)
    # an eval forward that needs input gradients (saliency maps) works: built under no_grad
    saliency = x.clone().requires_grad_()
    layer(saliency).sum().backward()
    assert saliency.grad is not None and layer.cru.gwc.weight.grad is not None  # params get theirs too
    # training ignores the cache; merge="never" drops it
    layer.train()
    layer(x).sum().backward()
    assert optimize_for_inference(layer, merge="never", kernels=False) == {"": False}  # two convs
    assert layer.cru.merge is MergePolicy.NEVER and layer.cru.y1_weight is not None
    assert optimize_for_inference(layer, enabled=False) == {"": False}  # undone: no cache
    assert layer.cru.y1_weight is None and layer.sru.gate_scale is None and layer.cru.merge is MergePolicy.AUTO
    assert set(optimize_for_inference(layer, (16, 8, 8), batch_size=2, kernels=False)) == {""}  # auto: timed
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x), wanted, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="merge must be"):
        optimize_for_inference(layer, merge="sometimes")


def test_cache_rebuilt_under_inference_mode_serves_a_saliency_forward():
    # a frozen model: the cache is used by forwards with gradients too (no parameter needs one)
    layer = _layer().requires_grad_(False)
    optimize_for_inference(layer, merge="always", kernels=False)
    x = _input()
    with torch.no_grad():
        layer.sru.gn.weight.add_(0.25)  # the parameters move: the next forward rebuilds the cache
        layer.cru.gwc.weight.mul_(1.5)
    with torch.inference_mode():
        expected = layer(x)  # the rebuild happens here, under inference_mode
    saliency = x.clone().requires_grad_()
    out = layer(saliency)  # would save inference tensors for backward: RuntimeError
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=1e-5)
    assert saliency.grad.shape == x.shape and saliency.grad.abs().sum() > 0


def test_cache_follows_in_place_parameter_updates():
    # an EMA or optimizer step changes the parameters in place, in eval mode, without eval()
    layer = _layer()
    optimize_for_inference(layer, merge="always", kernels=False)
    x = _input()
    with torch.no_grad():
        layer(x)
        for p in layer.parameters():
            p.mul_(0.9)
        cached = layer(x)
    optimize_for_inference(layer, enabled=False)
    with torch.no_grad():
        torch.testing.assert_close(cached, layer(x), atol=1e-5, rtol=1e-5)


def test_auto_times_each_layer_of_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(ScConv(16, 32, stride=2), nn.ReLU(), ScConv(32)).eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        expected = model(x)
    chosen = optimize_for_inference(model, (16, 12, 12), batch_size=2, kernels=False)
    assert set(chosen) == {"0", "2"}
    for name, merged in chosen.items():
        cru = model.get_submodule(name).cru
        assert cru.y1_weight is not None  # exported graphs merge either way
        assert cru.merge is (MergePolicy.ALWAYS if merged else MergePolicy.AUTO)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_cache_is_bypassed_by_torch_func_ensembles():
    # vmap over functional_call with stacked weights (torch.func model ensembling)
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    models = [ScConv(16).eval() for _ in range(3)]
    params, _ = stack_module_state(models)
    x = _input()
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models])
        optimize_for_inference(models[0], merge="always", kernels=False)
        out = vmap(lambda p, x: functional_call(models[0], p, (x,)), in_dims=(0, None))(params, x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        # functional_call with another model's weights, then the module's own again
        torch.testing.assert_close(functional_call(models[0], dict(models[1].named_parameters()), (x,)),
                                   expected[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(models[0](x), expected[0], atol=1e-5, rtol=1e-5)
