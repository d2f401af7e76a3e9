"""The fallback counter: ``torch.utils.flop_counter.FlopCounterMode`` made to count what fvcore counts.

fvcore traces with ``torch.jit``, which fails on some models; then :func:`count_fallback` runs the
model under ``FlopCounterMode`` instead. Used as it comes, that counter disagrees with fvcore:
it counts attention kernels that fvcore does not, misses the norms, pooling and upsampling that
fvcore counts, and names operators by their dispatch packets. Here it counts exactly fvcore's
operator set (fvcore: ``_DEFAULT_SUPPORTED_OPS`` in fvcore/nn/flop_count.py) with fvcore's
formulas, as those operators appear after PyTorch's decompositions, and gives per-module counts
from its module tracker, the operators it did not count, and the elementwise operations of
``--count-elementwise``, so a report reads the same under either counter.

Where the two still differ: a matrix product is named by the kernel that ran (``addmm``, ``mm``,
``bmm``, ``baddbmm``) where fvcore says ``linear``, ``matmul`` or ``einsum`` (the MACs agree), and
uncounted operators carry their dispatch names (``aten::max_pool2d_with_indices``).
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_fallback"]


def _numel(shape: Any) -> int:
    return math.prod(shape) if shape is not None else 0


def _first(out_shape: Any) -> Any:
    """The first output's shape (a multi-output op gives a tuple of shapes)."""
    nested = isinstance(out_shape, (tuple, list)) and out_shape and isinstance(out_shape[0], (tuple, list))
    return out_shape[0] if nested else out_shape


def _norm(weight_index: int) -> Callable:
    """fvcore's norm_flop_counter (group, layer, instance norm; batch norm in training), in FLOPs
    (2 per MAC): 5 per element with an affine, else 4."""
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        affine = len(args) > weight_index and args[weight_index] is not None
        return 2 * _numel(args[0]) * (5 if affine else 4)
    return formula


def _batch_norm(training_index: int | None) -> Callable:
    """fvcore's batchnorm_flop_jit: as a norm in training, else 2 per element with an affine, 1 without."""
    norm = _norm(1)

    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        if training_index is not None and len(args) > training_index and args[training_index]:
            return norm(*args)
        return 2 * _numel(args[0]) * (2 if args[1] is not None else 1)
    return formula


def _elementwise(input_scale: int, output_scale: int) -> Callable:
    """fvcore's elementwise_flop_counter, in FLOPs."""
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * (input_scale * _numel(args[0]) + output_scale * _numel(_first(out_shape)))
    return formula


def _is_adaptive_pool_mean(args: Any, kwargs: Any) -> bool:
    """``adaptive_avg_pool2d`` to 1x1 runs as ``mean(dim=[-1, -2], keepdim=True)`` (PyTorch's
    decomposition); other means are not pools, and fvcore leaves them uncounted."""
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return list(dims or ()) == [-1, -2] and bool(keepdim)


def _mean(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * _numel(args[0]) if _is_adaptive_pool_mean(args, kwargs) else 0


def _formulas() -> dict[Any, tuple[str, Callable | None]]:
    """Dispatch packet -> (fvcore's operator name, formula; None: FlopCounterMode's own)."""
    aten = torch.ops.aten
    table: dict[Any, tuple[str, Callable | None]] = {
        aten.native_batch_norm: ("batch_norm", _batch_norm(training_index=5)),
        aten._native_batch_norm_legit: ("batch_norm", _batch_norm(training_index=5)),
        aten._native_batch_norm_legit_no_training: ("batch_norm", _batch_norm(training_index=None)),
        aten.cudnn_batch_norm: ("batch_norm", _batch_norm(training_index=5)),
        aten.miopen_batch_norm: ("batch_norm", _batch_norm(training_index=5)),
        aten.native_group_norm: ("group_norm", _norm(1)),
        aten.native_layer_norm: ("layer_norm", _norm(2)),
        aten.upsample_nearest2d: ("upsample_nearest2d", _elementwise(0, 1)),
        aten.upsample_bilinear2d: ("upsample_bilinear2d", _elementwise(0, 4)),
        aten._adaptive_avg_pool2d: ("adaptive_avg_pool2d", _elementwise(1, 0)),
        aten.adaptive_avg_pool2d: ("adaptive_avg_pool2d", _elementwise(1, 0)),
        aten.mean: ("adaptive_avg_pool2d", _mean),
        aten.grid_sampler_2d: ("grid_sampler", _elementwise(0, 4)),
        aten.cudnn_grid_sampler: ("grid_sampler", _elementwise(0, 4)),
    }
    for packet in (aten.convolution, aten._convolution, aten.cudnn_convolution, aten.convolution_overrideable,
                   aten._slow_conv2d_forward):
        table[packet] = ("conv", None)
    for packet in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm):
        table[packet] = (packet.__name__.split(".")[-1], None)
    return table


# Operators that move or allocate memory and compute nothing: left out of the uncounted list, as
# fvcore leaves out its _IGNORED_OPS (fvcore/nn/jit_analysis.py), plus dispatch-level bookkeeping.
_FREE_OPS = frozenset({
    "cat", "chunk", "clone", "constant_pad_nd", "contiguous", "copy_", "detach", "empty", "empty_like",
    "empty_strided", "expand", "flatten", "full", "full_like", "lift_fresh", "new_empty", "new_full", "new_zeros",
    "ones", "ones_like", "promote_types", "reshape", "roll", "select", "slice", "split", "split_with_sizes",
    "squeeze", "stack", "unbind", "unsqueeze", "view", "zeros", "zeros_like", "_to_copy", "_unsafe_view", "t",
    "transpose", "permute", "alias", "as_strided", "narrow", "relu", "relu_", "dropout", "native_dropout",
    "size", "sym_size", "_local_scalar_dense", "repeat", "as_strided_", "resize_", "set_",
})
_RENAMED = {"_softmax": "softmax", "max_pool2d_with_indices": "max_pool2d"}  # to fvcore's names


class _OperatorLog(TorchDispatchMode):
    """Every operator a forward dispatches: its name, the sizes of its first input and output,
    and whether it computes (not a view, not a counted operator, not memory bookkeeping)."""

    def __init__(self, counted: frozenset[str]) -> None:
        super().__init__()
        self.counted = counted
        self.calls: list[tuple[str, int, int, bool]] = []  # (name, input numel, output numel, counted in MACs)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):
            return out
        name = func._overloadpacket.__name__
        first_in = next((a for a in args if isinstance(a, torch.Tensor)), None)
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        first_out = next((o for o in outputs if isinstance(o, torch.Tensor)), None)
        counted = name in self.counted and (name != "mean" or _is_adaptive_pool_mean(args, kwargs or {}))
        self.calls.append((_RENAMED.get(name, name), first_in.numel() if first_in is not None else 0,
                           first_out.numel() if first_out is not None else 0, counted))
        return out


def count_fallback(model: nn.Module, x: torch.Tensor, elementwise_ops: Mapping[str, tuple[float, float]]
                   ) -> tuple[dict[str, Counter], dict[str, int]]:
    """Count ``model(x)`` with FlopCounterMode, in fvcore's terms.

    Args:
        model: the model (already in eval mode, under no_grad).
        x: its input.
        elementwise_ops: ``{"aten::op": (input_scale, output_scale)}`` to count as one op per
            element (``--count-elementwise``), or empty.

    Returns:
        ``(by_module, uncounted)`` as fvcore's ``by_module_and_operator()`` and
        ``unsupported_ops()`` give them: module name ("" for the whole model) -> operator ->
        MACs (the elementwise operations, under their own names, in the whole model's only),
        and ``"aten::op"`` -> calls of the operators counted neither way.
    """
    from torch.utils.flop_counter import FlopCounterMode

    table = _formulas()
    names = {packet: name for packet, (name, _) in table.items()}
    custom: dict[Any, Callable] = {}
    for packet, (_, formula) in table.items():
        if formula is not None:
            # FlopCounterMode decomposes every operator whose overload (not packet) it does not know,
            # and batch norm or upsampling would reach it as other operators: name the overloads too
            custom.update({packet: formula, **{getattr(packet, o): formula for o in packet.overloads()}})
    mode = FlopCounterMode(display=False, custom_mapping=custom)
    log = _OperatorLog(frozenset(packet.__name__.split(".")[-1] for packet in table))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlopCounterMode's notices
        with mode, log:
            model(x)
    counts = mode.get_flop_counts()
    root = next((key for key in counts if key != "Global" and "." not in key), None)
    by_module: dict[str, Counter] = {"": Counter()}
    for key, ops in counts.items():
        if key != "Global":
            module = "" if key == root else key.removeprefix(f"{root}.")
            by_module[module] = Counter()
            for op, flops in ops.items():  # several packets share one name: sum them
                if op in names and flops:
                    by_module[module][names[op]] += int(flops) // 2
    uncounted: Counter = Counter()
    for name, numel_in, numel_out, counted in log.calls:
        scales = elementwise_ops.get(f"aten::{name}")
        if counted:
            continue
        if scales:
            by_module[""][name] += int(scales[0] * numel_in + scales[1] * numel_out)
        elif name not in _FREE_OPS:
            uncounted[f"aten::{name}"] += 1
    return by_module, dict(uncounted)
