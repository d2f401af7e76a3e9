"""``scconv verify``: check that a checkpoint loads, runs, and kept the weights it started from."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._probe import example_input, noop, tensor_leaves
from .checkpoint import read_checkpoint
from .contracts import DataDependentShapes, data_dependent_leaves
from .errors import CheckpointError, ModelForwardError, WeightsFileError
from .manifest import untouched_tensors
from .models import build_model
from .pipeline import RESULT_SCHEMA_VERSION
from .weights import WeightsKind, file_sha256, fit_weights, read_weights

__all__ = ["Check", "VerifyResult", "verify_checkpoint"]


@dataclass(frozen=True)
class Check:
    """One verification check: what was checked, whether it passed, and the detail."""

    name: str
    passed: bool
    detail: str
    keys: tuple[str, ...] = ()  # the tensors a failed comparison names

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail, "keys": list(self.keys)}


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_checkpoint`.

    Attributes:
        path: the checkpoint.
        checks: each check, in order.
    """

    path: Path
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": RESULT_SCHEMA_VERSION, "checkpoint": str(self.path), "passed": self.passed,
                "checks": [c.to_dict() for c in self.checks]}


def _listed(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _shape_text(shape: tuple[int | str, ...]) -> str:
    """``(2, 10)``, or ``(N, 4)`` for a data-dependent first dim."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _to_model(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``x`` on ``model``'s device and in its floating dtype (the first parameter decides, as for
    every other step that runs a model: :func:`~scconv_surgery._probe.example_input`)."""
    like = example_input(model, (0,))
    return x.to(device=like.device, dtype=like.dtype)


def _contract(shape: tuple[int, ...], data_dependent: bool) -> tuple[int | str, ...]:
    """What of a shape is a contract: all of it, or for a data-dependent leaf all but its first dim."""
    return ("N", *shape[1:]) if data_dependent and shape else shape


def _output_checks(out: Any, expected: Any, data_dependent: frozenset[str] = frozenset()) -> list[Check]:
    """Shape and finiteness, tensor by tensor, of an output that may be nested (lists, dicts, ...).

    ``data_dependent``: paths whose first dimension depends on the input's values
    (:func:`~scconv_surgery.contracts.data_dependent_leaves`); that dimension is not compared."""
    got = [(path, _contract(tuple(t.shape), path in data_dependent)) for path, t in tensor_leaves(out)]
    want = [(path, _contract(tuple(t.shape), path in data_dependent)) for path, t in tensor_leaves(expected)]
    note = (f"; the first dim of {len(data_dependent)} tensor(s) depends on the data (N: detections), not compared"
            if data_dependent else "")
    if not got:
        return [Check("output shape", False, f"the output holds no tensor ({type(out).__name__})")]
    if [path for path, _ in got] == [path for path, _ in want] == ["output"]:  # one tensor
        shape_check = Check("output shape", got == want, f"{got[0][1]} (base model: {want[0][1]}){note}")
    elif got == want:
        count = "1 tensor, of" if len(got) == 1 else f"{len(got)} tensors, each of"
        shape_check = Check("output shape", True, f"{count} the base model's shape: "
                            + _listed([f"{path} {_shape_text(shape)}" for path, shape in got]) + note)
    else:
        base, own = dict(want), dict(got)
        problems = {path: f"{path} {_shape_text(shape)} (base model: "
                          f"{_shape_text(base[path]) if path in base else 'absent'})"
                    for path, shape in got if base.get(path) != shape}
        problems.update({path: f"{path} missing" for path in base if path not in own})
        shape_check = Check("output shape", False, "differs from the base model's: " + _listed(list(problems.values())),
                            tuple(problems))
    bad = [path for path, t in tensor_leaves(out) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    finite_check = Check("finite output", not bad, "all finite" if not bad else f"NaN or inf in {_listed(bad)}",
                         tuple(bad))
    return [shape_check, finite_check]


def verify_checkpoint(path: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                      input_size: tuple[int, int, int] | None = None,
                      on_step: Callable[[str], None] = noop) -> VerifyResult:
    """Check that a checkpoint loads and runs, and optionally that it kept the source weights.

    Checks: the checkpoint loads strictly; a forward at the recorded input size (batch 2,
    eval mode) gives the base model's output shape and finite values, tensor by tensor for
    outputs that are lists, tuples or dicts of tensors (timm ``features_only``, torchvision
    segmentation, Inception's auxiliary logits); a tensor whose first dimension depends on the
    data (a detector's boxes, scores, labels, masks, keypoints:
    :mod:`scconv_surgery.contracts`) is compared on its other dimensions only; with ``weights``, every
    tensor outside the replaced modules equals the weights file's (except the classifier keys
    re-initialised for ``num_classes`` and BatchNorm statistics reset by ``--reset-bn-stats`` or
    re-estimated by calibration).

    A checkpoint that is read but does not load (its recorded plan does not fit the rebuilt base
    model, or its state_dict has missing, unexpected or misshapen tensors) is a failed ``loads``
    check, with the keys, and no further checks: :attr:`VerifyResult.passed` is False (the CLI's
    exit 4), not an exception.

    Raises:
        CheckpointError: the file cannot be read as a checkpoint (missing, not a checkpoint,
            truncated, of a newer format).
        UnknownModelError, FactoryError: the base model cannot be built here.
        WeightsFileError: ``weights`` cannot be read.
    """
    on_step(f"loading {path}")
    checkpoint = read_checkpoint(path)  # read once: the manifest and the model come from it
    manifest = checkpoint.manifest
    try:
        model = checkpoint.model(path)
    except CheckpointError as err:  # read, but its plan or state_dict does not fit: the first check fails
        return VerifyResult(Path(path), (Check("loads", False, err.problem, err.missing_keys + err.unexpected_keys),))
    checks = [Check("loads", True, f"{len(manifest.replaced)} replaced conv{'' if len(manifest.replaced) == 1 else 's'}, state_dict loaded strictly")]
    size = tuple(input_size or manifest.input_size)
    on_step(f"forward at 2x{'x'.join(map(str, size))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(2, *size)
    base = build_model(manifest.source)
    shapes = DataDependentShapes()
    try:
        with torch.no_grad():  # each model gets the input on its own device and in its floating dtype
            out = model(_to_model(x, model))
            with shapes:  # which of the base model's output sizes depend on the data (detections)
                expected = base(_to_model(x, base))
    except Exception as err:
        raise ModelForwardError(manifest.source.display_name, tuple(x.shape), f"{type(err).__name__}: {err}") from err
    checks += _output_checks(out, expected, data_dependent_leaves(expected, shapes))
    if weights is not None:
        on_step(f"comparing with {weights}")
        recorded = manifest.source.weights
        file = read_weights(weights, entry=recorded.entry if recorded.kind is WeightsKind.FILE else None)
        try:  # keyed as the model is: the remapping the conversion applied (legacy keys) applies again
            source_weights = fit_weights(base, file)[0]
        except WeightsFileError:  # keys that do not fit are named by the comparison below
            source_weights = file.fitted_to(base.state_dict()).state_dict
        state = model.state_dict()
        comparison = untouched_tensors(manifest, state, source_weights)
        if comparison.equal:
            detail = f"{comparison.compared} untouched tensors equal the weights file"
        else:
            extra = [k for k in source_weights if k not in state and not k.startswith(manifest.replaced_prefixes)]
            detail = ", ".join(f"{len(keys)} {what} ({_listed(list(keys))})" for keys, what in (
                (extra, "in the file but not in the model: weights of another architecture?"),
                (comparison.missing, "missing from the file"), (comparison.differ, "differ")) if keys)
            if recorded.kind is WeightsKind.FILE and recorded.sha256 and file_sha256(weights) != recorded.sha256:
                detail = f"not the file the model was converted from (its sha256 differs from the recorded " \
                         f"{recorded.name}'s); {detail}"
        checks.append(Check("untouched weights", comparison.equal, detail, comparison.differ + comparison.missing))
    return VerifyResult(Path(path), tuple(checks))
