
from collections import Counter

import pytest
import timm
import torch
from torch import nn

from conftest import NestedOutputNet
from scconv_surgery import counting
from scconv_surgery.apply import convert
from scconv_surgery.counting import compare_counts, count_model
from scconv_surgery.layers import ScConv, ScConvConfig


def _scconv_conv_macs(c_in: int, c_out: int, out_area: int, in_area: int, k: int = 3, g: int = 2) -> int:
    """Closed form (DESIGN section 2, alpha 1/2, r 2): squeezes at the input resolution,
    GWC / PWC1 / PWC2 at the output resolution (stride policy 'inside')."""
    up, low = c_in // 2, c_in - c_in // 2
    squeeze = (up * (up // 2) + low * (low // 2)) * in_area
    gwc = (up // 2 // g) * c_out * k * k * out_area
    pwc1 = (up // 2) * c_out * out_area
    pwc2 = (low // 2) * (c_out - low // 2) * out_area
    return squeeze + gwc + pwc1 + pwc2


@pytest.mark.parametrize("c_in, c_out, stride, size", [
    (16, 16, 1, 14), (64, 64, 1, 8), (64, 128, 2, 16), (128, 64, 2, 7), (256, 256, 1, 7),
])
def test_scconv_conv_macs_equal_the_closed_form(c_in, c_out, stride, size):
    layer = ScConv(c_in, c_out, stride=stride)
    counts = count_model(layer, (c_in, size, size))
    out = -(-size // stride)
    assert counts.counter == "fvcore"
    assert counts.macs_by_operator["conv"] == _scconv_conv_macs(c_in, c_out, out * out, size * size)


def test_dense_conv_macs_and_params():
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    counts = count_model(conv, (64, 56, 56))
    assert counts.macs == 64 * 64 * 9 * 56 * 56
    assert counts.params == 64 * 64 * 9


def test_resnet50_golden_totals():
    torch.manual_seed(0)
    model = timm.create_model("resnet50")
    converted, _ = convert(model)
    report = compare_counts(model, converted, (3, 224, 224))
    assert (report.before.params, report.after.params) == (25_557_032, 16_530_280)
    assert (report.before.macs, report.after.macs) == (4_111_512_576, 2_672_765_952)
    # per layer one sigmoid for SRU's gate, one for the fuse (a two-way softmax), one lerp
    assert report.after.uncounted_ops["aten::sigmoid"] == 32
    assert report.uncounted_added["aten::lerp"] == 16
    assert "aten::max_pool2d" not in report.uncounted_added  # present before and after
    doc = report.to_dict()
    assert doc["params_delta"] == 16_530_280 - 25_557_032
    assert doc["macs_delta_percent"] == round(100 * (2_672_765_952 - 4_111_512_576) / 4_111_512_576, 3)


def test_shared_parameters_counted_once():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    assert count_model(nn.Sequential(conv, conv), (8, 4, 4)).params == 8 * 8 * 9 + 8


def test_counting_leaves_the_model_as_it_was(tiny_net):
    tiny_net.train()
    tiny_net.proj.eval()
    keys = list(tiny_net.state_dict())
    count_model(tiny_net, (3, 32, 32))
    assert tiny_net.training and tiny_net.block1.training and not tiny_net.proj.training
    assert list(tiny_net.state_dict()) == keys
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_net.modules())


def _break_fvcore(monkeypatch, fails=lambda model: True):
    real = counting._count_fvcore

    def maybe_broken(model, *args):
        if fails(model):
            raise RuntimeError("tracing failed")
        return real(model, *args)
    monkeypatch.setattr(counting, "_count_fvcore", maybe_broken)


def test_fallback_counter_when_fvcore_fails(monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model("resnet18").eval()
    fvcore_counts = count_model(model, (3, 64, 64))
    _break_fvcore(monkeypatch)
    fallback = count_model(model, (3, 64, 64))
    assert fallback.counter == "torch.utils.flop_counter"
    assert "tracing failed" in fallback.note
    assert fallback.params == fvcore_counts.params
    # the same operators counted the same way; fvcore's F.linear is the addmm kernel that ran
    assert fallback.macs == fvcore_counts.macs
    linear = fvcore_counts.macs_by_operator["linear"]
    assert fallback.macs_by_operator == {**{k: v for k, v in fvcore_counts.macs_by_operator.items() if k != "linear"},
                                         "addmm": linear}
    assert set(fallback.macs_by_operator) == {"conv", "batch_norm", "adaptive_avg_pool2d", "addmm"}
    assert fallback.uncounted_ops == fvcore_counts.uncounted_ops == {"aten::max_pool2d": 1, "aten::add_": 8}
    for name in ("layer1.0.conv1", "layer4.1", "fc"):  # per module, from FlopCounterMode's module tracker
        assert fallback.macs_by_module[name] == fvcore_counts.macs_by_module[name] > 0


@pytest.mark.parametrize("variant", ["paper", "seed"])
def test_both_counters_agree_on_a_converted_model(variant, monkeypatch):
    """GroupNorm (SRU) and the elementwise operators are counted alike by both counters."""
    torch.manual_seed(0)
    model, plan = convert(timm.create_model("test_resnet").eval(), config=ScConvConfig(variant=variant))
    fvcore_counts = count_model(model, (3, 32, 32), count_elementwise=True)
    fallback = count_model(model, (3, 32, 32), count_elementwise=True, counter=counting.FALLBACK)
    assert fallback.macs == fvcore_counts.macs
    assert ("group_norm" in fallback.macs_by_operator) == (variant == "paper")
    per_module = {k: v for k, v in fvcore_counts.macs_by_module.items() if v}
    assert {k: v for k, v in fallback.macs_by_module.items() if v} == per_module
    # elementwise: fvcore's jit trace and the fallback both run SCConv's module-by-module forward
    # (fvcore's trace out of place, the fallback under no_grad partly in place): the same operators
    assert fvcore_counts.elementwise_ops == fallback.elementwise_ops > 0
    def out_of_place(counts):
        merged = Counter()
        for op, n in counts.elementwise_by_operator.items():
            merged[op.rstrip("_")] += n
        return merged
    assert out_of_place(fvcore_counts) == out_of_place(fallback)


def test_a_delta_is_never_counted_by_two_counters(tiny_net, monkeypatch):
    converted, plan = convert(tiny_net)
    _break_fvcore(monkeypatch, fails=lambda model: model is converted)  # fvcore fails on the converted model only
    report = compare_counts(tiny_net, converted, (3, 16, 16), replaced=plan.replaced)
    assert report.before.counter == report.after.counter == counting.FALLBACK
    assert "both models counted by torch.utils.flop_counter" in report.before.note
    rows = {layer.name: layer for layer in report.layers}
    assert rows["block1"].macs_before == 16 * 16 * 9 * 16 * 16  # per-layer rows under the fallback, not 0 -> 0
    assert 0 < rows["block1"].macs_after < rows["block1"].macs_before


def test_per_layer_rows_and_elementwise_counts(tiny_net):
    converted, plan = convert(tiny_net)
    report = compare_counts(tiny_net, converted, (3, 16, 16), replaced=plan.replaced, count_elementwise=True)
    rows = {layer.name: layer for layer in report.layers}
    assert list(rows) == ["block1", "block2"]
    assert (rows["block1"].params_before, rows["block1"].macs_before) == (16 * 16 * 9, 16 * 16 * 9 * 16 * 16)
    # block2: 16 -> 32, stride 2 at 16x16: output 8x8
    assert rows["block2"].macs_before == 32 * 16 * 9 * 8 * 8
    assert rows["block2"].macs_after == (_scconv_conv_macs(16, 32, 8 * 8, 16 * 16)
                                         + report.after.macs_by_module["block2.sru"])  # SRU's group norm
    assert rows["block2"].params_after == plan.replaced[1].params_after
    # elementwise ops never enter MACs, so MACs equal those counted without them
    plain = compare_counts(tiny_net, converted, (3, 16, 16))
    assert report.after.macs == plain.after.macs and plain.after.elementwise_ops == 0
    # SRU gates: one sigmoid per input element (block1 16x16x16, block2 16x16x16); the fuse weights:
    # one per output channel (block1 16, block2 32)
    ops = report.after.elementwise_by_operator
    assert ops["sigmoid"] == 16 * 16 * 16 + 16 * 16 * 16 + 16 + 32
    assert report.after.elementwise_ops > report.before.elementwise_ops


def test_report_to_dict_has_layers_and_units(tiny_net):
    converted, plan = convert(tiny_net)
    doc = compare_counts(tiny_net, converted, (3, 16, 16), replaced=plan.replaced).to_dict()
    assert doc["unit"].startswith("MACs")
    assert [row["name"] for row in doc["layers"]] == ["block1", "block2"]
    assert doc["input_size"] == [3, 16, 16]


@pytest.mark.parametrize("kind", ["list", "tuple", "namedtuple", "dict"])
@pytest.mark.parametrize("force_fallback", [False, True], ids=["fvcore", "fallback"])
def test_models_with_nested_outputs_are_counted(kind, force_fallback, monkeypatch):
    """Counting does not depend on the output's structure (lists, tuples, namedtuples, dicts)."""
    if force_fallback:
        _break_fvcore(monkeypatch)
    counts = count_model(NestedOutputNet(kind).eval(), (3, 8, 8))
    conv = (3 * 16 * 9 + 16 * 16 * 9) * 8 * 8  # stem and body: C_in * C_out * k^2 per output pixel
    assert counts.macs == conv + 2 * 16 * 5  # and the two 16 -> 5 linear heads
    assert counts.counter == (counting.FALLBACK if force_fallback else counting.FVCORE)
