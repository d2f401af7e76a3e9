"""Calibration: teach each new SCConv, without labels, to reproduce the conv it replaced.

A freshly initialised SCConv has forgotten what the pretrained conv it replaces knew. Each
SCConv is fitted, layer by layer, to the replaced conv's output on the activations that reach
it on real (unlabeled) images, then the BatchNorm statistics of the converted network are
re-estimated on the same images. This is layer-wise output reconstruction as in
post-training quantisation (Nagel et al., "Up or Down? Adaptive Rounding", ICML 2020; Li et
al., "BRECQ", ICLR 2021), applied to a changed layer instead of a rounded one; the BatchNorm
update follows ``torch.optim.swa_utils.update_bn``.

Memory stays bounded: the activations of a few layers at a time are recorded (in bfloat16),
under ``max_cache_bytes``; a forward pass stops once the layers it is recording have run.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from ._capture import LayerCalls, group_by_bytes, probe_calls, record
from ._probe import eval_mode, noop
from .errors import CalibrationError
from .finetune import check_batchnorm_images, recompute_batchnorm_stats, stale_batchnorms
from .layers import ScConv
from .probe import probe_example

__all__ = ["CalibrationStrategy", "BatchNormUpdate", "LayerCalibration", "CalibrationResult", "calibrate",
           "check_calibration_options", "check_device"]

CALIBRATION_SCHEMA_VERSION = 1
MAX_HELD_OUT = 64  # images kept out of the fit to measure each layer's error
DEFAULT_STEPS = 200  # measured on the digits example: 50 steps keep 52% of top-1, 100 89%, 200 97%, 400 98%
DEFAULT_BATCH_SIZE = 8  # 8, 16 and 32 fit equally well per step; 8 costs least
DEFAULT_LR = 1e-2
RECORD_DTYPE = torch.bfloat16  # recorded activations: float32's range, 8 bits of mantissa  # 3e-3 converges too slowly in 200 steps, 3e-2 destabilises the last layers


class CalibrationStrategy(str, Enum):
    """Which activations each SCConv is fitted on."""

    INDEPENDENT = "independent"  # the original network's: inputs and targets of the replaced conv
    SEQUENTIAL = "sequential"  # the converted network's inputs (earlier layers already calibrated)


class BatchNormUpdate(str, Enum):
    """Which BatchNorm statistics are re-estimated after the fit."""

    ALL = "all"  # every BatchNorm of the converted network
    AFTER_REPLACED = "after-replaced"  # only the BatchNorm right after each replaced conv
    NONE = "none"  # keep the running statistics as they are


@dataclass(frozen=True)
class LayerCalibration:
    """The fit of one layer.

    Attributes:
        name: the layer's module name.
        error_before: relative squared error ``sum((f(x) - y)**2) / sum(y**2)`` of the new
            layer against the replaced conv's output ``y``, before the fit; None when it is
            undefined: the replaced conv's output is zero on every measured image (e.g.
            all-black images), so there is nothing to be relative to.
        error_after: the same after the fit (None likewise).
        loss: the training loss (mean squared error), averaged over the last tenth of the steps
            (the value the progress display ends on); None with 0 steps.
        seconds: wall time of recording and fitting this layer.
    """

    name: str
    error_before: float | None
    error_after: float | None
    loss: float | None
    seconds: float

    @property
    def undefined(self) -> bool:
        """The relative error is undefined (the replaced conv's output is all zeros)."""
        return self.error_before is None or self.error_after is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "error_before": self.error_before, "error_after": self.error_after,
                "loss": self.loss, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` did.

    Attributes:
        layers: one entry per fitted layer, in the order the network calls them.
        uncalled: requested layers that the forward never calls (not fitted).
        batchnorms: the BatchNorm layers whose statistics were re-estimated.
        num_images: images used (fit + held out).
        held_out: images kept out of the fit on which the errors are measured (0: the errors
            are measured on the fitted images).
        strategy, steps, batch_size, lr, seed, device: the settings.
        seconds: total wall time.
    """

    layers: tuple[LayerCalibration, ...]
    uncalled: tuple[str, ...]
    batchnorms: tuple[str, ...]
    num_images: int
    held_out: int
    strategy: CalibrationStrategy
    steps: int
    batch_size: int
    lr: float
    seed: int
    device: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (stored in the checkpoint's manifest as ``calibration``)."""
        return {"schema_version": CALIBRATION_SCHEMA_VERSION, "strategy": self.strategy.value,
                "num_images": self.num_images, "held_out": self.held_out, "steps": self.steps,
                "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed, "device": self.device,
                "seconds": round(self.seconds, 3), "layers": [layer.to_dict() for layer in self.layers],
                "uncalled": list(self.uncalled), "batchnorms": list(self.batchnorms)}


def _select_layers(original: nn.Module, converted: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """The layers to fit: given, or every SCConv of ``converted`` (one name per module)."""
    if layers is None:  # named_modules lists a module shared under two names once
        layers = [name for name, module in converted.named_modules() if isinstance(module, ScConv)]
        if not layers:
            raise CalibrationError("the converted model holds no SCConv; convert it first")
    for name in layers:
        for model, role in ((original, "original"), (converted, "converted")):
            try:
                model.get_submodule(name)
            except AttributeError:
                raise CalibrationError(f"the {role} model has no such module; pass the model the converted "
                                       "one was made from", name) from None
        if not any(p.is_floating_point() for p in converted.get_submodule(name).parameters()):
            raise CalibrationError("has no parameters to fit", name)
    return list(layers)


def check_calibration_options(*, steps: int, batch_size: int, lr: float, num_images: int | None = None,
                              max_cache_bytes: int | None = None, seed: int | None = None) -> None:
    """Check a calibration's options: the one check :func:`calibrate` and
    :class:`~scconv_surgery.calibration_run.CalibrationConfig` share (None: not given, not checked).

    Args:
        steps: optimizer steps per layer, an integer >= 0.
        batch_size: an integer >= 1.
        lr: Adam's initial learning rate, a finite number above 0.
        num_images: an integer >= 1.
        max_cache_bytes: an integer >= 1.
        seed: an integer >= 0.

    Raises:
        CalibrationError: an option out of range or of the wrong type; ``name`` is the
            option's Python argument (e.g. ``"num_images"``), for the CLI to map to its flag.
    """
    integers = (("num_images", num_images, 1), ("steps", steps, 0), ("batch_size", batch_size, 1),
                ("max_cache_bytes", max_cache_bytes, 1), ("seed", seed, 0))
    for option, value, low in integers:
        if value is not None and (not isinstance(value, int) or value < low):
            raise CalibrationError(f"must be an integer >= {low}, got {value!r}", option)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise CalibrationError(f"must be positive and finite, got {lr!r}", "lr")


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise CalibrationError(f"images must be a non-empty (N, C, H, W) tensor, got {shape}")


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def check_device(device: torch.device | str) -> torch.device:
    """The device ``device`` names, checked to exist on this machine: run before any work.

    Raises:
        CalibrationError: (``name="device"``) not a device name; ``cuda`` without CUDA (or an
            index beyond the devices there are); another accelerator (``mps``, ``xpu``, ...) that
            is absent; ``meta`` (it holds no data).
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise CalibrationError(f"{str(device)!r} is not a device (cpu, cuda, cuda:1, mps, ...)", "device") from err
    if resolved.type == "meta":
        raise CalibrationError("'meta' holds no data: nothing can be computed there; use cpu or an accelerator",
                               "device")
    if resolved.type == "cpu":
        return resolved
    backend = getattr(torch.backends, resolved.type, None) if resolved.type == "mps" else getattr(torch, resolved.type,
                                                                                                   None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        build = f" (this PyTorch, {torch.__version__}, is built without it)" if resolved.type == "cuda" and \
            torch.version.cuda is None else ""
        raise CalibrationError(f"{str(device)!r}: {resolved.type.upper()} is not available on this machine{build}; "
                               "use cpu", "device")
    count = getattr(backend, "device_count", lambda: 1)()
    if resolved.index is not None and resolved.index >= count:
        raise CalibrationError(f"{str(device)!r}: this machine has {count} {resolved.type} device"
                               f"{'s' if count != 1 else ''} ({resolved.type}:0 to {resolved.type}:{count - 1})",
                               "device")
    return resolved


def _resolve_device(device: torch.device | str | None, converted: nn.Module) -> torch.device:
    return check_device(device) if device is not None else _model_device(converted)


def _relative_error(layer: nn.Module, inputs: Sequence[torch.Tensor], targets: Callable, index: torch.Tensor,
                    batch_size: int, device: torch.device) -> float | None:
    """``sum((layer(x) - y)**2) / sum(y**2)`` over the images ``index`` of every call; None when
    ``sum(y**2)`` is 0 (undefined: never ``inf``, which JSON cannot hold and which says nothing)."""
    error = energy = 0.0
    with torch.no_grad():
        for call, xs in enumerate(inputs):
            for start in range(0, len(index), batch_size):
                idx = index[start:start + batch_size]
                x = xs[idx.to(xs.device)].to(device=device, dtype=torch.float32)
                y = targets(call, idx, x)
                error += float((layer.forward(x) - y).double().square().sum())
                energy += float(y.double().square().sum())
    return error / energy if energy > 0 else None


def _fit(layer: nn.Module, inputs: Sequence[torch.Tensor], targets: Callable, train: torch.Tensor, *, steps: int,
         batch_size: int, lr: float, generator: torch.Generator, device: torch.device,
         on_fit: Callable[[int, float], None]) -> float | None:
    """Adam with a cosine schedule on the mean squared error; returns the mean loss of the last
    tenth of the steps (None with 0 steps).

    ``on_fit(step, loss)`` gets the mean loss of the last tenth of the steps so far (at most
    ``max(1, steps // 10)`` steps), so its last value is the returned one: the progress display
    and the table show one "final loss"."""
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    order = torch.empty(0, dtype=torch.long)
    window = max(1, steps // 10)
    tail: list[float] = []
    for step in range(steps):
        if len(order) < min(batch_size, len(train)):
            order = train[torch.randperm(len(train), generator=generator)]
        idx, order = order[:batch_size], order[batch_size:]
        call = step % len(inputs)
        x = inputs[call][idx.to(inputs[call].device)].to(device=device, dtype=torch.float32)
        y = targets(call, idx, x)
        loss = nn.functional.mse_loss(layer.forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        tail = [*tail[-(window - 1):], float(loss.detach())] if window > 1 else [float(loss.detach())]
        on_fit(step + 1, sum(tail) / len(tail))
    return sum(tail) / len(tail) if tail else None


def _local_targets(conv: nn.Module, device: torch.device) -> Callable:
    """Targets computed on the fly: the replaced conv (a float32 copy) on the same input."""
    reference = copy.deepcopy(conv).float().to(device).requires_grad_(False)

    def targets(call: int, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return reference.forward(x)
    return targets


def _recorded_targets(outputs: Sequence[torch.Tensor], device: torch.device) -> Callable:
    """Targets recorded from the original network (its conv's output on its own input)."""
    def targets(call: int, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return outputs[call][idx.to(outputs[call].device)].to(device=device, dtype=torch.float32)
    return targets


def _calibrate_layer(name: str, converted: nn.Module, inputs: Sequence[torch.Tensor], targets: Callable,
                     split: tuple[torch.Tensor, torch.Tensor], *, steps: int, batch_size: int, lr: float,
                     generator: torch.Generator, device: torch.device, on_fit: Callable,
                     started: float) -> LayerCalibration:
    """Fit a float32 copy of the layer, then copy its parameters back (in the layer's own dtype)."""
    layer = converted.get_submodule(name)
    work = copy.deepcopy(layer).float().to(device)
    for param in work.parameters():
        param.requires_grad_(param.is_floating_point())
    train, held = split
    with eval_mode(work):
        before = _relative_error(work, inputs, targets, held, batch_size, device)
        loss = _fit(work, inputs, targets, train, steps=steps, batch_size=batch_size, lr=lr, generator=generator,
                    device=device, on_fit=lambda step, value: on_fit(name, step, steps, value))
        after = _relative_error(work, inputs, targets, held, batch_size, device)
    layer.load_state_dict(work.state_dict())  # copies into the layer's own tensors, dtype and device
    return LayerCalibration(name, before, after, loss, time.perf_counter() - started)


def _split(num_images: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(fit indices, error indices, held-out count): min(64, N // 8) images are held out when N >= 16."""
    order = torch.randperm(num_images, generator=generator)
    held = min(MAX_HELD_OUT, num_images // 8) if num_images >= 16 else 0
    if held == 0:
        return order, order, 0
    return order[held:], order[:held], held


def _prepare(original: nn.Module, converted: nn.Module, device: torch.device) -> tuple[nn.Module, torch.device]:
    """The original model on ``device`` (a copy if it lives elsewhere: it is never modified), and
    the converted model's own device (it is moved to ``device`` meanwhile)."""
    home = _model_device(converted)
    if _model_device(original) != device:
        original = copy.deepcopy(original).to(device)
    converted.to(device)
    return original, home


def calibrate(original: nn.Module, converted: nn.Module, images: torch.Tensor, *,
              layers: Sequence[str] | None = None, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
              lr: float = DEFAULT_LR,
              strategy: CalibrationStrategy | str = CalibrationStrategy.SEQUENTIAL,
              batchnorm: BatchNormUpdate | str = BatchNormUpdate.ALL, device: torch.device | str | None = None,
              seed: int = 0, max_cache_bytes: int = 512 * 2**20,
              on_step: Callable[[str], None] = noop,
              on_fit: Callable[[str, int, int, float], None] = noop) -> CalibrationResult:
    """Fit each SCConv of ``converted``, **in place**, to the conv it replaced in ``original``; no labels.

    For each layer, in the order the network calls it: record its input on ``images``, fit all
    its parameters (GroupNorm's included) with Adam (cosine schedule from ``lr``) to the mean
    squared error against the replaced conv's output, and measure the relative error before and
    after on held-out images. Then re-estimate BatchNorm statistics on ``images``
    (:func:`recompute_batchnorm_stats`). ``original`` is never modified (read in eval mode).

    Args:
        original: the model ``converted`` was made from (same module names; e.g. the base model
            of :func:`~scconv_surgery.convert`, which works on a copy).
        converted: the converted model; its SCConv parameters and BatchNorm statistics change.
        images: unlabeled images ``(N, C, H, W)``, preprocessed as the model expects (see
            :func:`~scconv_surgery.images.load_images`); any dtype (cast batch by batch).
        layers: names of the layers to fit (default: every SCConv of ``converted``).
        steps: optimizer steps per layer (0: only measure the errors).
        batch_size: images per step, and per forward when recording.
        lr: Adam's initial learning rate.
        strategy: ``sequential`` (default) fits each layer on the input the *converted* network
            feeds it, earlier layers already calibrated, towards the original network's output
            there, so the fit also corrects the error that earlier layers left; ``independent``
            fits every layer on the original network's activations (fewer forward passes:
            several layers are recorded in one).
        batchnorm: which BatchNorm statistics to re-estimate afterwards (``all`` by default).
        device: where to compute (default: ``converted``'s device); the models return to their
            own devices afterwards.
        seed: seeds the split of the images and the order of the batches.
        max_cache_bytes: bound on the recorded activations held at once (bfloat16; the inputs of
            one layer for all images are the floor).
        on_step: called with a short message as each phase starts.
        on_fit: called after every optimizer step with ``(layer, step, steps, loss)``.

    Returns:
        A :class:`CalibrationResult` with one :class:`LayerCalibration` per fitted layer.

    Raises:
        CalibrationError: the images are not a non-empty ``(N, C, H, W)`` tensor or the model's
            forward fails on them, an option is out of range, a layer is missing from either model,
            or ``device`` is absent (:func:`check_device`).
    """
    started = time.perf_counter()
    strategy, batchnorm = CalibrationStrategy(strategy), BatchNormUpdate(batchnorm)
    _check_images(images)
    check_calibration_options(steps=steps, batch_size=batch_size, lr=lr, max_cache_bytes=max_cache_bytes)
    names = _select_layers(original, converted, layers)
    device = _resolve_device(device, converted)
    generator = torch.Generator().manual_seed(seed)
    train, held, held_count = _split(images.shape[0], generator)
    reference, home = _prepare(original, converted, device)
    try:
        on_step("tracing the layers' order")
        first = images[:1].to(device=device, dtype=next(reference.parameters()).dtype)
        try:
            probe = probe_example(reference, first)  # the layers' order, and the norms after them
        except Exception as err:
            raise CalibrationError(f"the original model's forward fails on one image of shape {tuple(first.shape)} "
                                   f"({type(err).__name__}: {err}); the images must be what the model takes, "
                                   "preprocessed") from err
        calls = probe_calls(probe, names)
        uncalled = tuple(n for n in names if n not in {c.name for c in calls})
        chosen = None
        if batchnorm is BatchNormUpdate.AFTER_REPLACED:
            chosen = stale_batchnorms(probe, [c.name for c in calls])
        if batchnorm is not BatchNormUpdate.NONE:  # before any fitting: can the statistics be re-estimated?
            check_batchnorm_images(converted, probe, images.shape[0], names=chosen)
        fit_layers = _fit_sequential if strategy is CalibrationStrategy.SEQUENTIAL else _fit_independent
        fitted = fit_layers(reference, converted, calls, images, max_cache_bytes=max_cache_bytes, on_step=on_step,
                            split=(train, held), steps=steps, batch_size=batch_size, lr=lr, generator=generator,
                            device=device, on_fit=on_fit)
        updated: list[str] = []
        if batchnorm is not BatchNormUpdate.NONE:
            on_step("re-estimating BatchNorm statistics")
            updated = recompute_batchnorm_stats(converted, images, batch_size=batch_size, names=chosen, probe=probe)
    finally:
        converted.to(home)
    return CalibrationResult(tuple(fitted), uncalled, tuple(updated), images.shape[0], held_count, strategy,
                             steps, batch_size, float(lr), seed, str(device), time.perf_counter() - started)


def _fit_independent(original: nn.Module, converted: nn.Module, calls: Sequence[LayerCalls], images: torch.Tensor,
                     *, max_cache_bytes: int, on_step: Callable, **fit: Any) -> list[LayerCalibration]:
    """Each layer on the original network's activations: one forward of the original records a
    group's inputs (held together under ``max_cache_bytes``); the targets are the replaced convs
    applied to them."""
    n, results = images.shape[0], []
    sizes = lambda c: (c.values_per_image() * n * RECORD_DTYPE.itemsize, 0)  # noqa: E731
    for group in group_by_bytes(calls, sizes, max_cache_bytes):
        started = time.perf_counter()
        on_step(f"recording the inputs of {', '.join(c.name for c in group)}")
        recorded = record(original, group, images, batch_size=fit["batch_size"], dtype=RECORD_DTYPE)
        for layer in group:
            targets = _local_targets(original.get_submodule(layer.name), fit["device"])
            results.append(_calibrate_layer(layer.name, converted, recorded.pop(layer.name), targets,
                                            started=started, **fit))
            started = time.perf_counter()
    return results


def _fit_sequential(original: nn.Module, converted: nn.Module, calls: Sequence[LayerCalls], images: torch.Tensor,
                    *, max_cache_bytes: int, on_step: Callable, **fit: Any) -> list[LayerCalibration]:
    """Each layer on the converted network's input, towards the original network's output: one
    forward of the original records a group's outputs (they do not change), then each layer's
    input is recorded in the converted network just before it is fitted, so it reflects the
    layers fitted before it. Held at once: the group's outputs and one layer's inputs."""
    n, results = images.shape[0], []
    sizes = lambda c: (c.values_per_image(inputs=False, outputs=True) * n * RECORD_DTYPE.itemsize,  # noqa: E731
                       c.values_per_image() * n * RECORD_DTYPE.itemsize)
    for group in group_by_bytes(calls, sizes, max_cache_bytes):
        on_step(f"recording the outputs of {', '.join(c.name for c in group)} in the original")
        outputs = record(original, group, images, batch_size=fit["batch_size"], inputs=False, outputs=True,
                         dtype=RECORD_DTYPE)
        for layer in group:
            started = time.perf_counter()
            on_step(f"recording the input of {layer.name} in the converted network")
            inputs = record(converted, [layer], images, batch_size=fit["batch_size"], dtype=RECORD_DTYPE)
            targets = _recorded_targets(outputs.pop(layer.name), fit["device"])
            results.append(_calibrate_layer(layer.name, converted, inputs[layer.name], targets, started=started,
                                            **fit))
            del inputs, targets
    return results
