"""The composite-module contract: every transformation an ``nn.Conv2d`` survives, ScConv
survives too, with the outputs of its plain eager forward.

On a small ScConv of each variant (16 -> 32 channels, stride 2, so the strided and widening
paths run) and, for the cheap transformations, on a converted torchvision resnet18.
"""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

from scconv_surgery import ScConv, ScConvConfig, convert, optimize_for_inference
from scconv_surgery.layers import SRU, MergePolicy

VARIANTS = ["paper", "seed"]
PARAM_MODULES = ["sru.gn", "cru.squeeze1", "cru.squeeze2", "cru.gwc", "cru.pwc1", "cru.pwc2"]


def _layer(variant: str, **kw) -> ScConv:
    torch.manual_seed(0)
    layer = ScConv(16, 32, stride=2, config=ScConvConfig(variant=variant, **kw))
    with torch.no_grad():  # gamma of both signs and a bias, so both gate branches run
        layer.sru.gn.weight.uniform_(-1.0, 2.0)
        layer.sru.gn.bias.normal_(0.0, 0.1)
    return layer.eval()


def _input(n: int = 2, c: int = 16, size: int = 8) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, c, size, size)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return convert(torchvision.models.resnet18(num_classes=10))[0].eval()


# --------------------------------------------------------------------------------------------
# The fast forward and the module-by-module forward agree (values and gradients)
# --------------------------------------------------------------------------------------------

PATH_CASES = [  # name, C_in, C_out, kernel, stride, config extras
    ("16-to-32-s2", 16, 32, 3, 2, {}),
    ("odd-33-to-32", 33, 32, 3, 1, {}),
    ("k5-g4-r4", 64, 96, 5, 1, {"gwc_groups": 4, "squeeze_ratio": 4}),
    ("g8-like-resnext", 64, 64, 3, 1, {"gwc_groups": 8}),
    ("pool-s2", 16, 32, 3, 2, {"stride_policy": "pool"}),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name,cin,cout,k,stride,extra", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_module_path_equals_fast_path(name, cin, cout, k, stride, extra, variant):
    torch.manual_seed(0)
    layer = ScConv(cin, cout, kernel_size=k, stride=stride, config=ScConvConfig(variant=variant, **extra)).train()
    x = torch.randn(2, cin, 9, 9, requires_grad=True)
    fast = layer(x)
    (fast * torch.linspace(-1, 1, fast.numel()).reshape(fast.shape)).sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    fast_x = x.grad.clone()
    layer.zero_grad(set_to_none=True)
    x.grad = None
    handle = layer.sru.gn.register_forward_hook(lambda *args: None)  # any hook: module path
    handles = [handle] + [getattr(layer.cru, n).register_forward_hook(lambda *args: None)
                          for n in ("squeeze1", "squeeze2", "gwc", "pwc1", "pwc2")]
    slow = layer(x)
    (slow * torch.linspace(-1, 1, slow.numel()).reshape(slow.shape)).sum().backward()
    for h in handles:
        h.remove()
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, fast_x, atol=1e-5, rtol=1e-5)
    slow_grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    assert slow_grads.keys() == fast_grads.keys()
    for n in fast_grads:
        torch.testing.assert_close(slow_grads[n], fast_grads[n], atol=1e-4, rtol=1e-4, msg=n)
    with torch.no_grad():  # the in-place no-grad forward
        torch.testing.assert_close(layer(x), fast, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,cin,cout,k,stride,extra", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_merged_gwc_pwc1_equals_two_convs(name, cin, cout, k, stride, extra):
    # the dense conv whose weight is assembled from GWC and PWC1 (torch.compile's form)
    torch.manual_seed(0)
    layer = ScConv(cin, cout, kernel_size=k, stride=stride, config=ScConvConfig(**extra)).train()
    x = torch.randn(2, cin, 9, 9)
    results = []
    for merge in (MergePolicy.NEVER, MergePolicy.ALWAYS):
        layer.cru.merge = merge
        layer.zero_grad(set_to_none=True)
        out = layer(x)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out, layer.cru.gwc.weight.grad.clone(), layer.cru.pwc1.weight.grad.clone()))
    for two_convs, dense in zip(*results):
        torch.testing.assert_close(dense, two_convs, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Hooks of every kind, on ScConv and on every submodule that holds parameters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("target", ["", *PARAM_MODULES])
def test_hooks_fire_on_every_parameter_module(target, variant):
    layer = _layer(variant).train()
    module = layer.get_submodule(target)
    calls = []
    handles = [
        module.register_forward_pre_hook(lambda m, args: calls.append("pre")),
        module.register_forward_hook(lambda m, args, out: calls.append("forward")),
        module.register_full_backward_hook(lambda m, gin, gout: calls.append("backward")),
    ]
    x = _input().requires_grad_()
    out = layer(x)
    out.sum().backward()
    for h in handles:
        h.remove()
    # the seed's hard masks send no gradient through its group norm (DESIGN section 2)
    no_gradient = variant == "seed" and target == "sru.gn"
    assert calls == ["pre", "forward"] + ([] if no_gradient else ["backward"])
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=1e-5)  # hooks change nothing


def test_forward_hook_output_is_used():
    layer = _layer("paper")
    x = _input()
    with torch.no_grad():
        before = layer(x)
        handle = layer.cru.pwc2.register_forward_hook(lambda m, args, out: out * 0)
        after = layer(x)
        handle.remove()
    assert (after - before).abs().max() > 1e-3


def test_global_module_hooks_see_every_submodule():
    layer = _layer("paper")
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, args, out: seen.append(m))
    try:
        layer(_input())
    finally:
        handle.remove()
    names = {n for n, m in layer.named_modules() if any(m is s for s in seen)}
    assert set(PARAM_MODULES) <= names


def test_hooks_on_every_module_of_converted_resnet18(resnet18):
    # activation capture as visualisation tools do it: a forward hook on every module
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = resnet18(x)
    captured = {}

    def capture(name):
        def hook(module, args, out):
            captured[name] = out.shape  # returns None: the output is kept
        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in resnet18.named_modules() if name]
    try:
        with torch.no_grad():
            out = resnet18(x)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert captured["layer1.0.conv1.cru.gwc"] == (2, 64, 8, 8)
    assert captured["layer1.0.conv1.sru.gn"] == (2, 64, 8, 8)


# --------------------------------------------------------------------------------------------
# Autograd transformations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_double_backward(variant):
    layer = _layer(variant).train().double()
    x = _input().double().requires_grad_()
    (gx,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
    gx.pow(2).sum().backward()  # a gradient penalty
    assert torch.isfinite(x.grad).all() and layer.cru.gwc.weight.grad.abs().max() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_func_per_sample_gradients_and_jacobians(variant):
    layer = _layer(variant)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = _input(n=3)

    def loss(p, xi):
        return functional_call(layer, p, (xi[None],)).pow(2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    assert per_sample["cru.gwc.weight"].shape == (3, *layer.cru.gwc.weight.shape)
    for i in range(3):  # each equals the gradient of that sample alone
        layer.zero_grad(set_to_none=True)
        layer(x[i:i + 1]).pow(2).sum().backward()
        torch.testing.assert_close(per_sample["cru.gwc.weight"][i], layer.cru.gwc.weight.grad, atol=1e-4, rtol=1e-4)
    jac = jacrev(layer)(x[:1, :, :4, :4])
    assert jac.shape == (1, 32, 2, 2, 1, 16, 4, 4)
    # forward mode (jacfwd, jvp, hessian = jacfwd(jacrev)) gives the same Jacobian
    torch.testing.assert_close(jacfwd(layer)(x[:1, :, :4, :4]), jac, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Tracers, exporters, compilers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_fx_symbolic_trace(variant):
    layer = _layer(variant)
    x = _input()
    graph_module = torch.fx.symbolic_trace(layer)
    targets = {node.target for node in graph_module.graph.nodes if node.op in ("call_module", "get_attr")}
    # the submodules are nodes of the graph (fx traces through SeedGroupNorm, not a torch.nn leaf)
    leaves = [m for m in PARAM_MODULES if variant == "paper" or m != "sru.gn"]
    assert set(leaves) <= targets
    assert variant == "paper" or "sru.gn.weight" in targets
    torch.testing.assert_close(graph_module(x), layer(x), atol=1e-5, rtol=1e-5)


def test_create_feature_extractor_on_converted_resnet18(resnet18):
    from torchvision.models.feature_extraction import create_feature_extractor

    extractor = create_feature_extractor(resnet18, {"layer2.0.conv1.cru.gwc": "gwc", "layer4": "layer4"})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = extractor(x)
    assert features["layer4"].shape == (2, 512, 2, 2)
    assert features["gwc"].shape == (2, 128, 8, 8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_export_with_dynamic_batch(variant):
    layer = _layer(variant)
    batch = torch.export.Dim("batch", min=1, max=32)
    program = torch.export.export(layer, (_input(),), dynamic_shapes={"x": {0: batch}})
    x5 = _input(n=5)
    torch.testing.assert_close(program.module()(x5), layer(x5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-exporter", "torchscript-exporter"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_export_matches_onnxruntime(variant, dynamo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    layer = _layer(variant)
    x = _input()
    path = tmp_path / "scconv.onnx"
    if dynamo:
        torch.onnx.export(layer, (x,), dynamo=True).save(str(path))
    else:
        torch.onnx.export(layer, (x,), str(path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), layer(x), atol=1e-4, rtol=1e-4)


def test_jit_trace_save_load(resnet18, tmp_path):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(resnet18, x, check_trace=False)
        torch.jit.save(traced, str(tmp_path / "m.pt"))
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
        torch.testing.assert_close(loaded(x), resnet18(x), atol=1e-4, rtol=1e-4)


def test_jit_script_is_not_supported():
    # torch.jit.script is deprecated; ScConv's forward chooses its path in Python (README:
    # use torch.jit.trace, torch.export or torch.compile instead)
    with pytest.raises(Exception):
        torch.jit.script(_layer("paper"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_compile_fullgraph_eager_backend(variant):
    layer = _layer(variant)
    x = _input()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), atol=1e-5, rtol=1e-5)


def test_compile_dynamic_train_step_matches_eager():
    layer = _layer("paper").train()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True, dynamic=True)
    for n, size in ((2, 8), (3, 10)):
        x = _input(n=n, size=size).requires_grad_()
        layer.zero_grad(set_to_none=True)
        out = compiled(x)
        out.sum().backward()
        grads = {k: p.grad.clone() for k, p in layer.named_parameters()}
        layer.zero_grad(set_to_none=True)
        expected = layer(x)
        expected.sum().backward()
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        for k, p in layer.named_parameters():
            torch.testing.assert_close(grads[k], p.grad, atol=1e-4, rtol=1e-4, msg=k)


# --------------------------------------------------------------------------------------------
# Copies, dtypes, devices, optimize_for_inference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimized", [False, True], ids=["plain", "optimized"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_deepcopy_and_pickle(variant, optimized):
    layer = _layer(variant)
    if optimized:
        optimize_for_inference(layer, merge="always", kernels=False)
    x = _input()
    with torch.no_grad():
        expected = layer(x)
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            torch.testing.assert_close(clone(x), expected, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("optimized", [False, True], ids=["plain", "optimized"])
def test_dtype_conversion_before_and_after_optimize(dtype, optimized):
    layer = _layer("paper")
    x = _input()
    with torch.no_grad():
        expected = layer(x)
    if optimized:
        optimize_for_inference(layer, merge="always", kernels=False)
    converted = layer.to(dtype)
    assert {t.dtype for t in converted.parameters()} == {dtype}
    with torch.no_grad():
        out = converted(x.to(dtype))
    assert out.dtype == dtype
    tolerance = {torch.float64: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)
    if optimized:  # the cache follows the conversion; the gate's part stays in float32 or wider
        assert converted.cru.y1_weight.dtype == dtype
        assert converted.sru.gate_scale.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


# --------------------------------------------------------------------------------------------
# Precision: autocast, low-precision GroupNorm weights
# --------------------------------------------------------------------------------------------


def _keep_mask(sru: SRU, x: torch.Tensor) -> torch.Tensor:
    """SRU's keep decisions ``S > t``, computed as its fast forward computes them."""
    dtype = torch.float32
    scale, shift = sru.gate_affine(dtype)
    gate = torch.sigmoid(F.group_norm(x.to(dtype), sru.gn.num_groups, scale, shift, sru.gn.eps))
    return gate > sru.gate_threshold


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_keep_mask_flips_below_one_in_ten_thousand(dtype):
    torch.manual_seed(0)
    layer = ScConv(64).eval()
    with torch.no_grad():
        layer.sru.gn.weight.uniform_(0.5, 1.5)  # sum(gamma) large: the gate hugs 0.5
    x = torch.randn(8, 64, 32, 32)
    low = x.to(dtype)  # what a previous autocast layer hands over
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = layer(low)
        mask = _keep_mask(layer.sru, low)
    with torch.no_grad():
        reference = _keep_mask(layer.sru, low.float())
        expected = layer(low.float())
    assert out.dtype == dtype
    flips = (mask != reference).float().mean().item()
    assert flips < 1e-4, flips
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=str)
def test_bfloat16_autocast_inference_of_a_converted_network(resnet18, memory_format):
    """channels_last + no_grad + CPU autocast: the grouped 1x1 convs' product may not use mm(out=),
    which autocast leaves in float32 (a fresh-user trial hit 'expected m1 and m2 to have the same
    dtype'), while the original network runs there."""
    model = copy.deepcopy(resnet18).to(memory_format=memory_format)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.to(memory_format=memory_format))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_gn_weights_summing_to_zero_stay_finite(dtype, variant):
    layer = _layer(variant).to(dtype)
    with torch.no_grad():
        layer.sru.gn.weight.copy_(torch.tensor([100.0, -100.0, 3.0, -3.0] * 4))
    assert layer.sru.gn.weight.float().sum().item() == 0.0
    out = layer(_input().to(dtype))
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# channels_last in and out
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_channels_last_in_and_out(variant, grad):
    layer = _layer(variant).to(memory_format=torch.channels_last)
    x = _input()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(grad):
        out = layer(x_cl)
        sru_out = layer.sru(x_cl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert sru_out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channel slice", "channels_last", "stride 2"])
@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_conv_equals_conv2d_with_gradients(layout, groups):
    # CRU's 1x1 convs run as a bmm on NCHW CPU input: same values and gradients as F.conv2d
    from scconv_surgery.layers.cru import pointwise_conv

    g = torch.Generator().manual_seed(0)
    full = torch.randn(3, 12, 5, 6, generator=g, dtype=torch.float64)
    x = {"channel slice": full[:, 2:10], "channels_last": full[:, :8].contiguous(memory_format=torch.channels_last)}.get(
        layout, full[:, :8].contiguous())
    x = x.detach().requires_grad_()
    weight = torch.randn(10, 8 // groups, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    stride = 2 if layout == "stride 2" else 1
    out = pointwise_conv(x, weight, stride, groups)
    expected = F.conv2d(x, weight, None, stride, 0, 1, groups)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(out.sin().sum(), (x, weight)),
                               torch.autograd.grad(expected.sin().sum(), (x, weight)), rtol=0, atol=1e-12)
