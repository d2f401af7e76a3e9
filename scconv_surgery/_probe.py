"""Running a model without changing it: eval mode that restores each module's own mode, an
example input on the model's device and dtype, and the tensors of a nested output. Shared by
the steps that run a model (the recorded probe pass of :mod:`scconv_surgery.probe`, counting,
verification, BatchNorm re-estimation, inference timing); and the do-nothing default of their
progress callbacks."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn


def noop(*args: Any) -> None:
    """A progress callback that does nothing: the default of ``on_step`` and ``on_fit``."""


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own train/eval mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def example_input(model: nn.Module, shape: tuple[int, ...],
                  fill: Callable[..., torch.Tensor] = torch.zeros) -> torch.Tensor:
    """A tensor of ``shape`` (e.g. ``(1, C, H, W)``) on the model's device, in its floating dtype.

    The first parameter decides; a model without floating parameters gets float32 on the CPU.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return fill(*shape, device=device, dtype=dtype)


def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts (a torch function's arguments), without the
    paths :func:`tensor_leaves` builds: cheap enough for a hook on every operator."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_tensors(item)


def tensor_leaves(output: Any, path: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Every tensor of a model's output, depth first, with its path from ``path``.

    Models return one tensor, or nested lists, tuples, namedtuples, dicts (OrderedDicts,
    Hugging Face ``ModelOutput``) and dataclasses of tensors: timm's ``features_only``
    models a list, torchvision's segmentation models a dict, Inception with auxiliary logits a
    (named)tuple. Other leaves (None, numbers, strings) hold no tensor and are left out.

    Returns:
        ``[(path, tensor), ...]``: ``[("output", t)]`` for a single tensor, else paths such
        as ``output[0]``, ``output['out']``, ``output.aux_logits``.

    Example:
        >>> [p for p, _ in tensor_leaves({"out": torch.zeros(1), "aux": [torch.zeros(1), None]})]
        ["output['out']", "output['aux'][0]"]
    """
    if isinstance(output, torch.Tensor):
        return [(path, output)]
    if isinstance(output, Mapping):
        children: list[tuple[str, Any]] = [(f"{path}[{key!r}]", value) for key, value in output.items()]
    elif isinstance(output, tuple) and hasattr(output, "_fields"):  # namedtuple
        children = [(f"{path}.{name}", getattr(output, name)) for name in output._fields]
    elif isinstance(output, (list, tuple)):
        children = [(f"{path}[{i}]", value) for i, value in enumerate(output)]
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        children = [(f"{path}.{f.name}", getattr(output, f.name)) for f in dataclasses.fields(output)]
    else:
        return []
    return [leaf for child_path, value in children for leaf in tensor_leaves(value, child_path)]
