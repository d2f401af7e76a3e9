"""The fused C++ CPU kernels (scconv_surgery/layers/_kernels.py, csrc/scconv_cpu.cpp) against the
reference statement of the equations, and the fallback when they cannot be built.

This module builds the kernels (about a minute the first time on a machine, cached after); the
other test modules pass ``kernels=False`` to ``optimize_for_inference``.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from scconv_surgery import ScConv, ScConvConfig, optimize_for_inference
from scconv_surgery.layers import _kernels
from scconv_surgery.layers._fused import fuse
from scconv_surgery.layers.reference import sru_paper


@pytest.fixture(scope="module")
def ops():
    built = _kernels.load()
    if built is None:  # a machine without a compiler: the fallback tests below still run
        pytest.skip(f"kernels not built: {_kernels.error()}")
    return built


def _close_except_flips(out: torch.Tensor, expected: torch.Tensor, near_threshold: torch.Tensor) -> int:
    """Within 1e-5 relative (1e-6 absolute for values near 0) except where the reference gate lies
    within float rounding of the threshold; returns how many elements differ there."""
    bad = (out - expected).abs() > 1e-5 * expected.abs() + 1e-6
    assert not (bad & ~near_threshold).any(), float((out - expected).abs()[bad & ~near_threshold].max())
    return int((bad & near_threshold).sum())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels,groups", [(64, 16), (33, 11), (16, 4)], ids=["C64", "odd-C33", "C16"])
def test_sru_kernel_matches_reference(ops, channels, groups, layout):
    torch.manual_seed(0)
    x = torch.randn(4, channels, 29, 31) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.rand(channels) * 3 - 1, torch.randn(channels) * 0.1
    normalized = F.group_norm(x, groups, gamma, beta, 1e-5)
    expected = sru_paper(x, normalized, gamma, 0.5)
    w = gamma / gamma.sum()
    gate = torch.sigmoid(normalized * w.reshape(1, -1, 1, 1))
    near = ((gate - 0.5).abs() <= 2e-7)
    near = near | near.roll(channels // 2, 1)  # a flip shows in its own and its partner's output channel
    out = ops.sru(x, gamma * w, beta * w, groups, 1e-5, 0.5)
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                             torch.contiguous_format)
    flips = _close_except_flips(out, expected, near)
    assert flips <= 1e-4 * x.numel()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fuse_kernel_matches_reference(ops, layout):
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y1 = torch.randn(3, 24, 7, 9).contiguous(memory_format=fmt)
    squeezed = torch.randn(3, 12, 7, 9).contiguous(memory_format=fmt)
    pwc2, reused = torch.randn(3, 18, 7, 9).contiguous(memory_format=fmt), squeezed[:, 6:]  # a channel slice
    expected = fuse(y1.clone(), pwc2, reused)
    ops.fuse_(y1, pwc2, reused)
    torch.testing.assert_close(y1, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("cin,cout,stride,extra", [(16, 32, 2, {}), (33, 32, 1, {}), (64, 64, 1, {"gwc_groups": 4}),
                                                   (16, 32, 2, {"stride_policy": "pool"})],
                         ids=["16-to-32-s2", "odd-33", "g4", "pool-s2"])
def test_layer_with_kernels_matches_reference(ops, cin, cout, stride, extra, layout):
    torch.manual_seed(0)
    layer = ScConv(cin, cout, stride=stride, config=ScConvConfig(**extra)).eval()
    with torch.no_grad():
        layer.sru.gn.weight.uniform_(-1.0, 2.0)
        layer.sru.gn.bias.normal_(0.0, 0.1)
    x = torch.randn(2, cin, 12, 13)
    if layout == "channels_last":
        layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    handles = [m.register_forward_hook(lambda *args: None) for m in (layer.sru.gn, *layer.cru.children())]
    with torch.no_grad():
        expected = layer(x)  # hooks: the reference, module by module
    for h in handles:
        h.remove()
    optimize_for_inference(layer, merge="always")
    assert layer.sru.use_kernels and layer.cru.use_kernels
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    x.requires_grad_()
    layer(x).sum().backward()  # autograd: the PyTorch forward
    assert x.grad is not None


def test_compile_sees_one_node_per_kernel(ops):
    torch.manual_seed(0)
    layer = ScConv(16).eval()
    optimize_for_inference(layer, merge="always")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = layer(x)
        out = torch.compile(layer, backend=backend, fullgraph=True)(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    # the fuse: scconv.cru_fuse_ at stride 1 (PWC1, PWC2 and the fuse), scconv.fuse_ at stride > 1
    assert sum("scconv.sru" in t for t in targets) == 1, targets
    assert sum("scconv.fuse_" in t or "scconv.cru_fuse_" in t for t in targets) == 1, targets


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    torch.manual_seed(0)
    layer = ScConv(16).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = layer(x)
    saved = dict(_kernels._state)
    _kernels._reset_for_tests()

    def broken(verbose):
        raise RuntimeError("Error building extension 'scconv_cpu': g++: fatal error: killed")

    monkeypatch.setattr(_kernels, "_build", broken)
    try:
        with pytest.warns(_kernels.KernelBuildWarning, match="g\\+\\+: fatal error: killed") as record:
            optimize_for_inference(layer, merge="always")
            optimize_for_inference(layer, merge="always")  # tried once per process: no second warning
        assert len(record) == 1
        assert _kernels.loaded() is None and not layer.sru.use_kernels
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with torch.no_grad():
                torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    finally:
        _kernels._state.update(saved)


def test_no_compiler_is_named(monkeypatch):
    saved = dict(_kernels._state)
    _kernels._reset_for_tests()
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    try:
        with pytest.warns(_kernels.KernelBuildWarning, match="no C\\+\\+ compiler found"):
            assert _kernels.load() is None
    finally:
        _kernels._state.update(saved)


@pytest.mark.parametrize("kernels", [False, True], ids=["pytorch", "kernels"])
@pytest.mark.parametrize("merge", ["never", "always"])
def test_y1_on_channels_last_copy_keeps_values(ops, kernels, merge):
    # optimize_for_inference may run eq. 5 on a channels_last copy for NCHW input (timed choice)
    torch.manual_seed(0)
    layer = ScConv(16, 32, stride=2).eval()
    x = torch.randn(2, 16, 12, 13)
    with torch.no_grad():
        expected = layer(x)
    optimize_for_inference(layer, merge=merge, kernels=kernels)
    layer.cru.y1_channels_last = True
    with torch.no_grad():
        out = layer(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def sru_squeeze_inputs(channels, size, layout, squeeze_groups):
    """Seeded ``(x, gamma, beta, w, weight)``: a batch of 3, the GroupNorm affine and its
    normalised weights (eq. 2), and the squeezes' 1x1 weight (two groups: C/2 rows; one: 24)."""
    torch.manual_seed(0)
    x = torch.randn(3, channels, *size) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.rand(channels) * 3 - 1, torch.randn(channels) * 0.1
    weight = torch.randn(channels // 2 if squeeze_groups == 2 else 24, channels // squeeze_groups, 1, 1)
    return x, gamma, beta, gamma / gamma.sum(), weight


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels,groups,squeeze_groups", [(64, 16, 2), (33, 11, 1), (16, 4, 2)],
                         ids=["C64-grouped", "odd-C33-dense", "C16-grouped"])
def test_sru_squeeze_kernel_matches_reference(ops, channels, groups, squeeze_groups, layout):
    # SRU then both squeezes, without writing SRU's output
    x, gamma, beta, w, weight = sru_squeeze_inputs(channels, (11, 13), layout, squeeze_groups)
    with torch.no_grad():
        expected = F.conv2d(ops.sru(x, gamma * w, beta * w, groups, 1e-5, 0.5), weight, groups=squeeze_groups)
        out = ops.sru_squeeze(x, gamma * w, beta * w, groups, 1e-5, 0.5, weight, squeeze_groups)
    assert out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                             torch.contiguous_format)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_scconv_runs_sru_and_squeeze_as_one_kernel(ops):
    torch.manual_seed(0)
    layer = ScConv(32).eval()
    optimize_for_inference(layer, merge="always")
    layer.fuse_sru_squeeze = True  # what the timing of merge="auto" may choose
    x = torch.randn(2, 32, 10, 10)
    seen = []
    from torch.utils._python_dispatch import TorchDispatchMode

    with torch.no_grad():
        class Recorder(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.append(str(func))
                return func(*args, **(kwargs or {}))

        with Recorder():
            out = layer(x)
    assert any("sru_squeeze" in s for s in seen) and not any(s.startswith("scconv.sru.") for s in seen), seen
    handle = layer.sru.register_forward_hook(lambda *args: None)  # a hook on SRU: SRU runs (and fires) alone
    with torch.no_grad():
        torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-5)
    handle.remove()


@pytest.mark.parametrize("split_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels,groups,squeeze_groups,split", [(64, 16, 2, 16), (33, 11, 1, 10), (512, 16, 2, 128)],
                         ids=["C64-grouped", "odd-C33-dense", "C512-grouped"])
def test_sru_squeeze_split_kernel_matches_reference(ops, channels, groups, squeeze_groups, split, layout, split_layout):
    # the squeezed parts as two tensors, each in the memory format asked for
    x, gamma, beta, w, weight = sru_squeeze_inputs(channels, (9, 7), layout, squeeze_groups)
    with torch.no_grad():  # the product in float64: over C / groups = 256 inputs float32's own rounding is ~1e-5
        expected = F.conv2d(ops.sru(x, gamma * w, beta * w, groups, 1e-5, 0.5).double(), weight.double(),
                            groups=squeeze_groups).float()
        first, second = ops.sru_squeeze_split(x, gamma * w, beta * w, groups, 1e-5, 0.5, weight, squeeze_groups, split,
                                              split_layout == "channels_last")
    fmt = torch.channels_last if split_layout == "channels_last" else torch.contiguous_format
    assert first.is_contiguous(memory_format=fmt) and second.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(torch.cat((first, second), 1), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("parts_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels,up,low,size", [(24, 6, 6, (7, 9)), (37, 5, 7, (3, 4)), (64, 16, 16, (30, 31))],
                         ids=["C24", "odd-C37", "C64-tiles"])
def test_cru_fuse_kernel_matches_reference(ops, channels, up, low, size, layout, parts_layout):
    # PWC1, PWC2 (with identity rows) and the fuse after GWC, in place in GWC's output
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y1 = torch.randn(3, channels, *size).contiguous(memory_format=fmt)
    squeezed = torch.randn(3, up + low, *size)
    squeezed = squeezed.contiguous(memory_format=torch.channels_last if parts_layout == "channels_last" else
                                   torch.contiguous_format)
    up_part, low_part = squeezed[:, :up], squeezed[:, up:]  # channel slices
    w1 = torch.randn(channels, up, 1, 1)
    w2 = torch.cat((torch.randn(channels - low, low, 1, 1), torch.eye(low).reshape(low, low, 1, 1)))
    y2 = F.conv2d(low_part, w2)
    expected = fuse(y1 + F.conv2d(up_part, w1), y2[:, :channels - low], y2[:, channels - low:])
    ops.cru_fuse_(y1, up_part, low_part, w1, w2)
    torch.testing.assert_close(y1, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_layer_with_new_kernels_matches_reference(ops, layout):
    # the whole layer (SRU + squeezes, GWC, cru_fuse_) against the module-by-module reference at a
    # ResNet-like shape, within 1e-5
    torch.manual_seed(0)
    layer = ScConv(64).eval()
    with torch.no_grad():
        layer.sru.gn.weight.uniform_(-1.0, 2.0)
    x = torch.randn(2, 64, 20, 20)
    if layout == "channels_last":
        layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    handles = [m.register_forward_hook(lambda *args: None) for m in (layer.sru.gn, *layer.cru.children())]
    with torch.no_grad():
        expected = layer(x)
    for h in handles:
        h.remove()
    optimize_for_inference(layer, (64, 20, 20), batch_size=2)
    layer.fuse_sru_squeeze = True
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
