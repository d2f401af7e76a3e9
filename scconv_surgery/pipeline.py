"""The main job end to end: load a model by name, plan, apply, count, save.

:func:`run_conversion` is what ``scconv convert`` calls; it checks every input (output path,
rules) before doing any work, never mutates the base model, and writes nothing when a check
fails.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._probe import noop
from .apply import apply_plan, check_shapes, copy_model
from .calibration_run import CalibrationConfig, CalibrationRun, calibrate_from_folder, check_calibration_source
from .checkpoint import build_manifest, check_output_path, read_checkpoint, rebuild, recorded_plan, save_checkpoint
from .counting import CountReport, compare_counts
from .errors import NothingSelectedError, OutputPathError, UnmatchedRuleError
from .finetune import gradient_free_parameters, new_parameter_names, reset_batchnorm_stats, stale_batchnorms
from .layers import ScConvConfig
from .models import ModelSource, build_model, create_model, default_input_size
from .plan import Plan, plan_conversion
from .probe import probe_model
from .rules import Rule, validate_rules

__all__ = ["ConversionResult", "run_conversion", "CheckpointReport", "recount_checkpoint", "RESULT_SCHEMA_VERSION"]

RESULT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ConversionResult:
    """What one conversion did.

    Attributes:
        source: how the base model was built.
        plan: the decision for every conv.
        report: parameters and MACs before and after.
        model: the converted model (a copy; the base model is untouched).
        output: the checkpoint path (written unless ``dry_run``), or None.
        seed: the initialisation seed of the new modules.
        dry_run: nothing was written.
        stale_batchnorms: BatchNorm layers right after a replaced conv.
        reset_bn_stats: whether their running statistics were reset.
        calibration: the calibration of the new layers, if asked for (None in a dry run).
        calibration_images: how many images calibration reads (or, in a dry run, would read),
            each checked to open as an image; None without calibration.
    """

    source: ModelSource
    plan: Plan
    report: CountReport
    model: nn.Module
    output: Path | None
    seed: int
    dry_run: bool
    stale_batchnorms: tuple[str, ...] = ()
    reset_bn_stats: bool = False
    calibration: CalibrationRun | None = None
    calibration_images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (``schema_version`` at the root)."""
        return {"schema_version": RESULT_SCHEMA_VERSION, "model": self.source.to_dict(),
                "dry_run": self.dry_run,
                "output": str(self.output) if self.output and not self.dry_run else None,
                "would_write": str(self.output) if self.output and self.dry_run else None,
                "seed": self.seed, "plan": self.plan.to_dict(), "counts": self.report.to_dict(),
                "stale_batchnorms": list(self.stale_batchnorms), "reset_bn_stats": self.reset_bn_stats,
                "calibration": self.calibration.to_dict() if self.calibration else None}


def _pattern_suggestions(patterns: Sequence[str], plan: Plan) -> list[str]:
    """Patterns that would match: ``*.PATTERN`` for a plain pattern that ends some conv names
    (people expect suffixes), and the pieces of a pattern with commas (one rule per pattern)."""
    names = [n for d in plan.decisions for n in (d.name, *d.aliases)]
    suggestions = []
    for p in patterns:
        if "," in p:
            suggestions += [piece.strip() for piece in p.split(",") if piece.strip()]
        elif not p.startswith("re:") and not any(c in p for c in "*?[") and any(n.endswith(f".{p}") for n in names):
            suggestions.append(f"*.{p}")
    return suggestions


def run_conversion(name: str, *, rules: Sequence[Rule] = (), config: ScConvConfig | None = None,
                   strict_paper: bool = False, pretrained: bool = False, weights: str | os.PathLike | None = None,
                   num_classes: int | None = None, model_kwargs: Mapping[str, Any] | None = None,
                   input_size: tuple[int, int, int] | None = None,
                   out: str | os.PathLike | None = None, dry_run: bool = False, seed: int = 0,
                   allow_unmatched: bool = False, count_elementwise: bool = False, reset_bn_stats: bool = False,
                   overwrite: bool = False, calibration: CalibrationConfig | None = None,
                   on_step: Callable[[str], None] = noop,
                   on_fit: Callable[[str, int, int, float], None] = noop) -> ConversionResult:
    """Convert the model ``name`` and save a checkpoint at ``out`` unless ``dry_run``.

    Args:
        name: ``resnet50``, ``timm:NAME`` or ``torchvision:NAME``.
        rules: include / exclude rules; empty replaces every eligible conv.
        config: SCConv hyperparameters (default: the paper's).
        strict_paper: never adapt hyperparameters to a conv's channels (see
            :func:`~scconv_surgery.plan.plan_conversion`).
        pretrained, weights, num_classes, model_kwargs: see
            :func:`~scconv_surgery.models.create_model`.
        input_size: ``(C, H, W)`` to count at; default the model's own
            (:func:`~scconv_surgery.models.default_input_size`).
        out: checkpoint path (``.pt``), checked first even in a dry run.
        dry_run: plan, apply to a copy and count, but write nothing.
        seed: initialisation seed of the new modules, and of the base model when it has
            neither pretrained nor file weights (stored in the manifest).
        allow_unmatched: do not fail when an include rule matches no conv.
        count_elementwise: also count SCConv's elementwise operators (apart from MACs).
        reset_bn_stats: reset the running statistics of the BatchNorms right after a
            replaced conv (they were gathered on the dense conv's outputs).
        overwrite: replace an existing file at ``out`` (never the ``weights`` file).
        calibration: fit the new layers to the replaced convs on a folder of images before
            saving (:func:`~scconv_surgery.calibration_run.calibrate_from_folder`); the folder
            and the base weights are checked first; a dry run checks but does not calibrate.
        on_step: called with a short message as each step starts (progress display).
        on_fit: called after each calibration step with ``(layer, step, steps, loss)``.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        OutputPathError: ``out`` cannot be written, exists (without ``overwrite``) or is the
            weights file (checked before any work).
        InvalidRuleError: a rule cannot be evaluated.
        UnknownModelError, PretrainedWeightsError, WeightsFileError: see ``create_model``.
        UnmatchedRuleError: an include rule matched no conv (unless ``allow_unmatched``).
        NothingSelectedError: no conv is replaced.
        ShapeMismatchError: a replacement does not return its conv's shape (nothing is saved).
        CalibrationError, ImageDataError: see ``calibration`` (checked before any work).
    """
    out_path = check_output_path(out, overwrite=overwrite) if out is not None else None
    if out_path is not None and weights is not None and Path(weights).resolve() == out_path.resolve():
        raise OutputPathError(str(out_path), "is the --weights file; write the checkpoint elsewhere")
    validate_rules(rules)
    images = check_calibration_source(pretrained or weights is not None, calibration) if calibration else None
    config = config or ScConvConfig()
    on_step(f"building {name}")
    with torch.random.fork_rng(devices=[]):  # a randomly initialised base is reproducible too
        torch.manual_seed(seed)
        base, source = create_model(name, pretrained=pretrained, weights=weights, num_classes=num_classes,
                                    model_kwargs=model_kwargs)
    on_step("planning")
    plan = plan_conversion(base, rules, config=config, strict_paper=strict_paper)
    unmatched = plan.unmatched_includes()
    if unmatched and not allow_unmatched:
        raise UnmatchedRuleError(unmatched, _pattern_suggestions(unmatched, plan), plan=plan)
    if not plan.replaced:
        raise NothingSelectedError(plan.skip_summary(), plan=plan)
    on_step(f"replacing {len(plan.replaced)} convs")
    converted = apply_plan(copy_model(base), plan, seed=seed)
    size = tuple(input_size) if input_size else default_input_size(base, source)
    on_step(f"checking output shapes at {'x'.join(map(str, size))}")
    probe = probe_model(base, size)  # the base model's one forward besides fvcore's: a failure is ModelForwardError
    check_shapes(probe, converted, plan)
    stale = stale_batchnorms(probe, [d.name for d in plan.replaced])
    if reset_bn_stats:
        reset_batchnorm_stats(converted, stale)
    on_step(f"counting at {'x'.join(map(str, size))}")
    report = compare_counts(base, converted, size, replaced=plan.replaced, count_elementwise=count_elementwise)
    calibrated = None
    if calibration is not None and not dry_run:  # the calibration step: the new layers learn from the old
        calibrated = calibrate_from_folder(base, converted, source, size, calibration, images=images,
                                           on_step=on_step, on_fit=on_fit)
    if out_path is not None and not dry_run:
        on_step(f"saving {out_path}")
        manifest = build_manifest(source, plan, seed=seed, input_size=size, counts=report.to_dict(),
                                  new_parameters=new_parameter_names(converted),
                                  gradient_free_parameters=gradient_free_parameters(converted), stale_batchnorms=stale,
                                  reset_bn_stats=reset_bn_stats,
                                  calibration=calibrated.to_dict() if calibrated else None)
        save_checkpoint(out_path, converted, manifest)
    return ConversionResult(source, plan, report, converted, out_path, seed, dry_run, tuple(stale), reset_bn_stats,
                            calibrated, len(images.paths) if images else None)


@dataclass(frozen=True)
class CheckpointReport:
    """Counts of a saved checkpoint against its base model.

    Attributes:
        path: the checkpoint.
        source: its base model.
        plan: its replaced convs (as recorded).
        report: parameters and MACs before and after.
    """

    path: Path
    source: ModelSource
    plan: Plan
    report: CountReport

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": RESULT_SCHEMA_VERSION, "checkpoint": str(self.path),
                "model": self.source.to_dict(), "replaced": [d.name for d in self.plan.replaced],
                "counts": self.report.to_dict()}


def recount_checkpoint(path: str | os.PathLike, *, input_size: tuple[int, int, int] | None = None,
                       count_elementwise: bool = False,
                       on_step: Callable[[str], None] = noop) -> CheckpointReport:
    """Count a checkpoint's converted model against its base model, at any input size.

    The base model is rebuilt from the manifest and the recorded replacements are replayed
    on a copy; counts do not depend on weights, so the state_dict is not loaded.

    Args:
        path: a checkpoint written by ``scconv convert``.
        input_size: ``(C, H, W)``; default the one recorded in the manifest.
        count_elementwise: also count SCConv's elementwise operators.

    Raises:
        CheckpointError: the file is not a readable checkpoint, or its plan does not fit the
            rebuilt base model.
        UnknownModelError: the base model is unknown to the installed timm / torchvision.
    """
    on_step(f"reading {path}")
    manifest = read_checkpoint(path)["manifest"]
    source = ModelSource.from_dict(manifest["source"])
    on_step(f"building {source.library}:{source.name}")
    base = build_model(source)
    converted = rebuild(path, manifest, base=copy_model(base))
    plan = recorded_plan(manifest)
    size = tuple(input_size) if input_size else tuple(manifest.get("input_size") or default_input_size(base, source))
    on_step(f"counting at {'x'.join(map(str, size))}")
    report = compare_counts(base, converted, size, replaced=plan.replaced, count_elementwise=count_elementwise)
    return CheckpointReport(Path(path), source, plan, report)
