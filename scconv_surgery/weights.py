"""Weights files: read a state_dict from a file a user or a trainer wrote, and load it strictly.

Accepts plain state_dicts (``torch.load(weights_only=True)`` or safetensors) and the training
checkpoints of timm's and torchvision's scripts (the state_dict under ``state_dict``, ``model``
or their EMA keys; the EMA first, as ``timm.models.load_checkpoint`` picks it), with the prefixes of PyTorch's wrappers stripped in any order and nesting
(timm: ``load_state_dict`` and ``clean_state_dict`` in timm/models/_helpers.py; PyTorch:
``clean_tensor_name`` in torch/distributed/fsdp/_common_utils.py).
"""
from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._files import TORCH_KINDS, describe, sniff, torch_load_problem
from .errors import WeightsFileError
from .weights_remap import describe_mismatch, remap_keys

__all__ = ["WeightsKind", "WeightsSource", "WeightsFile", "read_weights", "read_state_dict", "strip_wrapper_prefixes", "load_weights_file", "fit_weights",
           "classifier_prefixes", "file_sha256"]

# Where timm's and torchvision's training scripts keep the weights, in the order timm's load_state_dict /
# load_checkpoint (use_ema=True, their default, which create_model(checkpoint_path=...) uses) picks them:
# the EMA, when the file has one, is what timm's train.py evaluated and chose its best checkpoint by.
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Wrappers that put their attribute name before every key of the wrapped model's state_dict:
# DistributedDataParallel, DataParallel, timm's ModelEmaV2/V3 and torch.optim.swa_utils.AveragedModel
# ("module."), torch.compile ("_orig_mod."), FSDP and activation checkpointing.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
# Those that also sit inside keys, around a compiled, sharded or checkpointed submodule; "module."
# inside a key is an ordinary module name.
_INNER_WRAPPERS = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
# The order in which releases before the entry was recorded picked (the live weights first): a manifest
# without "weights.entry" was converted from what this order gives, so rebuilding it reads the same.
RECORDED_BEFORE_ENTRIES = "state_dict|model|state_dict_ema|model_ema"
_NON_STATE_KEYS = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel's counter (torchvision's EMA)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WeightsKind(str, Enum):
    """Where a base model's weights come from."""

    RANDOM = "random"  # the constructor's initialisation (seeded when a seed is given)
    PRETRAINED = "pretrained"  # the library's pretrained weights, from its cache or downloaded
    FILE = "file"  # a local weights file (see :func:`~scconv_surgery.weights.load_weights_file`)


@dataclass(frozen=True)
class WeightsSource:
    """Where a base model's weights come from: one of random, pretrained or a file.

    Build one with :meth:`random`, :meth:`pretrained` or :meth:`file`. Once the model is built
    (:func:`rebuild_base`), the recorded source also says what exactly was loaded: the file's
    name and sha256, the classifier keys re-initialised and the wrapper prefixes stripped.

    Attributes:
        kind: random, pretrained or file.
        seed: the seed of the constructor's initialisation: all of the weights for random, a
            re-initialised classifier for a file (None: the caller's RNG state).
        tag: pretrained: the library's weights tag (timm's ``pretrained_cfg["tag"]``,
            torchvision's ``"DEFAULT"``); None asks for the default.
        path: file: the file to read (not recorded in a manifest: only its name and sha256).
        name: file: the file's name, as recorded.
        sha256: file: its sha256 hex digest, as recorded; when given with ``path``,
            :func:`rebuild_base` checks that the file has it.
        reinitialized: file: the classifier keys kept at their fresh initialisation because
            ``num_classes`` changed their shapes.
        stripped_prefixes: file: the wrapper key prefixes stripped (``module.``, ...).
        entry: file: the entry of a training checkpoint the state_dict was read from
            (``"state_dict_ema"``, ``"model"``, ...; None: the file is a plain state_dict). As a
            request, the entry to read; None picks as timm does (the EMA first).
        remapping: file: the key remapping applied (torchvision's DenseNet legacy keys, a timm
            ``checkpoint_filter_fn``), or None.
    """

    kind: WeightsKind = WeightsKind.RANDOM
    seed: int | None = None
    tag: str | None = None
    path: Path | None = None
    name: str | None = None
    sha256: str | None = None
    reinitialized: tuple[str, ...] = ()
    stripped_prefixes: tuple[str, ...] = ()
    entry: str | None = None
    remapping: str | None = None

    @classmethod
    def random(cls, seed: int | None = None) -> WeightsSource:
        """The constructor's initialisation, reproducible when ``seed`` is given."""
        return cls(WeightsKind.RANDOM, seed=seed)

    @classmethod
    def pretrained(cls, tag: str | None = None) -> WeightsSource:
        """The library's pretrained weights (``tag``: a timm weights tag; None: the default)."""
        return cls(WeightsKind.PRETRAINED, tag=tag)

    @classmethod
    def file(cls, path: str | os.PathLike, sha256: str | None = None, *, entry: str | None = None) -> WeightsSource:
        """A local weights file; with ``sha256``, the file must have that digest; ``entry``: the
        training checkpoint's entry to read (``"state_dict"`` for the live weights of a timm
        checkpoint that also holds ``"state_dict_ema"``); None picks the EMA first, as timm does."""
        return cls(WeightsKind.FILE, path=Path(path), name=Path(path).name, sha256=sha256, entry=entry)

    def checked_file(self) -> Path:
        """The file of file weights, checked against the record before it is read.

        Raises:
            WeightsFileError: no path is given (a recorded file is needed again to rebuild the
                model), or the file's sha256 is not the recorded one.
        """
        if self.path is None:
            raise WeightsFileError(str(self.name), "the model was built from this weights file, which is needed "
                                   "again to rebuild it; pass its path")
        if self.sha256 and file_sha256(Path(self.path)) != self.sha256:
            raise WeightsFileError(str(self.path), f"its sha256 differs from the recorded file's ({self.name}, "
                                   f"sha256 {self.sha256[:12]}...); pass that file")
        return Path(self.path)

    @property
    def trained(self) -> bool:
        """Pretrained or file weights (not a random initialisation)."""
        return self.kind is not WeightsKind.RANDOM

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``source.weights``: ``{"kind": "random"}``, ``{"kind": "pretrained",
        "tag": ...}`` or ``{"kind": "file", "name", "sha256", "reinitialized", "stripped_prefixes",
        "entry", "remapping"}`` (the seed is the manifest's ``seed``)."""
        if self.kind is WeightsKind.RANDOM:
            return {"kind": self.kind.value}
        if self.kind is WeightsKind.PRETRAINED:
            return {"kind": self.kind.value, "tag": self.tag}
        return {"kind": self.kind.value, "name": self.name, "sha256": self.sha256,
                "reinitialized": list(self.reinitialized), "stripped_prefixes": list(self.stripped_prefixes),
                "entry": self.entry, "remapping": self.remapping}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, seed: int | None = None) -> WeightsSource:
        """Read :meth:`to_dict`'s form; ``seed``: the manifest's."""
        kind = WeightsKind(d.get("kind", "random"))
        # a file recorded before entries were: what the order of those releases picked (the live weights first)
        entry = d.get("entry") if "entry" in d or kind is not WeightsKind.FILE else RECORDED_BEFORE_ENTRIES
        return cls(kind, seed=seed, tag=d.get("tag"), name=d.get("name"),
                   sha256=d.get("sha256"), reinitialized=tuple(d.get("reinitialized") or ()),
                   stripped_prefixes=tuple(d.get("stripped_prefixes") or ()), entry=entry,
                   remapping=d.get("remapping"))


@dataclass(frozen=True)
class WeightsFile:
    """A state_dict read from a weights file, and the wrapper prefixes its keys lost.

    Attributes:
        path: the file.
        state_dict: name -> tensor, with wrapper prefixes stripped.
        stripped_prefixes: the prefixes stripped, in order of first appearance, e.g.
            ``("_orig_mod.", "module.")`` for ``torch.compile(DDP(model))``; empty if none.
        entry: the training checkpoint's entry the state_dict came from (``"state_dict_ema"``),
            or None for a plain state_dict.
        entries: every entry of the file that holds a state_dict, in the file's order.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    stripped_prefixes: tuple[str, ...] = ()
    entry: str | None = None
    entries: tuple[str, ...] = ()

    def fitted_to(self, keys: Collection[str]) -> WeightsFile:
        """The same weights, with one more leading prefix stripped if that makes the keys ``keys``.

        Trainers that keep the model as an attribute (PyTorch Lightning's ``self.model``, or
        ``self.net``) save every key under that attribute's name; no fixed list can know it, so
        it is stripped only when every key carries it and the rest equals the model's keys.
        """
        names = list(self.state_dict)
        first = names[0].split(".", 1)[0] + "." if names and "." in names[0] else None
        if first is None or set(names) == set(keys) or not all(n.startswith(first) for n in names):
            return self
        if {n[len(first):] for n in names} != set(keys):
            return self
        state_dict = {n[len(first):]: v for n, v in self.state_dict.items()}
        return replace(self, state_dict=state_dict, stripped_prefixes=(*self.stripped_prefixes, first))


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Strip the key prefixes of PyTorch's wrappers (:data:`WRAPPER_PREFIXES`), until none is left.

    A leading prefix is stripped when every key carries it, again and again, so that any
    nesting (``_orig_mod.module.`` from ``torch.compile(DDP(model))``, ``module._orig_mod.``
    from ``DDP(torch.compile(model))``) comes off; ``_orig_mod.``, ``_fsdp_wrapped_module.``
    and ``_checkpoint_wrapped_module.`` are also removed inside keys.

    Returns:
        ``(state_dict, stripped prefixes in order of first appearance)``.

    Raises:
        ValueError: two keys become one after stripping.
    """
    names = list(state_dict)
    stripped: list[str] = []
    while names:
        prefix = next((p for p in WRAPPER_PREFIXES if all(n.startswith(p) for n in names)), None)
        if prefix is None:
            break
        names = [n[len(prefix):] for n in names]
        stripped.append(prefix)
    for i, name in enumerate(names):
        for wrapper in _INNER_WRAPPERS:
            if f".{wrapper}" in f".{name}":
                name = f".{name}".replace(f".{wrapper}", ".")[1:]
                stripped.append(wrapper)
        names[i] = name
    if len(set(names)) != len(names):
        clashes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"keys clash once the wrapper prefixes {', '.join(dict.fromkeys(stripped))} are stripped: "
                         f"{clashes[:5]}")
    return dict(zip(names, state_dict.values())), tuple(dict.fromkeys(stripped))


def read_weights(path: str | os.PathLike, *, entry: str | None = None) -> WeightsFile:
    """Read a weights file: a state_dict, unwrapped from trainer checkpoints and wrapper prefixes.

    A training checkpoint (a mapping with a state_dict under one of :data:`_WRAPPER_KEYS`) gives
    the entry ``entry`` names (``"a|b|c"``: the first of those it holds), else the first of ``state_dict_ema``, ``model_ema``, ``state_dict``,
    ``model`` that it holds: the EMA first, as ``timm.models.load_checkpoint`` (``use_ema=True``,
    its default) and ``timm.create_model(checkpoint_path=...)`` pick.

    Raises:
        WeightsFileError: the file is missing, unreadable, an scconv checkpoint, holds no
            state_dict, or has no state_dict under ``entry``.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightsFileError(str(path), "is a directory, not a weights file")
    if not path.is_file():
        raise WeightsFileError(str(path), "not a regular file" if path.exists() else "no such file")
    kind = sniff(path)
    if kind not in (*TORCH_KINDS, "safetensors"):
        raise WeightsFileError(str(path), f"not a weights file: it is {describe(path, kind)}; expected a PyTorch "
                               "state_dict (.pt, .pth, .bin) or a .safetensors file")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file
            obj: Any = load_file(str(path))
        else:
            # timm's and torchvision's training scripts store their argparse.Namespace beside the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        problem = torch_load_problem(err) if kind in TORCH_KINDS else f"{type(err).__name__}: {err}".splitlines()[0]
        raise WeightsFileError(str(path), f"cannot be read as {describe(path, kind)}: {problem}") from err
    if isinstance(obj, Mapping) and obj.get("format") == "scconv-surgery":
        raise WeightsFileError(str(path), "is an scconv-surgery checkpoint, not base-model weights; load it with "
                               "scconv_surgery.load(), or convert from the original weights")
    entries = tuple(k for k, v in obj.items() if isinstance(v, Mapping) and v
                    and all(isinstance(t, torch.Tensor) for t in v.values())) if isinstance(obj, Mapping) else ()
    chosen = None
    if entry is not None and "|" in entry:  # an order of preference (a manifest written before entries were recorded)
        chosen = next((key for key in entry.split("|") if key in entries), None)
    elif entry is not None:
        if entry not in entries:
            listed = ", ".join(entries) if entries else "none: it is a plain state_dict"
            raise WeightsFileError(str(path), f"has no state_dict under {entry!r} (its entries that hold one: {listed})",
                                   entries=entries)
        chosen = entry
    elif isinstance(obj, Mapping):
        chosen = next((key for key in _WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
    if chosen is not None:
        obj = {k: v for k, v in obj[chosen].items() if k not in _NON_STATE_KEYS}
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(str(path), "holds no state_dict (expected a mapping of names to "
                               f"tensors, or one under {', '.join(_WRAPPER_KEYS)})")
    try:
        state_dict, stripped = strip_wrapper_prefixes(obj)
    except ValueError as err:
        raise WeightsFileError(str(path), str(err)) from err
    return WeightsFile(path, state_dict, stripped, chosen, entries)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (:func:`read_weights` without the stripped prefixes)."""
    return read_weights(path).state_dict


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module names of the classifier: timm's ``pretrained_cfg["classifier"]``, an ultralytics
    YOLO head's class branches (``model.N.cv3``, whose widths follow the class count), else the
    last ``nn.Linear`` in module order."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("classifier"):
        names = cfg["classifier"]
        return tuple(names) if isinstance(names, (list, tuple)) else (names,)
    layers = getattr(model, "model", None)
    if isinstance(layers, nn.Sequential) and len(layers) and hasattr(layers[-1], "cv3"):  # a YOLO head's class branch
        return tuple(f"model.{len(layers) - 1}.{branch}" for branch in ("cv3", "one2one_cv3")
                     if hasattr(layers[-1], branch))
    heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (heads[-1],) if heads else ()


def fit_weights(model: nn.Module, weights: WeightsFile) -> tuple[dict[str, torch.Tensor], str | None]:
    """The file's state_dict keyed as ``model``'s: a trainer's attribute prefix stripped
    (:meth:`WeightsFile.fitted_to`), then the remappings the model's library applies to its own
    files (:func:`~scconv_surgery.weights_remap.remap_keys`: torchvision's DenseNet legacy keys,
    timm's ``checkpoint_filter_fn``, ``num_batches_tracked`` buffers a pre-0.4.1 file lacks).

    Returns:
        ``(state_dict, remapping)``: the remapping in words, or None when none was needed.

    Raises:
        WeightsFileError: the keys still do not fit; the message says what kind of mismatch it
            is (a prefix, a legacy format, another architecture) rather than listing every key;
            ``missing_keys`` and ``unexpected_keys`` carry them all.
    """
    own = model.state_dict()
    fitted = weights.fitted_to(own)
    remapped = remap_keys(fitted.state_dict, model)
    if remapped is None:
        missing = sorted(set(own) - set(fitted.state_dict))
        unexpected = sorted(set(fitted.state_dict) - set(own))
        raise WeightsFileError(str(weights.path), f"does not fit the model ({len(missing)} missing key(s), "
                               f"{len(unexpected)} unexpected key(s)): {describe_mismatch(fitted.state_dict, own)}", missing, unexpected)
    return remapped.state_dict, remapped.remapping


def load_weights_file(model: nn.Module, path: str | os.PathLike, *, reinit_classifier: bool = False,
                      entry: str | None = None) -> WeightsSource:
    """Load a local weights file into ``model`` (in place, strictly).

    Accepts a plain state_dict (``.pt``/``.pth``/``.bin`` via ``torch.load(weights_only=True)``,
    or ``.safetensors``), and timm / torchvision training checkpoints (the state_dict under
    ``state_dict_ema``, ``model_ema``, ``state_dict`` or ``model``: the EMA first, as timm picks),
    with the key prefixes of wrappers stripped (:func:`strip_wrapper_prefixes`, and a trainer's
    attribute name such as Lightning's ``model.`` where every key carries it and the rest fits
    the model), and the key remappings that timm and torchvision apply to their own models'
    files (:func:`fit_weights`).

    Args:
        model: the model to load into.
        path: the weights file.
        reinit_classifier: when only the classifier's shapes differ (``num_classes`` was
            changed), keep the model's freshly initialised classifier and load the rest, as
            timm does; the keys are reported.
        entry: the training checkpoint's entry to read (``"state_dict"`` for the live weights
            beside ``"state_dict_ema"``); None picks the EMA first.

    Returns:
        What was loaded, for the manifest: a file :class:`WeightsSource` with the file's name,
        sha256, the entry read, the re-initialised classifier keys, the stripped prefixes and
        the remapping.

    Raises:
        WeightsFileError: the file is missing, unreadable, holds no state_dict (or none under
            ``entry``), or its keys or shapes do not fit the model (the error says how).
    """
    path = Path(path)
    own = model.state_dict()
    weights = read_weights(path, entry=entry)
    state_dict, remapping = fit_weights(model, weights)
    stripped = weights.fitted_to(own).stripped_prefixes
    wrong = [k for k, v in state_dict.items() if v.shape != own[k].shape]
    heads = classifier_prefixes(model)
    in_head = all(any(k.startswith(f"{h}.") for h in heads) for k in wrong)
    if wrong and not (reinit_classifier and in_head):
        details = "; ".join(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5])
        hint = " (a different num_classes re-initialises the classifier)" if in_head else ""
        raise WeightsFileError(str(path), f"shape mismatch: {details}{hint}", classifier_only=in_head)
    for key in wrong:  # the classifier keeps its fresh initialisation
        state_dict[key] = own[key]
    model.load_state_dict(state_dict, strict=True)
    return WeightsSource(WeightsKind.FILE, path=path, name=path.name, sha256=file_sha256(path),
                         reinitialized=tuple(sorted(wrong)), stripped_prefixes=stripped,
                         entry=weights.entry, remapping=remapping)
