"""Probing a model without changing it: eval mode that restores each module's own mode, and an
example input on the model's device and dtype. Shared by the steps that run a model (shape check,
counting, stale-BatchNorm detection, inference timing)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


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
