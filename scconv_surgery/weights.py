"""Weights files: read a state_dict from a file a user or a trainer wrote, and load it strictly.

Accepts plain state_dicts (``torch.load(weights_only=True)`` or safetensors) and the training
checkpoints of timm's and torchvision's scripts (the state_dict under ``state_dict``, ``model``
or their EMA keys), with the prefixes of PyTorch's wrappers stripped (timm: ``load_state_dict``
and ``clean_state_dict`` in timm/models/_helpers.py).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsFileError

__all__ = ["read_state_dict", "load_weights_file", "classifier_prefixes"]

_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")  # timm/torchvision trainers
_KEY_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
_NON_STATE_KEYS = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel's counter (torchvision's EMA)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state_dict file, unwrapped from trainer checkpoints and wrapper prefixes."""
    if path.is_dir():
        raise WeightsFileError(str(path), "is a directory, not a weights file")
    if not path.is_file():
        raise WeightsFileError(str(path), "not a regular file" if path.exists() else "no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj: Any = load_file(str(path))
        else:
            # timm's and torchvision's training scripts store their argparse.Namespace beside the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch's message carries terminal colours
        hint = ("; it holds pickled objects: save model.state_dict() instead of the module"
                if "unsupported global" in text.lower() or "weights_only=false" in text.lower() else "")
        raise WeightsFileError(
            str(path), f"not a readable PyTorch or safetensors file ({type(err).__name__}: "
            f"{text.splitlines()[0] if text else ''}){hint}") from err
    if isinstance(obj, Mapping) and obj.get("format") == "scconv-surgery":
        raise WeightsFileError(str(path), "is an scconv-surgery checkpoint, not base-model weights; load it with "
                               "scconv_surgery.load(), or convert from the original weights")
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = {k: v for k, v in obj[key].items() if k not in _NON_STATE_KEYS}
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(str(path), "holds no state_dict (expected a mapping of names to "
                               f"tensors, or one under {', '.join(_WRAPPER_KEYS)})")
    state_dict = {}
    for key, value in obj.items():
        for prefix in _KEY_PREFIXES:
            key = key.removeprefix(prefix)
        state_dict[key] = value
    return state_dict


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module names of the classifier: timm's ``pretrained_cfg["classifier"]``, else the last
    ``nn.Linear`` (or 1x1 conv head) in module order."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("classifier"):
        names = cfg["classifier"]
        return tuple(names) if isinstance(names, (list, tuple)) else (names,)
    heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (heads[-1],) if heads else ()


def load_weights_file(model: nn.Module, path: str | os.PathLike, *, reinit_classifier: bool = False) -> dict[str, Any]:
    """Load a local weights file into ``model`` (in place, strictly).

    Accepts a plain state_dict (``.pt``/``.pth``/``.bin`` via ``torch.load(weights_only=True)``,
    or ``.safetensors``), and timm / torchvision training checkpoints (the state_dict under
    ``state_dict``, ``model``, ``state_dict_ema`` or ``model_ema``), with ``module.`` (DDP) and
    ``_orig_mod.`` (torch.compile) prefixes stripped.

    Args:
        model: the model to load into.
        path: the weights file.
        reinit_classifier: when only the classifier's shapes differ (``num_classes`` was
            changed), keep the model's freshly initialised classifier and load the rest, as
            timm does; the keys are reported.

    Returns:
        ``{"kind": "file", "name": file name, "sha256": hex digest, "reinitialized": [keys]}``
        for the manifest.

    Raises:
        WeightsFileError: the file is missing, unreadable, holds no state_dict, or its keys or
            shapes do not fit the model (the error lists them).
    """
    path = Path(path)
    state_dict = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise WeightsFileError(str(path), f"does not fit the model: {len(missing)} missing key(s) "
                               f"{missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}",
                               missing, unexpected)
    wrong = [k for k, v in state_dict.items() if v.shape != own[k].shape]
    heads = classifier_prefixes(model)
    in_head = all(any(k.startswith(f"{h}.") for h in heads) for k in wrong)
    if wrong and not (reinit_classifier and in_head):
        details = "; ".join(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5])
        hint = " (pass --num-classes to re-initialise the classifier)" if in_head else ""
        raise WeightsFileError(str(path), f"shape mismatch: {details}{hint}")
    for key in wrong:  # the classifier keeps its fresh initialisation
        state_dict[key] = own[key]
    model.load_state_dict(state_dict, strict=True)
    return {"kind": "file", "name": path.name, "sha256": _sha256(path), "reinitialized": sorted(wrong)}
