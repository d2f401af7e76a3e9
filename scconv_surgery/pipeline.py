"""The main job end to end: load a model by name, plan, apply, count, save.

:func:`run_conversion` is what ``scconv convert`` calls; it checks every input (output path,
rules) before doing any work, never mutates the base model, and writes nothing when a check
fails.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from ._probe import noop
from .apply import apply_plan, check_shapes, copy_model
from .calibration_run import CalibrationConfig, CalibrationRun, calibrate_from_folder, check_calibration_source
from .checkpoint import check_output_path, read_checkpoint, rebuild, save_checkpoint
from .counting import CountReport, compare_counts
from .errors import NothingSelectedError, OutputPathError, UnmatchedRuleError
from .finetune import gradient_free_parameters, new_parameter_names, reset_batchnorm_stats, stale_batchnorms
from .layers import ScConvConfig
from .manifest import Manifest
from .models import ULTRALYTICS, ModelSource, build_model, default_input_size, rebuild_base
from .plan import Plan, plan_conversion
from .probe import probe_model
from .rules import Rule, RuleAction
from .profiling import Profile, check_profile, profile_plan, time_models
from .selection import Selection, SelectionConfig, SelectionReport, select_layers, write_rules_file
from .timing import resolve_device

__all__ = ["WriteCheckpoint", "DryRun", "Destination", "ConversionResult", "run_conversion", "CheckpointReport",
           "recount_checkpoint", "RESULT_SCHEMA_VERSION"]

RESULT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class WriteCheckpoint:
    """Where a conversion saves: a checkpoint file (``.pt``/``.pth`` or ``.safetensors``).

    Attributes:
        path: the file.
        overwrite: replace an existing file there (never the base weights file).
    """

    path: Path
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class DryRun:
    """A conversion that writes nothing.

    Attributes:
        path: the checkpoint it would write, checked as a real run would check it; or None.
        overwrite: as for :class:`WriteCheckpoint`, for that check.
    """

    path: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))


Destination = WriteCheckpoint | DryRun


@dataclass(frozen=True)
class ConversionResult:
    """What one conversion did.

    Attributes:
        source: how the base model was built.
        plan: the decision for every conv.
        report: parameters and MACs before and after.
        model: the converted model (a copy; the base model is untouched).
        destination: where it was saved (:class:`WriteCheckpoint`), or :class:`DryRun`.
        seed: the initialisation seed of the new modules.
        stale_batchnorms: norms right after a replaced conv.
        reset_bn_stats: whether their running statistics were reset.
        calibration: the calibration of the new layers, if asked for (None in a dry run).
        calibration_images: how many images calibration reads (or, in a dry run, would read),
            each checked to open as an image; None without calibration.
        warnings: what the user should know that is not an error (an exclude rule that matched
            nothing, a latency prediction that missed by more than 10%, ...), one sentence each.
        selection: with a measured selection, what was chosen, predicted and measured end to end.
        yolo_output: the YOLO ``.pt`` written (in a dry run: that would be written), or None.
    """

    source: ModelSource
    plan: Plan
    report: CountReport
    model: nn.Module
    destination: Destination
    seed: int
    stale_batchnorms: tuple[str, ...] = ()
    reset_bn_stats: bool = False
    calibration: CalibrationRun | None = None
    calibration_images: int | None = None
    warnings: tuple[str, ...] = ()
    selection: SelectionReport | None = None
    yolo_output: Path | None = None

    @property
    def dry_run(self) -> bool:
        return isinstance(self.destination, DryRun)

    @property
    def output(self) -> Path | None:
        """The checkpoint written, or (in a dry run) the one that would be written."""
        return self.destination.path

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (``schema_version`` at the root)."""
        path = str(self.output) if self.output else None
        return {"schema_version": RESULT_SCHEMA_VERSION, "model": self.source.to_dict(),
                "dry_run": self.dry_run,
                "output": None if self.dry_run else path, "would_write": path if self.dry_run else None,
                "yolo_output": None if self.dry_run or not self.yolo_output else str(self.yolo_output),
                "would_write_yolo": str(self.yolo_output) if self.dry_run and self.yolo_output else None,
                "seed": self.seed, "plan": self.plan.to_dict(), "counts": self.report.to_dict(),
                "stale_batchnorms": list(self.stale_batchnorms), "reset_bn_stats": self.reset_bn_stats,
                "calibration": self.calibration.to_dict() if self.calibration else None,
                "warnings": list(self.warnings),
                "selection": self.selection.to_dict() if self.selection else None}


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


def _plan_warnings(plan: Plan) -> tuple[str, ...]:
    """What a plan says that is worth a warning: exclude rules that matched no conv."""
    return tuple(f"exclude rule {rule.pattern!r} matched no conv"
                 for rule, matched in zip(plan.rules, plan.rule_matches)
                 if rule.action is RuleAction.EXCLUDE and matched == 0)


def _destination(output: Destination | str | os.PathLike | None) -> Destination:
    if output is None:
        return DryRun()
    if isinstance(output, (WriteCheckpoint, DryRun)):
        return output
    return WriteCheckpoint(Path(output))


def _check_yolo_output(yolo_output: str | os.PathLike | None, source: ModelSource, destination: Destination,
                       out_path: Path | None) -> Path | None:
    """The checked path of the YOLO ``.pt`` to write, or None."""
    if yolo_output is None:
        return None
    if source.library != ULTRALYTICS:
        raise OutputPathError(str(yolo_output), f"a YOLO checkpoint holds an ultralytics model; "
                              f"{source.display_name!r} is not one (name it 'ultralytics:MODEL.yaml')")
    from .models import _yolo

    path = _yolo().check_yolo_output_path(yolo_output, overwrite=destination.overwrite)
    if out_path is not None and path.resolve() == out_path.resolve():
        raise OutputPathError(str(path), "is also the checkpoint's path; give the YOLO checkpoint its own file")
    weights_path = source.weights_file
    if weights_path is not None and path.resolve() == weights_path.resolve():
        raise OutputPathError(str(path), "is the base model's file; write the YOLO checkpoint elsewhere")
    return path


def run_conversion(model: ModelSource | str, *, output: Destination | str | os.PathLike | None = None,
                   rules: Sequence[Rule] = (), config: ScConvConfig | None = None, strict_paper: bool = False,
                   input_size: tuple[int, int, int] | None = None, seed: int = 0, allow_unmatched: bool = False,
                   count_elementwise: bool = False, reset_bn_stats: bool = False,
                   calibration: CalibrationConfig | None = None, selection: SelectionConfig | None = None,
                   yolo_output: str | os.PathLike | None = None,
                   on_step: Callable[[str], None] = noop,
                   on_fit: Callable[[str, int, int, float], None] = noop) -> ConversionResult:
    """Convert a model and save a checkpoint: ``scconv convert`` as a function.

    Args:
        model: the base model: a :class:`~scconv_surgery.models.ModelSource` (name,
            constructor arguments and :class:`~scconv_surgery.models.WeightsSource`; see
            :meth:`ModelSource.parse <scconv_surgery.models.ModelSource.parse>`), or a name
            (``resnet50``, ``timm:NAME``, ``torchvision:NAME``) for random weights. Its
            constructor runs seeded with ``seed`` unless its weights carry a seed of their own.
        output: :class:`WriteCheckpoint` (or a path: write there, never overwriting), or
            :class:`DryRun` (None: a dry run that names no file). The path is checked first,
            even in a dry run.
        rules: include / exclude rules; empty replaces every eligible conv.
        config: SCConv hyperparameters (default: the paper's).
        strict_paper: never adapt hyperparameters to a conv's channels (see
            :func:`~scconv_surgery.plan.plan_conversion`).
        input_size: ``(C, H, W)`` to count at; default the model's own
            (:func:`~scconv_surgery.models.default_input_size`).
        seed: initialisation seed of the new modules (stored in the manifest).
        allow_unmatched: do not fail when an include rule matches no conv.
        count_elementwise: also count SCConv's elementwise operators (apart from MACs).
        reset_bn_stats: reset the running statistics of the norms right after a replaced conv
            (they were gathered on the dense conv's outputs).
        calibration: fit the new layers to the replaced convs on a folder of images before
            saving (:func:`~scconv_surgery.calibration_run.calibrate_from_folder`); the folder
            and the base weights are checked first; a dry run checks but does not calibrate.
        selection: choose the convs to replace by measurement (:mod:`scconv_surgery.selection`):
            the convs ``rules`` select are profiled on the selection's device (or a saved profile
            is reused, checked to be of this model and device), the chosen set becomes exact-name
            rules that plan the conversion (and, if asked, a rules file), and the converted network
            is timed end to end against the original; the device is checked before any work.
        yolo_output: for an ``ultralytics:`` model, also write the converted model in
            ultralytics' own ``.pt`` format (a pickle, which ``YOLO(path)`` loads;
            :func:`~scconv_surgery.yolo.save_yolo_checkpoint`), with the manifest inside. The
            path is checked first (overwritten only with the destination's ``overwrite``); a
            dry run writes nothing.
        on_step: called with a short message as each step starts (progress display).
        on_fit: called after each calibration step with ``(layer, step, steps, loss)``.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        OutputPathError: the output (or ``yolo_output``) cannot be written, exists (without
            ``overwrite``) or is the weights file (checked before any work); ``yolo_output`` for a
            model that is not an ultralytics one.
        MissingExtraError: an ``ultralytics:`` model without ultralytics installed.
        UnknownModelError, PretrainedWeightsError, WeightsFileError, FactoryError,
            ModelArgumentError: see :func:`~scconv_surgery.models.rebuild_base`.
        UnmatchedRuleError: an include rule matched no conv (unless ``allow_unmatched``).
        NothingSelectedError: no conv is replaced.
        ShapeMismatchError: a replacement does not return its conv's shape (nothing is saved).
        CalibrationError, ImageDataError: see ``calibration`` (checked before any work).
        DeviceError: the selection's device does not exist (checked before any work).
        ProfileMismatchError: a saved profile that cannot be read, or of another model, device or plan.
        SelectionError: a budget that the candidate convs cannot meet.
    """
    destination = _destination(output)
    source = ModelSource.parse(model) if isinstance(model, str) else model
    if source.weights.seed is None:  # a random base (or a re-initialised classifier) is reproducible too
        source = replace(source, weights=replace(source.weights, seed=seed))
    out_path = check_output_path(destination.path, overwrite=destination.overwrite) if destination.path else None
    weights_path = source.weights_file
    if out_path is not None and weights_path is not None and weights_path.resolve() == out_path.resolve():
        raise OutputPathError(str(out_path), "is the base weights file; write the checkpoint elsewhere")
    yolo_path = _check_yolo_output(yolo_output, source, destination, out_path)
    images = check_calibration_source(source.trained, calibration) if calibration else None
    saved_profile = _saved_profile(selection) if selection else None
    if selection is not None and selection.write_rules is not None:  # a rules file it cannot write: before any work
        check_output_path(selection.write_rules, suffixes=None, example="chosen.yaml")
    config = config or ScConvConfig()
    on_step(f"building {source.display_name}")
    base, source = rebuild_base(source)
    size = tuple(input_size) if input_size else default_input_size(base, source)
    on_step("planning")
    # the base model's one forward besides fvcore's (a failure is ModelForwardError): it shows which
    # convs other modules' forwards read the parameters of, each conv's shapes and the norms after
    probe = probe_model(base, size)
    plan = plan_conversion(base, rules, config=config, strict_paper=strict_paper, probe=probe)
    unmatched = plan.unmatched_includes()
    if unmatched and not allow_unmatched:
        raise UnmatchedRuleError(unmatched, _pattern_suggestions(unmatched, plan), plan=plan)
    if not plan.replaced:
        raise NothingSelectedError(plan.skip_summary(), plan=plan)
    chosen = None
    if selection is not None:
        chosen, profile = _select(base, source, plan, size, selection, saved_profile, seed, on_step)
        plan = plan_conversion(base, chosen.rules, config=config, strict_paper=strict_paper, probe=probe)
        if not plan.replaced:
            raise NothingSelectedError(plan.skip_summary(), plan=plan, by_selection=True)
    on_step(f"replacing {len(plan.replaced)} convs")
    converted = apply_plan(copy_model(base), plan, seed=seed)
    on_step(f"checking output shapes at {'x'.join(map(str, size))}")
    check_shapes(probe, converted, plan)
    stale = stale_batchnorms(probe, [d.name for d in plan.replaced])
    selected = None
    if chosen is not None:
        timing = None
        if selection.measure:  # type: ignore[union-attr]
            on_step("timing the converted network against the original")
            timing = time_models(base, converted, size, profile.settings, timer=selection.timer)  # type: ignore[union-attr]
        selected = SelectionReport(chosen, timing, 0.0 if saved_profile else profile.seconds, profile.cached_layers)
    if reset_bn_stats:
        reset_batchnorm_stats(converted, stale)
    on_step(f"counting at {'x'.join(map(str, size))}")
    report = compare_counts(base, converted, size, replaced=plan.replaced, count_elementwise=count_elementwise)
    dry_run = isinstance(destination, DryRun)
    calibrated = None
    if calibration is not None and not dry_run:  # the calibration step: the new layers learn from the old
        calibrated = calibrate_from_folder(base, converted, source, size, calibration, images=images,
                                           on_step=on_step, on_fit=on_fit)
    if out_path is not None and not dry_run:
        on_step(f"saving {out_path}")
        manifest = Manifest(source, plan.replaced, seed=seed, input_size=size, rules=plan.rules,
                            counts=report.to_dict(), new_parameters=tuple(new_parameter_names(converted)),
                            gradient_free_parameters=tuple(gradient_free_parameters(converted)),
                            stale_batchnorms=tuple(stale), reset_bn_stats=reset_bn_stats,
                            calibration=calibrated.to_dict() if calibrated else None)
        save_checkpoint(out_path, converted, manifest)
        if yolo_path is not None:
            from .yolo import save_yolo_checkpoint

            on_step(f"saving {yolo_path}")
            try:
                save_yolo_checkpoint(yolo_path, converted, manifest.to_dict(), overwrite=destination.overwrite)
            except BaseException:  # an error or an interrupt: both files or neither
                out_path.unlink(missing_ok=True)
                raise
    warnings = (_plan_warnings(plan) + (calibrated.warnings if calibrated else ())
                + tuple(w for w in [selected.warning() if selected else None] if w))
    return ConversionResult(source, plan, report, converted, destination, seed, tuple(stale), reset_bn_stats,
                            calibrated, len(images.paths) if images else None, warnings, selected, yolo_path)


def _saved_profile(selection: SelectionConfig) -> tuple[Profile, str] | None:
    """Check the selection's device (before any work) and read its saved profile, if it names one."""
    resolve_device(selection.settings.device)
    if selection.profile is None:
        return None
    if isinstance(selection.profile, Profile):
        return selection.profile, "<profile>"
    return Profile.load(selection.profile), str(selection.profile)


def _select(base: nn.Module, source: ModelSource, plan: Plan, size: tuple[int, ...], selection: SelectionConfig,
            saved: tuple[Profile, str] | None, seed: int, on_step: Callable[[str], None]) -> tuple[Selection, Profile]:
    """Profile the convs ``plan`` replaces (or check a saved profile), choose, write the rules if asked."""
    if saved is None:
        on_step(f"profiling {len(plan.replaced)} convs on {selection.settings.device}")
        profile = profile_plan(base, source, plan, size, selection.settings, timer=selection.timer,  # type: ignore[arg-type]
                               cache_dir=selection.cache_dir, seed=seed)
    else:
        profile, path = saved
        check_profile(profile, source, plan, selection.settings.device, path=path, input_size=size)
    on_step(f"selecting: {selection.criterion.value}")  # type: ignore[union-attr]
    chosen = select_layers(profile, plan, selection.criterion, selection.value, margin=selection.margin,
                           use_sensitivity=selection.use_sensitivity)
    if selection.write_rules is not None:
        on_step(f"writing {selection.write_rules}")
        write_rules_file(selection.write_rules, chosen, profile)
    return chosen, profile


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
    manifest = read_checkpoint(path).manifest
    source = manifest.source
    on_step(f"building {source.display_name}")
    base = build_model(source)
    converted = rebuild(path, manifest, base=copy_model(base))
    plan = manifest.plan
    size = tuple(input_size) if input_size else manifest.input_size
    on_step(f"counting at {'x'.join(map(str, size))}")
    report = compare_counts(base, converted, size, replaced=plan.replaced, count_elementwise=count_elementwise)
    return CheckpointReport(Path(path), source, plan, report)
