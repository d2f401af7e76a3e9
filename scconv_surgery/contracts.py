"""Which output tensors of a model have a shape that depends on the input's values.

A detector's boxes, labels, scores, masks and keypoints have one row per detection: how many
depends on the values (a score threshold, non-maximum suppression), so two models that both
work return different counts (``verify`` compared 82 boxes with 100). Such a leaf is no shape
contract; the rest of its shape is.

The base model's forward runs under a ``TorchDispatchMode`` that marks each tensor an operator
with a value-dependent output size produces (``nonzero``, ``masked_select``, ``unique``, boolean
indexing, ``repeat_interleave`` with tensor repeats, torchvision's ``nms``), and every tensor an
operator computes from a marked one (shape provenance is followed conservatively: anything that
touches a marked tensor is marked). A size read off a marked tensor as a Python number
(``len(boxes)``, ``boxes.shape[0]``) and used to build a fresh tensor (``torch.zeros(n, 17, 3)``:
torchvision's keypoint R-CNN builds its keypoints that way) is followed by value under a
``TorchFunctionMode``: a tensor that ``zeros``, ``empty``, ``full``, ... build with such a first
dimension is marked too. A size computed further from such a number (``n - 1``) is not followed.

For a marked leaf the first dimension (the detection count, where every torchvision detector
puts it) is not a contract: only the number of dimensions and the other dimensions are.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

from ._probe import iter_tensors, tensor_leaves

__all__ = ["DataDependentShapes", "data_dependent_leaves"]

_aten = torch.ops.aten
# operators whose output size depends on the input's values
_VALUE_SIZED = frozenset({
    _aten.nonzero.default, _aten.masked_select.default, _aten._unique2.default, _aten.unique_dim.default,
    _aten.unique_consecutive.default, _aten.repeat_interleave.Tensor, _aten.nonzero_static.default,
})



def _value_sized(func: Any, args: tuple) -> bool:
    if func in _VALUE_SIZED or (getattr(func, "namespace", "") == "torchvision" and "nms" in func.__name__):
        return True
    if func is _aten.index.Tensor and len(args) > 1:  # x[mask]
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
    return False


class _Marking(TorchDispatchMode):
    """Marks what value-sized operators produce, and everything computed from a marked tensor."""

    def __init__(self, marked: WeakTensorKeyDictionary):
        super().__init__()
        self.marked = marked

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _value_sized(func, args) or any(t in self.marked for t in iter_tensors((args, kwargs))):
            for tensor in iter_tensors(out):
                self.marked[tensor] = True
        return out


# functions that build a tensor from sizes alone
_FACTORIES = frozenset({torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn, torch.arange})
_SIZE_READS = frozenset({torch.Tensor.__len__, torch.Tensor.size, torch.Tensor.shape.__get__})  # type: ignore[attr-defined]


class _SizeReads(TorchFunctionMode):
    """Marks a tensor that a factory builds from a size read off a marked tensor (``len(boxes)``)."""

    def __init__(self, marked: WeakTensorKeyDictionary):
        super().__init__()
        self.marked = marked
        self.sizes: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _SIZE_READS and args and isinstance(args[0], torch.Tensor) and args[0] in self.marked:
            self.sizes.update(v for v in (out if isinstance(out, tuple) else (out,)) if isinstance(v, int))
        elif func in _FACTORIES and isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[0] in self.sizes:
            self.marked[out] = True
        return out


class DataDependentShapes:
    """A context manager: while active, marks the tensors whose size depends on values (see the
    module docstring); :meth:`is_marked` tells them apart afterwards. Keeps only weak references."""

    def __init__(self) -> None:
        self._marked = WeakTensorKeyDictionary()
        self._modes: tuple[Any, ...] = ()

    def __enter__(self) -> DataDependentShapes:
        self._modes = (_SizeReads(self._marked), _Marking(self._marked))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def is_marked(self, tensor: torch.Tensor) -> bool:
        return tensor in self._marked


def data_dependent_leaves(output: Any, shapes: DataDependentShapes) -> frozenset[str]:
    """The paths (as :func:`~scconv_surgery._probe.tensor_leaves` names them) of the output's
    tensors whose first dimension depends on the input's values: those ``shapes`` marked while
    the output was computed.

    Example:
        For torchvision's ``keypointrcnn_resnet50_fpn`` in eval mode on a batch of 2:
        ``output[0]['boxes']``, ``['labels']``, ``['scores']``, ``['keypoints']`` and
        ``['keypoints_scores']``, the same for ``output[1]``.
    """
    return frozenset(path for path, t in tensor_leaves(output) if shapes.is_marked(t) and t.dim() > 0)
