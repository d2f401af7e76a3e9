"""Which output tensors of a model have a shape that depends on the input's values.

A detector's boxes, labels, scores, masks and keypoints have one row per detection: how many
depends on the values (a score threshold, non-maximum suppression), so two models that both
work return different counts (``verify`` compared 82 boxes with 100). Such a leaf is no shape
contract; the rest of its shape is.

The base model's forward runs under a ``TorchDispatchMode`` that marks each tensor an operator
with a value-dependent output size produces (``nonzero``, ``masked_select``, ``unique``, boolean
indexing, ``repeat_interleave`` with tensor repeats, torchvision's ``nms``), and every tensor an
operator computes from a marked one (shape provenance is followed conservatively: anything that
touches a marked tensor is marked). A size read as a Python number (``len(boxes)``) and used to
build a fresh tensor escapes that tracking, so a leaf beside a marked one in the same container
(a detection's dict) whose first dimension has the marked leaf's length counts as marked too:
torchvision's keypoint R-CNN builds its keypoints that way.

For a marked leaf the first dimension (the detection count, where every torchvision detector
puts it) is not a contract: only the number of dimensions and the other dimensions are.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

from ._probe import tensor_leaves

__all__ = ["DataDependentShapes", "data_dependent_leaves"]

_aten = torch.ops.aten
# operators whose output size depends on the input's values
_VALUE_SIZED = frozenset({
    _aten.nonzero.default, _aten.masked_select.default, _aten._unique2.default, _aten.unique_dim.default,
    _aten.unique_consecutive.default, _aten.repeat_interleave.Tensor, _aten.nonzero_static.default,
})


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _value_sized(func: Any, args: tuple) -> bool:
    if func in _VALUE_SIZED or (getattr(func, "namespace", "") == "torchvision" and "nms" in func.__name__):
        return True
    if func is _aten.index.Tensor and len(args) > 1:  # x[mask]
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
    return False


class DataDependentShapes(TorchDispatchMode):
    """While active, marks the tensors whose size depends on values (see the module docstring);
    :meth:`is_marked` tells them apart afterwards. Keeps only weak references."""

    def __init__(self) -> None:
        super().__init__()
        self._marked = WeakTensorKeyDictionary()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _value_sized(func, args) or any(t in self._marked for t in _tensors((args, kwargs))):
            for tensor in _tensors(out):
                self._marked[tensor] = True
        return out

    def is_marked(self, tensor: torch.Tensor) -> bool:
        return tensor in self._marked


def _parent(path: str) -> str:
    """``output[0]`` of ``output[0]['boxes']``; ``output`` of ``output.logits``."""
    cut = path.rfind("[") if path.endswith("]") else path.rfind(".")
    return path[:cut] if cut > 0 else ""


def data_dependent_leaves(output: Any, shapes: DataDependentShapes) -> frozenset[str]:
    """The paths (as :func:`~scconv_surgery._probe.tensor_leaves` names them) of the output's
    tensors whose first dimension depends on the input's values: those ``shapes`` marked while
    the output was computed, and their same-length siblings.

    Example:
        For torchvision's ``keypointrcnn_resnet50_fpn`` in eval mode on a batch of 2:
        ``output[0]['boxes']``, ``['labels']``, ``['scores']``, ``['keypoints']`` and
        ``['keypoints_scores']``, the same for ``output[1]``.
    """
    leaves = tensor_leaves(output)
    marked = {path for path, t in leaves if shapes.is_marked(t) and t.dim() > 0}
    lengths = {(_parent(path), t.shape[0]) for path, t in leaves if path in marked}
    marked |= {path for path, t in leaves if t.dim() > 0 and (_parent(path), t.shape[0]) in lengths}
    return frozenset(marked)
