"""Weights files in their libraries' own legacy key formats, and what kind of mismatch is left.

timm and torchvision accept files for their models that a plain ``load_state_dict`` refuses:
torchvision's DenseNet builder renames the published files' ``denselayer1.norm.1.weight`` keys
(torchvision: ``_load_state_dict`` in torchvision/models/densenet.py), timm runs a model module's
``checkpoint_filter_fn`` on pretrained and original-repository files (timm:
``build_model_with_cfg`` in timm/models/_builder.py), and PyTorch's BatchNorm fills a missing
``num_batches_tracked`` (files saved before PyTorch 0.4.1, such as torchvision's first ResNet
weights: ``_NormBase._load_from_state_dict`` in torch/nn/modules/batchnorm.py). :func:`remap_keys`
applies the same remappings, each only when it makes the file's keys the model's.

When no remapping fits, :func:`describe_mismatch` says what kind of mismatch it is, instead of
listing hundreds of keys.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Remapped", "remap_keys", "describe_mismatch", "TORCHVISION_DENSENET_LEGACY"]

# torchvision/models/densenet.py, _load_state_dict: '.'s are no longer allowed in module names
TORCHVISION_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
_STAT_COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class Remapped:
    """A state_dict with its keys remapped to a model's.

    Attributes:
        state_dict: name -> tensor, keyed as the model is.
        remapping: the remapping applied, in words (recorded in the manifest), or None.
        filled: the model's ``num_batches_tracked`` buffers the file lacked, kept at the model's
            values (as ``BatchNorm`` does when it loads such a file).
    """

    state_dict: dict[str, torch.Tensor]
    remapping: str | None = None
    filled: tuple[str, ...] = ()


def _densenet_legacy(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        match = TORCHVISION_DENSENET_LEGACY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _timm_filter(model: nn.Module) -> Callable[[Mapping[str, torch.Tensor], nn.Module], dict] | None:
    """The ``checkpoint_filter_fn`` of the timm module that defines ``model``'s class, if any."""
    module_name = type(model).__module__
    if not module_name.startswith("timm.models."):
        return None
    import importlib

    return getattr(importlib.import_module(module_name), "checkpoint_filter_fn", None)


def _fits(keys: Collection[str], own: Mapping[str, torch.Tensor]) -> bool:
    """The keys are the model's, but for ``num_batches_tracked`` buffers the file may lack."""
    keys = set(keys)
    return keys <= set(own) and all(k.rsplit(".", 1)[-1] == _STAT_COUNTER for k in set(own) - keys)


def remap_keys(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Remapped | None:
    """The file's state_dict keyed as ``model``'s, by the first remapping that fits, or None.

    Tried in order: none; torchvision's DenseNet legacy keys; the ``checkpoint_filter_fn`` of the
    timm module that defines the model (called as timm calls it, ``fn(state_dict, model)``; one
    that raises is passed over). A file that lacks only ``num_batches_tracked`` buffers fits, and
    those keep the model's values (BatchNorm's own rule).
    """
    own = model.state_dict()
    candidates: list[tuple[str | None, Callable[[], Mapping[str, torch.Tensor]]]] = [
        (None, lambda: state_dict),
        ("torchvision DenseNet legacy keys (denselayerN.norm.1 -> norm1)", lambda: _densenet_legacy(state_dict, model)),
    ]
    timm_filter = _timm_filter(model)
    if timm_filter is not None:
        name = f"{type(model).__module__}.checkpoint_filter_fn"
        candidates.append((name, lambda: timm_filter(dict(state_dict), model)))
    for remapping, remap in candidates:
        try:
            mapped = remap()
        except Exception:  # a filter written for another layout of this family
            continue
        if not isinstance(mapped, Mapping) or not _fits(mapped, own):
            continue
        if remapping is not None and dict(mapped) == dict(state_dict):
            continue  # changed nothing: the plain case already failed
        filled = tuple(sorted(set(own) - set(mapped)))
        full = {**{k: own[k] for k in filled}, **mapped}
        return Remapped({k: full[k] for k in own}, remapping, filled)
    return None


def _common_prefix(keys: Collection[str]) -> str | None:
    """The first dotted component that every key starts with (``"backbone."``), or None."""
    firsts = {k.split(".", 1)[0] for k in keys if "." in k}
    if len(firsts) == 1 and all("." in k for k in keys):
        return firsts.pop() + "."
    return None


def describe_mismatch(file_keys: Collection[str], model_keys: Collection[str]) -> str:
    """What kind of mismatch two key sets show, in words, with a few examples.

    Kinds: the file's keys carry a prefix the model's lack, or the reverse (a submodule's
    weights, a wrapper no rule strips); a legacy key format (the same names with other
    separators, e.g. ``norm.1`` for ``norm1``); a smaller or larger variant (the keys of one
    are a subset of the other's: resnet18 weights for resnet34); another architecture (fewer
    than half of the model's keys in common); else the counts of missing and unexpected keys
    with the first few of each.
    """
    file_keys, model_keys = set(file_keys), set(model_keys)
    missing, unexpected = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
    prefix = _common_prefix(file_keys)
    if prefix and {k[len(prefix):] for k in file_keys} <= model_keys:
        return (f"a prefix: every key of the file starts with {prefix!r}, which the model's keys lack "
                f"(e.g. {sorted(file_keys)[0]!r}); strip it, or save that module's own state_dict")
    prefix = _common_prefix(model_keys)
    if prefix and file_keys <= {k[len(prefix):] for k in model_keys}:
        return (f"a prefix: every key of the model starts with {prefix!r}, which the file's keys lack "
                f"(e.g. {sorted(model_keys)[0]!r}): the file holds the weights of that submodule only")

    def flat(key: str) -> str:
        return key.replace(".", "").replace("_", "")

    flat_model = {flat(k) for k in model_keys}
    renamed = [k for k in unexpected if flat(k) in flat_model]
    if renamed and len(renamed) >= len(unexpected) // 2:
        example = renamed[0]
        target = next(k for k in missing if flat(k) == flat(example)) if any(flat(k) == flat(example) for k in missing) \
            else "?"
        return (f"a legacy key format: {len(renamed)} of the file's {len(unexpected)} unexpected keys are model keys "
                f"spelled differently (e.g. {example!r} for {target!r}), a format no known remapping converts")
    common = len(file_keys & model_keys)
    if missing and not unexpected:
        return (f"a smaller variant of the architecture (fewer blocks) or a partial checkpoint: the file has "
                f"{len(file_keys)} of the model's {len(model_keys)} keys and none else (e.g. {missing[0]!r} missing)")
    if unexpected and not missing:
        return (f"a larger variant of the architecture (more blocks) or extra heads: the file has all of the model's "
                f"{len(model_keys)} keys and {len(unexpected)} more (e.g. {unexpected[0]!r} unexpected)")
    if common < max(1, len(model_keys) // 2):
        return (f"another architecture: only {common} of the model's {len(model_keys)} keys are in the file, which "
                f"has {len(file_keys)} (e.g. {missing[:1]} missing, {unexpected[:1]} unexpected)")
    return (f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}")
