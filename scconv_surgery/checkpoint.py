"""The checkpoint: one file holding a manifest and a state_dict, and :func:`load`.

A ``.pt`` checkpoint is ``torch.save`` of a dict of plain values and tensors only::

    {"format": "scconv-surgery", "format_version": 1, "manifest": {...}, "state_dict": {...}}

so it loads with ``torch.load(weights_only=True)``; no pickled modules. A ``.safetensors``
checkpoint holds the same tensors, with ``format``, ``format_version`` and the manifest (as
JSON) in the file's metadata; a tensor shared under several names is stored once and the
other names are listed in the metadata's ``shared`` map. The manifest records
how to rebuild the base model (:class:`~scconv_surgery.models.ModelSource`), the exact list
of replaced convs with their specs, aliases and SCConv hyperparameters, the rules, the seed,
the counts, and library versions. :func:`load` rebuilds the base model, replays the
replacements by exact name and loads the state_dict strictly. Writes are atomic: a temporary
file in the output's directory, then a rename.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._files import TORCH_KINDS, atomic_write, describe, sniff, torch_load_problem
from .apply import apply_plan
from .errors import CheckpointError, OutputPathError, PlanMismatchError, ScconvError
from .manifest import Manifest
from .models import build_model

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "check_output_path", "save_checkpoint", "read_checkpoint",
           "rebuild", "load"]

FORMAT = "scconv-surgery"
FORMAT_VERSION = 1
SUFFIXES = (".pt", ".pth", ".safetensors")
SAFETENSORS = ".safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's contents: the manifest and the converted model's state_dict.

    Attributes:
        manifest: what the conversion did (:class:`~scconv_surgery.manifest.Manifest`).
        state_dict: the converted model's tensors, by name.
    """

    manifest: Manifest
    state_dict: Mapping[str, torch.Tensor] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``.pt`` payload: ``{"format", "format_version", "manifest", "state_dict"}``, plain
        values and tensors only (``torch.load(weights_only=True)`` reads it)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "manifest": self.manifest.to_dict(),
                "state_dict": dict(self.state_dict)}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Checkpoint:
        """Read :meth:`to_dict`'s form (no checks: :func:`read_checkpoint` checks a file)."""
        return cls(Manifest.from_dict(payload["manifest"]), dict(payload["state_dict"]))

    def model(self, path: str | os.PathLike = "<checkpoint>", *, map_location: Any = "cpu") -> nn.Module:
        """The converted model: the base rebuilt, the replacements replayed, this state_dict
        loaded strictly; in eval mode. ``path`` names the file in errors.

        Raises:
            CheckpointError: the recorded plan or the state_dict does not fit the rebuilt model
                (the missing and unexpected keys are listed).
            UnknownModelError: the installed timm / torchvision does not know the base model.
        """
        model = rebuild(path, self.manifest)
        own = model.state_dict()
        missing = sorted(set(own) - set(self.state_dict))
        unexpected = sorted(set(self.state_dict) - set(own))
        if missing or unexpected:
            raise CheckpointError(str(path), f"state_dict does not fit the rebuilt model: missing {missing}, "
                                  f"unexpected {unexpected}", missing, unexpected)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as err:  # shape mismatches
            raise CheckpointError(str(path), f"state_dict does not fit the rebuilt model: {err}") from err
        if isinstance(map_location, (str, torch.device)):
            model.to(map_location)
        return model.eval()


def check_output_path(path: str | os.PathLike, *, overwrite: bool = True,
                      suffixes: tuple[str, ...] | None = SUFFIXES, example: str = "model.pt") -> Path:
    """Check that a checkpoint can be written at ``path``, before any work is done.

    Args:
        path: the output file.
        overwrite: allow replacing an existing file.
        suffixes: the suffixes this kind of file takes (default ``.pt``/``.pth``/``.safetensors``);
            None: any.
        example: a file name the messages suggest.

    Raises:
        OutputPathError: the suffix is not one of ``suffixes``, the path is a
            directory, exists (without ``overwrite``), its directory does not exist or is not
            a directory, or no file can be created there.
    """
    path = Path(path)
    if suffixes is not None and path.suffix not in suffixes:
        raise OutputPathError(str(path), f"unsupported suffix {path.suffix!r}; use one of {', '.join(suffixes)} "
                              f"(e.g. {example})")
    if path.is_dir():
        raise OutputPathError(str(path), f"is a directory; give a file name such as {example}")
    if path.exists() and not overwrite:
        raise OutputPathError(str(path), "exists; overwrite it explicitly, or choose another path", exists=True)
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputPathError(str(path), f"{str(parent)!r} is a file, not a directory")
    if not parent.is_dir():
        raise OutputPathError(str(path), f"directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(str(path), f"directory {str(parent)!r} is not writable")
    try:  # what the write will do: create a file in that directory (catches read-only mounts, /proc)
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".probe", dir=parent):
            pass
    except OSError as err:
        raise OutputPathError(str(path), f"the file system refuses new files in {str(parent)!r} (a read-only or "
                              f"virtual file system? the system says: {err.strerror or err}); choose another "
                              "directory") from err
    return path


def _write_safetensors(f: Any, state_dict: Mapping[str, torch.Tensor], manifest: Mapping[str, Any]) -> None:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    shared: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:
            shared[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.contiguous()
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "manifest": json.dumps(manifest),
                "shared": json.dumps(shared)}
    f.write(save(tensors, metadata=metadata))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, manifest: Manifest) -> Path:
    """Write ``model``'s state_dict and ``manifest`` to ``path`` atomically.

    The suffix picks the form: ``.pt``/``.pth`` (``torch.save`` of :meth:`Checkpoint.to_dict`)
    or ``.safetensors`` (the manifest as JSON in the metadata).

    Ctrl-C, SIGTERM or SIGHUP during the write: the write into the temporary file finishes, the
    temporary file is removed, nothing is left at ``path`` (an existing file there is kept as it
    was), then the signal goes to its handler (KeyboardInterrupt for Ctrl-C); see
    :func:`~scconv_surgery._files.atomic_write`.

    Raises:
        OutputPathError: see :func:`check_output_path`, or the write failed (disk full); nothing
            is left at ``path`` on failure.
    """
    path = check_output_path(path)
    state_dict = {k: v.detach() for k, v in model.state_dict().items()}
    payload = Checkpoint(manifest, state_dict).to_dict()

    def write(f: Any) -> None:
        if path.suffix == SAFETENSORS:
            _write_safetensors(f, {k: v.cpu() for k, v in state_dict.items()}, payload["manifest"])
        else:
            torch.save(payload, f)
    try:
        atomic_write(path, write)
    except Exception as err:  # disk full surfaces as OSError or as torch's RuntimeError
        raise OutputPathError(str(path), f"writing failed ({type(err).__name__}: {str(err).splitlines()[0]}); "
                              "nothing was written") from err
    return path


def _read_safetensors(path: Path, map_location: Any) -> dict[str, Any]:
    from safetensors import safe_open

    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    with safe_open(str(path), framework="pt", device=device) as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            return {"kind": "a safetensors file without scconv metadata (plain weights?)"}
        state_dict = {name: f.get_tensor(name) for name in f.keys()}
    for name, original in json.loads(metadata.get("shared", "{}")).items():
        state_dict[name] = state_dict[original]
    version = metadata.get("format_version", "")
    return {"format": FORMAT, "format_version": int(version) if version.isdigit() else version,
            "manifest": json.loads(metadata["manifest"]), "state_dict": state_dict}


def read_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> Checkpoint:
    """Read and validate a checkpoint file without building the model.

    Returns:
        The :class:`Checkpoint`: its manifest and state_dict.

    Raises:
        CheckpointError: the file is missing, unreadable, not an scconv checkpoint (the
            message says what it looks like instead), or of a newer format version.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(str(path), "is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(str(path), "no such file")
    kind = sniff(path)
    if kind not in (*TORCH_KINDS, "safetensors"):
        raise CheckpointError(str(path), f"not an scconv-surgery checkpoint: it is {describe(path, kind)}",
                              found=describe(path, kind))
    try:
        if kind == "safetensors":
            payload = _read_safetensors(path, map_location)
        else:
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "scconv_surgery.yolo" in str(err):  # weights_only met a pickled YOLO model that holds SCConv layers
            raise CheckpointError(str(path), "is a converted model in ultralytics' format (a pickled model, as "
                                  "save_yolo_checkpoint writes it), not an scconv-surgery checkpoint: use it with "
                                  "ultralytics' YOLO(path); the same conversion's scconv-surgery checkpoint is the "
                                  "other file it wrote", found="a converted YOLO checkpoint") from err
        if "ultralytics" in str(err):  # a dense YOLO model
            raise CheckpointError(str(path), "is a YOLO checkpoint (ultralytics' format: a pickled model), not an "
                                  "scconv-surgery checkpoint: load it with ultralytics' YOLO(path), or convert it "
                                  f"as the model 'ultralytics:{path}'", found="a YOLO checkpoint") from err
        problem = torch_load_problem(err) if kind in TORCH_KINDS else type(err).__name__
        raise CheckpointError(str(path), f"unreadable or truncated: {describe(path, kind)} that does not load ({problem})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and "kind" in payload:
            kind = payload["kind"]
        elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            kind = "a plain state_dict"
        else:
            kind = f"a {type(payload).__name__} without format={FORMAT!r}"
        raise CheckpointError(str(path), f"not an scconv-surgery checkpoint: it holds {kind}", found=kind)
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(str(path), f"format_version {version!r} is newer than this release "
                              f"reads ({FORMAT_VERSION}); upgrade scconv-surgery")
    manifest = payload.get("manifest")
    if not isinstance(manifest, Mapping) or not {"source", "replaced"} <= set(manifest) \
            or not isinstance(payload.get("state_dict"), Mapping):
        raise CheckpointError(str(path), "its manifest or state_dict is missing or incomplete")
    try:
        return Checkpoint(Manifest.from_dict(manifest), dict(payload["state_dict"]))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, ScconvError):
            raise
        raise CheckpointError(str(path), f"its manifest is invalid ({type(err).__name__}: {err})") from err


def rebuild(path: str | os.PathLike, manifest: Manifest, base: nn.Module | None = None) -> nn.Module:
    """The converted architecture a manifest describes, with fresh (unloaded) weights.

    Builds the base model from ``manifest.source`` (or modifies ``base``, if given, in
    place) and replays the recorded replacements by exact name.

    Raises:
        CheckpointError: the recorded plan does not fit the rebuilt base model.
        UnknownModelError: the base model is unknown to the installed timm / torchvision.
    """
    try:
        model = base if base is not None else build_model(manifest.source)
        return apply_plan(model, manifest.plan, seed=None)
    except PlanMismatchError as err:
        raise CheckpointError(str(path), f"the rebuilt base model does not fit: {err}") from err
    except (KeyError, TypeError, ValueError) as err:  # e.g. constructor arguments this library does not take
        if isinstance(err, ScconvError):
            raise
        raise CheckpointError(str(path), f"its manifest is invalid ({type(err).__name__}: {err})") from err


def load(path: str | os.PathLike, *, map_location: Any = "cpu") -> nn.Module:
    """Load a converted model from a checkpoint, ready for fine-tuning or inference.

    Rebuilds the base model from the manifest (without downloading weights), replays the
    recorded replacements by exact name (no rules are evaluated), and loads the state_dict
    strictly.

    Args:
        path: a checkpoint written by ``scconv convert`` or :func:`save_checkpoint`.
        map_location: as for ``torch.load``.

    Returns:
        The converted model, in eval mode.

    Raises:
        CheckpointError: see :func:`read_checkpoint`; or the rebuilt model does not fit the
            recorded replacements or the state_dict (the missing and unexpected keys are
            listed).
        UnknownModelError: the installed timm / torchvision does not know the base model.
    """
    return read_checkpoint(path, map_location=map_location).model(path, map_location=map_location)
