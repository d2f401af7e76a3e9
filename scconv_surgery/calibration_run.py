"""Calibration from a folder of images: settings in, the result in the manifest.

:func:`calibrate_from_folder` is the calibration step of a conversion
(:func:`~scconv_surgery.pipeline.run_conversion`); :func:`calibrate_checkpoint` calibrates a
saved checkpoint. A saved checkpoint does not
hold the weights of the convs it replaced, so :func:`calibrate_checkpoint` rebuilds the
original model from what its manifest records about the base weights:

- ``pretrained``: the library's pretrained weights (same timm tag), from the local cache or
  downloaded; offline without a cached copy, pass the weights file instead;
- ``file``: the same file, passed again and checked against the recorded sha256;
- ``random``: rebuilt from the recorded seed, only with ``allow_random_weights`` (fitting
  SCConvs to random convs teaches them nothing useful; it exists for tests and timing).

Either way, the rebuilt original must hold the same parameters as the checkpoint outside the
replaced layers, or the calibration stops with an error (a checkpoint already fine-tuned, or
the wrong weights).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from ._probe import noop
from .calibration import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LR,
    DEFAULT_STEPS,
    BatchNormUpdate,
    CalibrationResult,
    CalibrationStrategy,
    calibrate,
    check_calibration_options,
    check_device,
)
from .checkpoint import check_output_path, read_checkpoint, save_checkpoint
from .errors import CalibrationError
from .images import ImageChoice, check_images, choose_images, image_transform, read_images
from .manifest import Manifest, untouched_tensors
from .models import ULTRALYTICS, ModelSource, WeightsKind, WeightsSource, rebuild_base

__all__ = ["CalibrationConfig", "CalibrationRun", "calibrate_from_folder", "calibrate_checkpoint",
           "check_calibration_source", "check_calibration_images"]


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of a calibration from a folder of images.

    Attributes:
        data: a folder of images, searched recursively (an ImageFolder works; labels unused).
        num_images: how many images to use (a seeded random choice; all if the folder has fewer).
        steps: optimizer steps per layer.
        batch_size: images per step and per forward.
        lr: Adam's initial learning rate.
        strategy: see :class:`~scconv_surgery.calibration.CalibrationStrategy`.
        batchnorm: which BatchNorm statistics to re-estimate; None: the model's default,
            :func:`default_batchnorm_update`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None: where the model is (the CPU).
        seed: seeds the choice of images, their split and the batch order.
        allow_random_weights: calibrate even when the base model has random weights.
    """

    data: Path
    num_images: int = 512
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    strategy: CalibrationStrategy = CalibrationStrategy.SEQUENTIAL
    batchnorm: BatchNormUpdate | None = None
    device: str | None = None
    seed: int = 0
    allow_random_weights: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "strategy", CalibrationStrategy(self.strategy))
        if self.batchnorm is not None:
            object.__setattr__(self, "batchnorm", BatchNormUpdate(self.batchnorm))
        check_calibration_options(num_images=self.num_images, steps=self.steps, batch_size=self.batch_size,
                                  seed=self.seed, lr=self.lr)
        if self.device is not None:  # here, before any work: a missing CUDA is found at once
            check_device(self.device)


@dataclass(frozen=True)
class CalibrationRun:
    """A calibration from a folder: the result, and where the images came from.

    Attributes:
        result: the per-layer fit and the BatchNorm update.
        data: the folder.
        available: image files found in it (``result.num_images`` of them were used).
        requested: the number of images asked for (more than ``available`` means all were used).
        input_size: ``(C, H, W)`` the images were preprocessed to.
        image_notes: what was done to images' values (NaN pixels read as 0), one sentence per
            file; they are among :attr:`warnings`.
    """

    result: CalibrationResult
    data: Path
    available: int
    requested: int
    input_size: tuple[int, int, int]
    image_notes: tuple[str, ...] = ()

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the user should know about this calibration: layers whose relative error is
        undefined (their replaced conv's output is zero on the measured images), layers whose error
        grew during the fit, and too few images to hold some out."""
        result = self.result
        found = list(self.image_notes[:3])
        if len(self.image_notes) > 3:
            found.append(f"{len(self.image_notes) - 3} more images held NaN pixels, read as 0 likewise")
        undefined = [layer.name for layer in result.layers if layer.undefined]
        if undefined:
            on = f"the {result.held_out} held-out images" if result.held_out else "the images"
            found.append(f"the relative error of {', '.join(undefined)} is undefined (null in JSON): the replaced "
                         f"conv's output is zero on {on} (all-black or blank images?); the fit ran, but nothing "
                         "measures it: calibrate on real images")
        worse = [layer.name for layer in result.layers if result.steps and not layer.undefined
                 and layer.error_after > layer.error_before]  # type: ignore[operator]
        if worse:
            found.append(f"the error grew during the fit for {', '.join(worse)}: give more images or more steps")
        if result.num_images < result.batch_size or not result.held_out:
            found.append(f"{result.num_images} images are few for calibration (at least 16 hold some out to measure "
                         f"the errors; a batch is {result.batch_size}): the BatchNorm statistics and the errors rest "
                         "on them alone")
        return tuple(found)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``calibration`` entry and the JSON report's."""
        return {**self.result.to_dict(), "data": str(self.data), "images_available": self.available,
                "images_requested": self.requested, "input_size": list(self.input_size)}


def check_calibration_images(config: CalibrationConfig) -> ImageChoice:
    """The image files calibration will read (the seeded choice of :func:`load_images`), each
    checked to open as an image, without decoding the pixels: run before any work.

    Raises:
        ImageDataError: the folder is missing or empty, or a chosen file is not an image (named).
    """
    choice = choose_images(config.data, config.num_images, config.seed)
    check_images(choice.paths)
    return choice


def check_calibration_source(has_trained_weights: bool, config: CalibrationConfig) -> ImageChoice:
    """Refuse a random base model unless allowed, and a missing or empty folder or a chosen file
    that is not an image (before any work; see :func:`check_calibration_images`).

    Args:
        has_trained_weights: the base model starts from pretrained or file weights.
        config: the calibration settings.

    Returns:
        The checked choice of images (see :func:`check_calibration_images`).

    Raises:
        CalibrationError: random base weights and ``allow_random_weights`` is off.
        ImageDataError: the folder is missing or holds no images, or a chosen file is not an image.
    """
    if not has_trained_weights and not config.allow_random_weights:
        raise CalibrationError("the base model has random weights, so the SCConvs would learn to imitate random "
                               "convs; start from pretrained or file weights, or allow random weights to calibrate "
                               "anyway (tests, timing)", "allow_random_weights")
    return check_calibration_images(config)


def default_batchnorm_update(source: ModelSource | None) -> BatchNormUpdate:
    """Which BatchNorm statistics a calibration re-estimates unless told: every one
    (:attr:`BatchNormUpdate.ALL`), except for ultralytics YOLO models (:attr:`BatchNormUpdate.NONE`).

    A YOLO model's statistics come from mosaic-augmented training images that plain images do
    not reproduce: re-estimating them undoes more than the fit gains. Measured on a yolov8n
    trained 60 epochs, 64 px, 16 images (relative error of the class scores against the dense
    model, converted with the ``yolo`` preset): 0.020 uncalibrated; calibrated and all
    statistics re-estimated 0.107, those after the replaced convs 0.024, none 0.0007.
    """
    return BatchNormUpdate.NONE if source is not None and source.library == ULTRALYTICS else BatchNormUpdate.ALL


def calibrate_from_folder(original: nn.Module, converted: nn.Module, source: ModelSource | None,
                          input_size: tuple[int, int, int], config: CalibrationConfig, *,
                          images: ImageChoice | None = None,
                          on_step: Callable[[str], None] = noop,
                          on_fit: Callable[[str, int, int, float], None] = noop) -> CalibrationRun:
    """Read images from ``config.data`` with the model's preprocessing and :func:`calibrate` ``converted``.

    ``converted`` is modified in place; ``original`` is not. ``images``: the files to read, as
    :func:`check_calibration_images` chose and checked them (default: chosen here).

    Raises:
        ImageDataError: the folder is missing or empty, or a chosen file cannot be read.
        CalibrationError: see :func:`~scconv_surgery.calibrate`.
    """
    transform = image_transform(original, source, input_size)
    choice = images or choose_images(config.data, config.num_images, config.seed)
    on_step(f"reading {len(choice.paths)} images from {config.data}")
    notes: list[str] = []
    pixels = read_images(choice.paths, transform, notes=notes)
    batchnorm = config.batchnorm if config.batchnorm is not None else default_batchnorm_update(source)
    result = calibrate(original, converted, pixels, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                       strategy=config.strategy, batchnorm=batchnorm, device=config.device,
                       seed=config.seed, on_step=on_step, on_fit=on_fit)
    return CalibrationRun(result, config.data, choice.available, config.num_images,
                          tuple(pixels.shape[1:]), tuple(notes))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CheckpointCalibration:
    """What :func:`calibrate_checkpoint` did.

    Attributes:
        path: the checkpoint read.
        output: the calibrated checkpoint written.
        source: its base model.
        run: the calibration.
        model: the calibrated model.
    """

    path: Path
    output: Path
    source: ModelSource
    run: CalibrationRun
    model: nn.Module = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, "checkpoint": str(self.path), "output": str(self.output),
                "model": self.source.to_dict(), "calibration": self.run.to_dict(),
                "warnings": list(self.run.warnings)}


def _original(manifest: Manifest, weights: str | os.PathLike | None, allow_random: bool,
              trust_pickle: bool = False) -> nn.Module:
    """The base model with the weights the checkpoint was converted from (:func:`rebuild_base`)."""
    source = replace(manifest.source, trust_pickle=trust_pickle)
    if weights is not None:  # the recorded file (its sha256 is checked), or in place of pretrained weights
        sha256 = source.weights.sha256 if source.weights.kind is WeightsKind.FILE else None
        entry = source.weights.entry if source.weights.kind is WeightsKind.FILE else None  # the entry read then
        source = replace(source, weights=replace(WeightsSource.file(weights, sha256, entry=entry),
                                                 seed=source.weights.seed))
    elif source.weights.kind is WeightsKind.FILE:
        raise CalibrationError(f"the checkpoint was converted from the weights file {source.weights.name!r}; "
                               "pass that file (its sha256 is checked)", "weights")
    elif source.weights.kind is WeightsKind.RANDOM and not allow_random:
        raise CalibrationError("the checkpoint's base model has random weights, so calibration would teach the "
                               "SCConvs to imitate random convs; allow random weights to do it anyway (tests, timing)",
                               "allow_random_weights")
    model, _ = rebuild_base(source)
    return model


def _check_untouched(path: Path, original: nn.Module, converted: nn.Module, manifest: Manifest) -> None:
    """The original's tensors outside the replaced layers must equal the checkpoint's."""
    comparison = untouched_tensors(manifest, converted.state_dict(), original.state_dict())
    differ = [*comparison.differ, *comparison.missing]
    if differ:
        raise CalibrationError(f"the rebuilt original model differs from checkpoint {str(path)!r} outside the replaced "
                               f"layers ({len(differ)} tensors, e.g. {', '.join(differ[:3])}): the checkpoint was "
                               "trained after conversion, or these are not the weights it was converted from. "
                               "Calibrate right after conversion, from the original weights", "weights")


def calibrate_checkpoint(path: str | os.PathLike, config: CalibrationConfig, *, out: str | os.PathLike,
                         weights: str | os.PathLike | None = None, overwrite: bool = False,
                         trust_pickle: bool = False, on_step: Callable[[str], None] = noop,
                         on_fit: Callable[[str, int, int, float], None] = noop) -> CheckpointCalibration:
    """Calibrate a saved checkpoint's SCConvs and write the result as a new checkpoint.

    The original model is rebuilt as the module docstring says; the images are preprocessed at
    the checkpoint's recorded input size. The manifest is kept, with ``calibration`` added (or
    replaced).

    Args:
        path: a checkpoint written by ``scconv convert``.
        config: the calibration settings.
        out: the calibrated checkpoint (checked before any work; written atomically).
        weights: the base weights file, when the checkpoint was converted from one (its sha256
            must match the manifest's), or in place of unavailable pretrained weights.
        overwrite: replace an existing ``out`` (it may be ``path`` itself).
        trust_pickle: ``weights`` may be a YOLO checkpoint (a pickle: reading it runs code), for
            a checkpoint converted from one.

    Raises:
        OutputPathError: ``out`` cannot be written, or exists without ``overwrite``.
        CheckpointError: ``path`` is not a readable checkpoint.
        CalibrationError: the original cannot be rebuilt as recorded (random base weights without
            ``allow_random_weights``; a weights file needed), or it differs from the checkpoint.
        WeightsFileError: ``weights`` is unreadable or not the recorded file.
        PretrainedWeightsError: the pretrained weights are neither cached nor downloadable.
        ImageDataError: the folder is missing, empty, or holds an unreadable file.
    """
    out_path = check_output_path(out, overwrite=overwrite)
    on_step(f"reading {path}")
    checkpoint = read_checkpoint(path)
    manifest = checkpoint.manifest
    source = manifest.source
    images = check_calibration_images(config)
    on_step(f"building the original {source.display_name}")
    original = _original(manifest, weights, config.allow_random_weights, trust_pickle)
    converted = checkpoint.model(path)
    _check_untouched(Path(path), original, converted, manifest)
    run = calibrate_from_folder(original, converted, source, manifest.input_size, config, images=images,
                                on_step=on_step, on_fit=on_fit)
    on_step(f"saving {out_path}")
    save_checkpoint(out_path, converted, replace(manifest, calibration=run.to_dict()))
    return CheckpointCalibration(Path(path), out_path, source, run, converted)
