"""Helpers for fine-tuning a converted model: new vs pretrained parameters, stale BatchNorms.

A converted model mixes pretrained layers with freshly initialised SCConv modules. Following
timm's ``param_groups_weight_decay`` (timm/optim/_param_groups.py), :func:`param_groups`
puts norms and biases (tensors of one dimension or fewer) in groups without weight decay, and
gives the new SCConv parameters their own learning rate. A BatchNorm right after a replaced
conv normalises statistics gathered on the dense conv's outputs: :func:`stale_batchnorms`
finds these, and :func:`reset_batchnorm_stats` resets their running estimates.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ._probe import eval_mode, example_input
from .layers import ScConv

__all__ = ["new_parameter_names", "param_groups", "stale_batchnorms", "reset_batchnorm_stats"]


def new_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that belong to SCConv modules (the ones a conversion added)."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, ScConv):
            names += [f"{module_name}.{name}" for name, _ in module.named_parameters()]
    return names


def param_groups(model: nn.Module, *, lr: float, new_lr: float | None = None, weight_decay: float = 0.0,
                 no_weight_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Optimizer parameter groups for fine-tuning a converted model.

    Four groups at most (empty ones are left out): pretrained / new, each with and without
    weight decay. Norm weights, biases and other tensors with ``ndim <= 1`` get no weight
    decay, as in timm's ``param_groups_weight_decay``; parameters of SCConv modules are new
    and get ``new_lr``. Frozen parameters (``requires_grad=False``) are left out; a shared
    parameter appears once.

    Args:
        model: a converted model (e.g. from :func:`scconv_surgery.load`).
        lr: learning rate of the pretrained parameters.
        new_lr: learning rate of the new SCConv parameters (default ``lr``).
        weight_decay: weight decay of the decayed groups.
        no_weight_decay: extra parameter names to exclude from weight decay.

    Returns:
        A list for ``torch.optim`` constructors; each group also has a ``"name"`` key
        (``"pretrained"``, ``"pretrained_no_decay"``, ``"new"``, ``"new_no_decay"``).

    Example:
        >>> optimizer = torch.optim.AdamW(param_groups(model, lr=1e-4, new_lr=1e-3, weight_decay=0.05))
    """
    new = set(new_parameter_names(model))
    skip = set(no_weight_decay)
    groups: dict[str, list[torch.Tensor]] = {"pretrained": [], "pretrained_no_decay": [], "new": [],
                                              "new_no_decay": []}
    for name, param in model.named_parameters():  # shared parameters are yielded once
        if not param.requires_grad:
            continue
        kind = "new" if name in new else "pretrained"
        decay = param.ndim > 1 and name not in skip
        groups[kind if decay else f"{kind}_no_decay"].append(param)
    rates = {"pretrained": lr, "new": lr if new_lr is None else new_lr}
    return [{"name": key, "params": params, "lr": rates[key.split("_")[0]],
             "weight_decay": weight_decay if not key.endswith("no_decay") else 0.0}
            for key, params in groups.items() if params]


def stale_batchnorms(model: nn.Module, replaced: Sequence[str], input_size: tuple[int, int, int]) -> list[str]:
    """BatchNorm layers that run right after a replaced module, found by one forward pass.

    The forward runs on a zero input ``(1, *input_size)`` in eval mode without grad; the hooks
    record the order in which modules finish, and a BatchNorm finishing next after a replaced
    module follows it. No hook or mode change is left behind.

    Args:
        model: the converted (or the original) model.
        replaced: names of the replaced modules.
        input_size: ``(C, H, W)``.

    Returns:
        The BatchNorm names, in the order of ``replaced``.
    """
    targets = set(replaced)
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name and (name in targets or not any(module.children())):
            handles.append(module.register_forward_hook(lambda m, a, o, name=name: order.append(name)))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input(model, (1, *input_size)))
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    found = {}
    for before, after in zip(order, order[1:]):
        if before in targets and isinstance(modules[after], nn.modules.batchnorm._BatchNorm):
            found.setdefault(before, after)
    return [found[name] for name in replaced if name in found]


def reset_batchnorm_stats(model: nn.Module, names: Sequence[str]) -> None:
    """Reset the running mean, variance and batch count of the named BatchNorms (in place)."""
    for name in names:
        model.get_submodule(name).reset_running_stats()
