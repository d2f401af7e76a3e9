"""Calibration as the CLI runs it: settings, a folder of images in, the result in the manifest.

:func:`calibrate_from_folder` is the calibration step of ``scconv convert --calibrate DIR``;
:func:`calibrate_checkpoint` is ``scconv calibrate CHECKPOINT``. A saved checkpoint does not
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

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
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
)
from .checkpoint import check_output_path, model_from_payload, read_checkpoint, save_checkpoint
from .errors import CalibrationError, WeightsFileError
from .images import ImageChoice, check_images, choose_images, image_transform, read_images
from .models import ModelSource, create_model
from .weights import file_sha256

__all__ = ["CalibrationConfig", "CalibrationRun", "calibrate_from_folder", "calibrate_checkpoint",
           "check_calibration_source", "check_calibration_images"]


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of a calibration from a folder of images (the CLI's ``--calibrate`` options).

    Attributes:
        data: a folder of images, searched recursively (an ImageFolder works; labels unused).
        num_images: how many images to use (a seeded random choice; all if the folder has fewer).
        steps: optimizer steps per layer.
        batch_size: images per step and per forward.
        lr: Adam's initial learning rate.
        strategy: see :class:`~scconv_surgery.calibration.CalibrationStrategy`.
        batchnorm: which BatchNorm statistics to re-estimate.
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
    batchnorm: BatchNormUpdate = BatchNormUpdate.ALL
    device: str | None = None
    seed: int = 0
    allow_random_weights: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "strategy", CalibrationStrategy(self.strategy))
        object.__setattr__(self, "batchnorm", BatchNormUpdate(self.batchnorm))
        check_calibration_options(num_images=self.num_images, steps=self.steps, batch_size=self.batch_size,
                                  seed=self.seed, lr=self.lr)
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise CalibrationError(f"{self.device!r} is not a device (cpu, cuda, cuda:1, ...)", "device") from err


@dataclass(frozen=True)
class CalibrationRun:
    """A calibration from a folder: the result, and where the images came from.

    Attributes:
        result: the per-layer fit and the BatchNorm update.
        data: the folder.
        available: image files found in it (``result.num_images`` of them were used).
        requested: the number of images asked for (more than ``available`` means all were used).
        input_size: ``(C, H, W)`` the images were preprocessed to.
    """

    result: CalibrationResult
    data: Path
    available: int
    requested: int
    input_size: tuple[int, int, int]

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
                               "convs; start from trained weights (--pretrained or --weights FILE), or pass "
                               "--allow-random-weights to calibrate anyway (tests, timing)", "--calibrate")
    return check_calibration_images(config)


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
    pixels = read_images(choice.paths, transform)
    result = calibrate(original, converted, pixels, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                       strategy=config.strategy, batchnorm=config.batchnorm, device=config.device,
                       seed=config.seed, on_step=on_step, on_fit=on_fit)
    return CalibrationRun(result, config.data, choice.available, config.num_images,
                          tuple(pixels.shape[1:]))  # type: ignore[arg-type]


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
                "model": self.source.to_dict(), "calibration": self.run.to_dict()}


def _original(source: ModelSource, manifest: Mapping[str, Any], weights: str | os.PathLike | None,
              allow_random: bool) -> nn.Module:
    """The base model with the weights the checkpoint was converted from."""
    kind = source.weights.get("kind", "random")
    name = f"{source.library}:{source.name}"
    tag = source.weights.get("tag")
    if weights is not None:
        recorded = source.weights.get("sha256")
        if kind == "file" and recorded and file_sha256(Path(weights)) != recorded:
            raise WeightsFileError(str(weights), f"its sha256 differs from the file the checkpoint was converted "
                                   f"from ({source.weights.get('name')}, sha256 {recorded[:12]}...); pass that file")
        model, _ = create_model(name, weights=weights, model_kwargs=source.kwargs,
                                num_classes=source.kwargs.get("num_classes"))
        return model
    if kind == "file":
        raise CalibrationError(f"the checkpoint was converted from the weights file {source.weights.get('name')!r}; "
                               "pass it with --weights FILE (its sha256 is checked)", "--weights")
    if kind == "pretrained":
        if source.library == "timm" and tag and "." not in source.name:
            name = f"{name}.{tag}"
        model, _ = create_model(name, pretrained=True, model_kwargs=source.kwargs)
        return model
    if not allow_random:
        raise CalibrationError("the checkpoint's base model has random weights, so calibration would teach the "
                               "SCConvs to imitate random convs; pass --allow-random-weights to do it anyway "
                               "(tests, timing)", "--allow-random-weights")
    with torch.random.fork_rng(devices=[]):  # as run_conversion built it
        torch.manual_seed(manifest.get("seed") or 0)
        model, _ = create_model(name, model_kwargs=source.kwargs)
    return model


def _check_untouched(path: Path, original: nn.Module, converted: nn.Module, manifest: Mapping[str, Any]) -> None:
    """The original's parameters outside the replaced layers must equal the checkpoint's."""
    replaced = tuple(f"{d['name']}." for d in manifest["replaced"])
    skip = set(manifest["source"].get("weights", {}).get("reinitialized", []))
    own = dict(converted.named_parameters())
    differ = [key for key, value in original.named_parameters()
              if not key.startswith(replaced) and key not in skip
              and (key not in own or not torch.equal(value, own[key].to(value.dtype)))]
    if differ:
        raise CalibrationError(f"the rebuilt original model differs from checkpoint {str(path)!r} outside the replaced "
                               f"layers ({len(differ)} parameters, e.g. {', '.join(differ[:3])}): the checkpoint was "
                               "trained after conversion, or these are not the weights it was converted from. "
                               "Calibrate right after conversion, from the original weights (--weights FILE)")


def calibrate_checkpoint(path: str | os.PathLike, config: CalibrationConfig, *, out: str | os.PathLike,
                         weights: str | os.PathLike | None = None, overwrite: bool = False,
                         on_step: Callable[[str], None] = noop,
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
    payload = read_checkpoint(path)
    manifest = payload["manifest"]
    source = ModelSource.from_dict(manifest["source"])
    images = check_calibration_images(config)
    on_step(f"building the original {source.library}:{source.name}")
    original = _original(source, manifest, weights, config.allow_random_weights)
    converted = model_from_payload(path, payload)
    _check_untouched(Path(path), original, converted, manifest)
    size = tuple(manifest.get("input_size") or (3, 224, 224))
    run = calibrate_from_folder(original, converted, source, size, config, images=images,  # type: ignore[arg-type]
                                on_step=on_step, on_fit=on_fit)
    on_step(f"saving {out_path}")
    save_checkpoint(out_path, converted, {**copy.deepcopy(dict(manifest)), "calibration": run.to_dict()})
    return CheckpointCalibration(Path(path), out_path, source, run, converted)
