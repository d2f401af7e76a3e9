"""The lean inference graph (scconv_surgery/layers/_deploy.py): after optimize_for_inference,
an exported converted network has at most 20 standard-operator nodes per SCConv layer (ONNX
opset 21, torch's default exporter), onnxruntime agrees with PyTorch within 1e-4, and
torch.export records the same lean graph."""
from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

from scconv_surgery import ScConv, convert, optimize_for_inference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()).eval()


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module]:
    base = _base()
    converted = convert(base)[0].eval()
    layers = [m for m in converted.modules() if isinstance(m, ScConv)]
    assert [m.stride for m in layers] == [2, 1]  # a strided and a plain layer
    with torch.no_grad():  # gamma of both signs, so both gate branches run
        for layer in layers:
            layer.sru.gn.weight.uniform_(-1.0, 2.0)
            layer.sru.gn.bias.normal_(0.0, 0.1)
    optimize_for_inference(converted, merge="always", kernels=False)
    return base, converted


def _onnx_nodes(model: nn.Module, x: torch.Tensor, opset: int, path) -> list[str]:
    torch.onnx.export(model, (x,), dynamo=True, opset_version=opset).save(str(path))
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize("opset,limit", [(21, 20), (20, 24)])
def test_onnx_nodes_per_scconv_and_onnxruntime(models, opset, limit, tmp_path):
    base, converted = models
    x = _input()
    before = _onnx_nodes(base, x, opset, tmp_path / "base.onnx")
    after = _onnx_nodes(converted, x, opset, tmp_path / "converted.onnx")
    replaced = 2
    per_layer = (len(after) - len(before) + replaced) / replaced  # each SCConv replaces one Conv node
    assert per_layer <= limit, collections.Counter(after)
    assert not {"Constant", "ConstantOfShape", "Cast", "Slice"} & set(after), collections.Counter(after)
    session = ort.InferenceSession(str(tmp_path / "converted.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), converted(x), atol=1e-4, rtol=1e-4)


def test_torch_export_records_the_lean_graph(models):
    _, converted = models
    x = _input()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(converted, (x,), dynamic_shapes={"input": {0: batch}})
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    names = collections.Counter(str(n.target).split(".")[1] if "." in str(n.target) else str(n.target) for n in calls)
    assert not {"block_diag", "_to_copy", "roll", "lerp", "softmax"} & set(names), names
    x5 = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x5), converted(x5), atol=1e-5, rtol=1e-5)


def test_lean_graph_equals_reference_for_each_layer():
    # the module-by-module statement of the equations (hooks force it) against the export path
    torch.manual_seed(0)
    for layer in (ScConv(16, 32, stride=2), ScConv(33, 32), ScConv(64, 96, kernel_size=5)):
        layer.eval()
        with torch.no_grad():
            layer.sru.gn.weight.uniform_(-1.0, 2.0)
        optimize_for_inference(layer, merge="always", kernels=False)
        x = torch.randn(2, layer.in_channels, 9, 9)
        with torch.no_grad():
            lean = torch.jit.trace(layer, x, check_trace=False)(x)  # tracing: the lean graph
            handle = layer.sru.gn.register_forward_hook(lambda *args: None)
            handles = [handle] + [m.register_forward_hook(lambda *args: None) for m in layer.cru.children()]
            reference = layer(x)
            for h in handles:
                h.remove()
        torch.testing.assert_close(lean, reference, atol=1e-5, rtol=1e-5)


def test_instance_norm_export_for_large_inputs(tmp_path):
    # GroupNorm exported as InstanceNormalization + BatchNormalization (3 more nodes, faster in
    # onnxruntime) where optimize_for_inference saw a large input; same values within 1e-4
    from scconv_surgery import inference

    torch.manual_seed(0)
    layer = ScConv(16).eval()
    with torch.no_grad():
        layer.sru.gn.weight.uniform_(-1.0, 2.0)
        layer.sru.gn.bias.normal_(0.0, 0.1)
    x = torch.randn(2, 16, 12, 12)
    optimize_for_inference(layer, (16, 12, 12), batch_size=2, kernels=False)
    plain = _onnx_nodes(layer, x, 21, tmp_path / "plain.onnx")
    assert not layer.sru.instance_norm_export and "GroupNormalization" in plain  # 2,304 elements per sample
    old = inference.INSTANCE_NORM_EXPORT_MIN_ELEMENTS
    inference.INSTANCE_NORM_EXPORT_MIN_ELEMENTS = 16 * 12 * 12
    try:
        optimize_for_inference(layer, (16, 12, 12), batch_size=2, kernels=False)
    finally:
        inference.INSTANCE_NORM_EXPORT_MIN_ELEMENTS = old
    assert layer.sru.instance_norm_export
    nodes = _onnx_nodes(layer, x, 21, tmp_path / "instance.onnx")
    assert len(nodes) == len(plain) + 3 and "GroupNormalization" not in nodes, collections.Counter(nodes)
    assert {"InstanceNormalization", "BatchNormalization"} <= set(nodes)
    assert not {"Constant", "ConstantOfShape", "Cast", "Slice"} & set(nodes), collections.Counter(nodes)
    session = ort.InferenceSession(str(tmp_path / "instance.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), layer(x), atol=1e-4, rtol=1e-4)
        lean = torch.jit.trace(layer, x, check_trace=False)(x)
        torch.testing.assert_close(lean, layer(x), atol=1e-5, rtol=1e-5)
    optimize_for_inference(layer, enabled=False)
    assert not layer.sru.instance_norm_export
    strided = ScConv(16, 32, stride=2).eval()  # 22 nodes there: not at stride 2
    inference.INSTANCE_NORM_EXPORT_MIN_ELEMENTS = 1
    try:
        optimize_for_inference(strided, (16, 12, 12), batch_size=2, kernels=False)
    finally:
        inference.INSTANCE_NORM_EXPORT_MIN_ELEMENTS = old
    assert not strided.sru.instance_norm_export
