"""Convs whose parameters other code uses: a replacement would leave that code without them.

SCConv has none of the conv's tensors, so anything else that holds or reads them breaks once the
conv is swapped (``AttributeError: 'ScConv' object has no attribute 'weight'``) or silently keeps
a tensor the model no longer trains. The ways a parameter can be shared, and what finds each:

- the same ``Parameter`` object registered in two modules (tied weights: ``other.weight =
  conv.weight``): found by identity, without running the model;
- a tensor that shares the conv's storage held by another module as a parameter or buffer
  (``register_buffer("w", conv.weight.data)``, a view): found by storage, without running the
  model (not on the meta device, whose tensors have no storage);
- a parameter read by another module's forward (TridentNet's ``F.conv2d(x, self.conv.weight, ...)``
  in a block, ``self.conv.weight.shape`` read elsewhere, ``self.conv._conv_forward(x, w, b)``):
  found only by running the model, by the probe pass
  (:attr:`~scconv_surgery.probe.ModelProbe.outside_reads`).

- the conv module itself kept outside the module tree (in a list, tuple or dict attribute, or set
  with ``object.__setattr__``): whoever calls it there would go on calling the dense conv, whose
  parameters the converted model no longer has; found without running the model.

Not found: a parameter kept on its own in a plain Python container and read outside the
forward, or read only in a branch the probed forward does not take. One module under several
names (aliases) is not sharing: it gets one replacement under all of them.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .probe import ROOT_FORWARD, ModelProbe

__all__ = ["shared_parameter_uses"]


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in (*module._parameters.items(), *module._buffers.items()):
        if isinstance(tensor, torch.Tensor):
            yield name, tensor


def _storage(tensor: torch.Tensor) -> int | None:
    if tensor.is_meta or tensor.numel() == 0:
        return None
    try:
        return tensor.untyped_storage().data_ptr() or None
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
        return None


def shared_parameter_uses(model: nn.Module, modules: dict[str, nn.Module],
                          probe: ModelProbe | None = None) -> dict[str, str]:
    """For each of ``modules`` (first name -> module) whose parameters something else holds or
    reads, what does, in words.

    Args:
        model: the model the modules belong to.
        modules: the modules to check (the convs a plan decides), by their first name in
            ``model.named_modules()``.
        probe: a probe pass of ``model`` (:func:`~scconv_surgery.probe.probe_model`): adds the
            reads by other modules' forwards; without it only holding is found.

    Returns:
        ``{name: "its weight is also held by other.weight"}``, ... (modules shared in no way are
        absent).
    """
    names = {id(m): name for name, m in model.named_modules()}
    targets = {id(m): name for name, m in modules.items()}
    owned: dict[int, list[tuple[str, str]]] = {}  # id(parameter) -> [(module name, tensor name)]
    storages: dict[int, list[tuple[str, str]]] = {}  # storage address -> the same
    for module in modules.values():
        for tensor_name, p in module._parameters.items():
            if p is not None:
                owner = (names[id(module)], tensor_name)
                owned.setdefault(id(p), []).append(owner)
                ptr = _storage(p)
                if ptr is not None:
                    storages.setdefault(ptr, []).append(owner)
    found: dict[str, list[str]] = {}
    for module in model.modules():
        holder = names[id(module)]
        for tensor_name, tensor in _own_tensors(module):
            same = owned.get(id(tensor)) or storages.get(_storage(tensor) or -1) or ()
            for owner, owner_tensor in same:
                if owner != holder:
                    found.setdefault(owner, []).append(f"its {owner_tensor} is also held by {holder}.{tensor_name}")
    for module in model.modules():  # the conv itself kept outside the module tree: it would go on running
        for attr, value in vars(module).items():
            if attr.startswith("_"):
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) \
                else [(None, value)]
            for key, item in items:
                if isinstance(item, nn.Module) and id(item) in targets:
                    where = f"{attr}[{key!r}]" if key is not None else attr
                    holder = names[id(module)] or "the model"
                    found.setdefault(targets[id(item)], []).append(
                        f"the conv itself is also kept by {holder} as a plain attribute ({where}), which a "
                        "replacement would not reach")
    for owner, readers in (probe.outside_reads.items() if probe is not None else ()):
        if owner in modules:
            who = ", ".join("the model's own forward" if r == ROOT_FORWARD else f"{r}'s forward" for r in readers)
            found.setdefault(owner, []).append(f"its parameters are also read by {who}")
    return {name: "; ".join(dict.fromkeys(details)) for name, details in found.items() if name in targets.values()}
