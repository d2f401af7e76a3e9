"""Counting parameters and multiply-adds (MACs) before and after a conversion.

MACs come from fvcore's ``FlopCountAnalysis`` (fvcore/nn/flop_count.py), which counts one
fused multiply-add as one "flop"; we call these numbers MACs, as timm's benchmark and the
SCConv paper's tables do. fvcore traces the model with ``torch.jit``, which PyTorch has
deprecated; where tracing fails we fall back to ``torch.utils.flop_counter.FlopCounterMode``
(:mod:`scconv_surgery._fallback_counter`: made to count fvcore's operators with fvcore's
formulas, per module), and say which counter produced the numbers. :func:`compare_counts`
counts both models with the same counter, so a delta never mixes the two.

Parameters come from ``model.parameters()`` (a shared tensor counted once), not the
state_dict. Counting runs in eval mode and leaves the model as it found it.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ._fallback_counter import count_fallback
from ._probe import eval_mode, example_input
from .errors import ModelForwardError

__all__ = ["Counts", "CountReport", "LayerCount", "count_model", "compare_counts", "ELEMENTWISE_OPS"]

FVCORE = "fvcore"
FALLBACK = "torch.utils.flop_counter"

# Elementwise operators SCConv adds, counted with --count-elementwise as one op per element:
# of the output for maps, of the input for reductions and pooling (fvcore's
# ``elementwise_flop_counter``). Reported apart from MACs. fvcore traces with torch.jit, under
# which SCConv runs its module-by-module forward (the paper's equations, torch.where gate).
ELEMENTWISE_OPS: dict[str, tuple[float, float]] = {  # op: (input_scale, output_scale)
    **{f"aten::{op}": (0, 1) for op in ("sigmoid", "sigmoid_", "mul", "mul_", "add", "add_", "sub", "div", "where",
                                          "softmax", "abs", "clamp_min", "clamp_max", "lerp", "masked_fill", "gt",
                                          "ge", "lt", "roll", "threshold", "addcmul", "addcmul_", "lerp_", "sub_", "div_",
                                          "rsub", "ceil", "ceil_")},
    **{f"aten::{op}": (1, 0) for op in ("mean", "sum", "avg_pool2d")},
}
_ELEMENTWISE_NAMES = frozenset(op.split("::")[1] for op in ELEMENTWISE_OPS)


@dataclass(frozen=True)
class Counts:
    """Parameters and MACs of one model at one input size.

    Attributes:
        params: parameter count (shared tensors once).
        macs: multiply-adds for one forward of a batch of 1 (fvcore's "flops").
        macs_by_operator: MACs per counted operator, e.g. ``{"conv": ..., "linear": ...}``.
        macs_by_module: MACs per module name ("" for the whole model), from either counter.
        uncounted_ops: operators the counter met but does not count, with call counts.
        counter: ``"fvcore"`` or ``"torch.utils.flop_counter"`` (the fallback).
        note: why the fallback was used, else empty.
        elementwise_ops: with ``count_elementwise``, the elementwise operations of
            :data:`ELEMENTWISE_OPS` (one per element; not included in ``macs``), else 0.
        elementwise_by_operator: the same per operator.
        first_conv_input: shape of the input the first convolution received, batch included,
            e.g. ``(1, 3, 800, 800)`` for a detector given 224x224 that resizes its input
            first; None if no convolution ran.
    """

    params: int
    macs: int
    macs_by_operator: Mapping[str, int] = field(default_factory=dict)
    macs_by_module: Mapping[str, int] = field(default_factory=dict)
    uncounted_ops: Mapping[str, int] = field(default_factory=dict)
    counter: str = FVCORE
    note: str = ""
    elementwise_ops: int = 0
    elementwise_by_operator: Mapping[str, int] = field(default_factory=dict)
    first_conv_input: tuple[int, ...] | None = None

    def to_dict(self, *, by_module: bool = False) -> dict[str, Any]:
        d = {"params": self.params, "macs": self.macs, "macs_by_operator": dict(self.macs_by_operator),
             "uncounted_ops": dict(self.uncounted_ops), "counter": self.counter, "note": self.note,
             "elementwise_ops": self.elementwise_ops,
             "elementwise_by_operator": dict(self.elementwise_by_operator),
             "first_conv_input": list(self.first_conv_input) if self.first_conv_input else None}
        if by_module:
            d["macs_by_module"] = dict(self.macs_by_module)
        return d


def percent_change(before: int, after: int) -> float:
    """``100 * (after - before) / before``: the change in percent (0.0 when ``before`` is 0)."""
    return 100.0 * (after - before) / before if before else 0.0


@dataclass(frozen=True)
class LayerCount:
    """One replaced conv: parameters and MACs before and after (MACs at the report's input size).

    Attributes:
        name: the module name.
        params_before, params_after: parameter counts of the conv and of its replacement.
        macs_before, macs_after: MACs of the module (the counter's per-module count; 0 if the
            model's forward does not call it).
    """

    name: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after}


@dataclass(frozen=True)
class CountReport:
    """Counts before and after a conversion, at one input size.

    Attributes:
        input_size: ``(C, H, W)`` of the counting input (batch 1).
        before: counts of the original model.
        after: counts of the converted model.
        layers: one row per replaced conv, in plan order.
    """

    input_size: tuple[int, int, int]
    before: Counts
    after: Counts
    layers: tuple[LayerCount, ...] = ()

    @property
    def params_delta(self) -> int:
        return self.after.params - self.before.params

    @property
    def macs_delta(self) -> int:
        return self.after.macs - self.before.macs

    @property
    def resized_input(self) -> tuple[int, ...] | None:
        """The ``(C, H, W)`` the model's first convolution saw, where the model resized its input
        (a detector's transform); None where it saw ``input_size`` itself. The MACs are those at
        this size."""
        first = self.before.first_conv_input
        return tuple(first[1:]) if first and tuple(first[-2:]) != tuple(self.input_size[-2:]) else None

    @property
    def uncounted_added(self) -> dict[str, int]:
        """Uncounted operators the conversion added: after minus before, positive counts."""
        return dict(Counter(self.after.uncounted_ops) - Counter(self.before.uncounted_ops))

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "resized_input": list(self.resized_input) if self.resized_input else None,
            "unit": "MACs (fvcore counts one fused multiply-add as one flop)",
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "params_delta": self.params_delta,
            "params_delta_percent": round(percent_change(self.before.params, self.after.params), 3),
            "macs_delta": self.macs_delta,
            "macs_delta_percent": round(percent_change(self.before.macs, self.after.macs), 3),
            "uncounted_added": self.uncounted_added,
            "elementwise_ops_delta": self.after.elementwise_ops - self.before.elementwise_ops,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _count_fvcore(model: nn.Module, x: torch.Tensor, count_elementwise: bool
                  ) -> tuple[dict[str, Counter], dict[str, int]]:
    """fvcore's counts per module and operator, and the operators it did not count."""
    with warnings.catch_warnings():  # torch.jit's deprecation notice, once per trace
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
        from fvcore.nn.jit_handles import elementwise_flop_counter

        logging.getLogger("fvcore").setLevel(logging.ERROR)
        analysis = (FlopCountAnalysis(model, x).unsupported_ops_warnings(False)
                    .uncalled_modules_warnings(False).tracer_warnings("none"))
        if count_elementwise:
            analysis.set_op_handle(**{op: elementwise_flop_counter(i, o) for op, (i, o) in ELEMENTWISE_OPS.items()})
        by_module = analysis.by_module_and_operator()
        uncounted = {k: int(v) for k, v in analysis.unsupported_ops().items()}
    return by_module, uncounted


@contextlib.contextmanager
def _first_conv_input(model: nn.Module) -> Iterator[list[tuple[int, ...]]]:
    """The input shape of the first convolution the model runs (hooks removed afterwards)."""
    seen: list[tuple[int, ...]] = []

    def record(module: nn.Module, args: tuple) -> None:
        if not seen and args and isinstance(args[0], torch.Tensor):
            seen.append(tuple(int(d) for d in args[0].shape))  # ints: under the jit trace, dims are tensors

    handles = [m.register_forward_pre_hook(record) for m in model.modules()
               if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def count_model(model: nn.Module, input_size: tuple[int, int, int], *,
                count_elementwise: bool = False, counter: str | None = None) -> Counts:
    """Count parameters and MACs of ``model`` for one input of shape ``(1, *input_size)``.

    Runs in eval mode under ``torch.no_grad`` on the model's device and dtype, and restores
    every submodule's train/eval mode afterwards; adds no hooks, buffers or parameters.

    Args:
        model: any ``nn.Module`` taking one image tensor.
        input_size: ``(C, H, W)``.
        count_elementwise: also count the elementwise operators of :data:`ELEMENTWISE_OPS`
            (reported as ``elementwise_ops``, never added to ``macs``).
        counter: ``"fvcore"``, ``"torch.utils.flop_counter"`` (:data:`FALLBACK`), or None:
            fvcore, and the fallback where fvcore's trace fails.

    Returns:
        :class:`Counts`; ``counter`` says whether fvcore or the fallback produced them.

    Raises:
        ModelForwardError: the model's forward fails on the input (not a counting problem).
        ValueError: an unknown ``counter``.
    """
    if counter not in (None, FVCORE, FALLBACK):
        raise ValueError(f"counter must be {FVCORE!r}, {FALLBACK!r} or None, got {counter!r}")
    x = example_input(model, (1, *input_size))
    params = sum(p.numel() for p in model.parameters())
    used, note = counter or FVCORE, ""
    elementwise_ops = {**ELEMENTWISE_OPS} if count_elementwise else {}
    with eval_mode(model), torch.no_grad(), _first_conv_input(model) as first_conv_input:
        if used == FVCORE:
            try:
                by_module, uncounted = _count_fvcore(model, x, count_elementwise)
            except Exception as err:  # fvcore's jit trace: deprecated, may fail; never fail the run
                if counter == FVCORE:
                    raise
                used, note = FALLBACK, f"fvcore failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        if used == FALLBACK:
            try:
                by_module, uncounted = count_fallback(model, x, elementwise_ops)
            except Exception as forward_err:  # the model itself cannot run on this input
                raise ModelForwardError(type(model).__name__, tuple(x.shape),
                                        f"{type(forward_err).__name__}: {forward_err}") from forward_err
    total = by_module.get("", Counter())
    macs_by_operator = {op: int(n) for op, n in total.items() if op not in _ELEMENTWISE_NAMES}
    elementwise = {op: int(n) for op, n in total.items() if op in _ELEMENTWISE_NAMES}
    macs_by_module = {name: int(sum(n for op, n in ops.items() if op not in _ELEMENTWISE_NAMES))
                      for name, ops in by_module.items()}
    return Counts(params, sum(macs_by_operator.values()), macs_by_operator, macs_by_module, uncounted, used,
                  note, sum(elementwise.values()), elementwise, first_conv_input[0] if first_conv_input else None)


def compare_counts(before: nn.Module, after: nn.Module, input_size: tuple[int, int, int], *,
                   replaced: Sequence[Any] = (), count_elementwise: bool = False) -> CountReport:
    """Count two models on the same input size, with the same counter (see :func:`count_model`).

    fvcore counts both unless its trace fails on either; then both are counted by the fallback.

    Args:
        before, after: the original and the converted model.
        input_size: ``(C, H, W)``.
        replaced: the plan's replaced :class:`~scconv_surgery.plan.Decision` values, for the
            per-layer rows.
        count_elementwise: see :func:`count_model`.
    """
    counts_before = count_model(before, input_size, count_elementwise=count_elementwise)
    counts_after = count_model(after, input_size, count_elementwise=count_elementwise)
    if counts_before.counter != counts_after.counter:  # one model failed fvcore's trace: count both the same way
        failed = counts_before if counts_before.counter == FALLBACK else counts_after
        recounted = count_model(after if failed is counts_before else before, input_size,
                                count_elementwise=count_elementwise, counter=FALLBACK)
        recounted = replace(recounted, note=f"{failed.note} on the other model; both models counted by {FALLBACK}, "
                            "so that the delta compares like with like")
        counts_before, counts_after = (failed, recounted) if failed is counts_before else (recounted, failed)
    layers = tuple(LayerCount(d.name, d.params_before, d.params_after, counts_before.macs_by_module.get(d.name, 0),
                              counts_after.macs_by_module.get(d.name, 0)) for d in replaced)
    return CountReport(tuple(input_size), counts_before, counts_after, layers)
