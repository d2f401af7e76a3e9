"""Measuring: how long each eligible conv and its SCConv replacement take on the user's device.

For every conv that :func:`~scconv_surgery.plan.plan_conversion` would replace, the dense conv and
its replacement (built as :func:`~scconv_surgery.apply.build_replacement` builds it) run alone on a
random input of the conv's real input shape (from one :func:`~scconv_surgery.probe.probe_model`
pass), at the batch size, dtype and memory format asked for, on the named device, eager or after
:func:`~scconv_surgery.inference.optimize_for_inference`, as an inference forward or as a training
step (forward and backward). The two variants are timed interleaved, round by round, with the
order rotating each round, so that a machine whose load drifts slows both alike; the result is the
median of the per-round ratios (SCConv / dense) and their spread (interquartile range). The whole
original network is timed the same way, so that a selection can predict the converted network's
latency (:mod:`scconv_surgery.selection`).

The clocks, the device check and the interleaving are in :mod:`scconv_surgery.timing`: on CPUs
the calling thread's CPU time with one intra-op thread, on CUDA devices CUDA events.

Layer results are cached on disk (one JSON file per layer, under
:func:`~scconv_surgery.survey.default_cache_dir`) per conv spec, SCConv config, input shape, device
name, dtype, memory format, mode, clock, repeats and torch version, so that profiling the same
architecture again, or another one sharing its conv shapes, is fast; the whole network's time,
MACs and parameters are cached per architecture (source and every conv's name and spec) likewise.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._probe import noop
from .apply import build_replacement
from .counting import count_model
from .errors import ProfileMismatchError
from .layers import ScConv, ScConvConfig
from .models import ModelSource
from .plan import Decision, Plan
from .rules import Rule
from .timing import (
    ThreadTimer,
    Timer,
    default_timer,
    device_name,
    interleaved,
    ratio_stats,
    resolve_device,
    single_thread,
)

__all__ = ["ProfileSettings", "LayerProfile", "Profile", "ModelTiming", "profile_model", "profile_plan",
           "time_models", "check_profile", "PROFILE_SCHEMA_VERSION"]

PROFILE_SCHEMA_VERSION = 2  # 2: each layer records the SCConv hyperparameters it was measured with
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("inference", "train")
DEFAULT_REPEATS = 15


@dataclass(frozen=True)
class ProfileSettings:
    """How to measure.

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N`` (checked with :func:`resolve_device`).
        batch_size: images per forward (the probed batch dimension is multiplied by it).
        dtype: ``float32``, ``float16`` or ``bfloat16``: of the modules and their inputs.
        channels_last: modules and inputs in ``torch.channels_last`` memory format.
        optimized: time SCConv after :func:`~scconv_surgery.inference.optimize_for_inference`.
        train: time a training step (train mode, forward, backward of the output's sum, input
            gradients included) instead of an inference forward (eval mode, no grad).
        repeats: interleaved rounds per layer (at least 3).
    """

    device: str = "cpu"
    batch_size: int = 1
    dtype: str = "float32"
    channels_last: bool = False
    optimized: bool = False
    train: bool = False
    repeats: int = DEFAULT_REPEATS

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 3:
            raise ValueError(f"repeats must be an integer >= 3, got {self.repeats!r}")

    @property
    def mode(self) -> str:
        return "train" if self.train else "inference"

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "batch_size": self.batch_size, "dtype": self.dtype,
                "channels_last": self.channels_last, "optimized": self.optimized, "train": self.train,
                "repeats": self.repeats}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProfileSettings:
        return cls(**{k: d[k] for k in ("device", "batch_size", "dtype", "channels_last", "optimized", "train",
                                        "repeats") if k in d})


@dataclass(frozen=True)
class LayerProfile:
    """One eligible conv, measured.

    Attributes:
        name: the conv's module name.
        input_shape: the input it was timed on, ``(N, C, H, W)`` with the profile's batch size.
        dense_seconds: median seconds of the dense conv (one forward or training step).
        scconv_seconds: the same for its SCConv replacement.
        ratio: median over rounds of ``scconv / dense`` (below 1: SCConv is faster).
        spread: interquartile range of the per-round ratios.
        macs_before, macs_after: multiply-adds of the conv and of its replacement for one image
            (batch 1, fvcore's count, as the conversion report counts).
        params_before, params_after: parameters of the conv and of its replacement.
        sensitivity: how much replacing this conv alone changes the network's output
            (:mod:`scconv_surgery.sensitivity`), or None when not measured.
        config: the SCConv hyperparameters the replacement was built with (its decision's, after
            any adaptation); None in profiles written before they were recorded (schema 1).
    """

    name: str
    input_shape: tuple[int, ...]
    dense_seconds: float
    scconv_seconds: float
    ratio: float
    spread: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    sensitivity: float | None = None
    config: ScConvConfig | None = None

    @property
    def seconds_saved(self) -> float:
        """``dense - scconv``: what replacing it saves per forward (negative: it costs)."""
        return self.dense_seconds - self.scconv_seconds

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "dense_seconds": self.dense_seconds,
                "scconv_seconds": self.scconv_seconds, "ratio": self.ratio, "spread": self.spread,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "sensitivity": self.sensitivity, "config": self.config.to_dict() if self.config else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerProfile:
        """Read :meth:`to_dict`'s form; ``config`` is optional (schema 1 did not record it)."""
        return cls(d["name"], tuple(d["input_shape"]), float(d["dense_seconds"]), float(d["scconv_seconds"]),
                   float(d["ratio"]), float(d["spread"]), int(d["macs_before"]), int(d["macs_after"]),
                   int(d["params_before"]), int(d["params_after"]),
                   None if d.get("sensitivity") is None else float(d["sensitivity"]),
                   ScConvConfig(**d["config"]) if d.get("config") else None)


@dataclass(frozen=True)
class Profile:
    """The measurements of one model's eligible convs on one device: a plain value, saved as JSON.

    Attributes:
        source: the model measured (its weights do not change latency; they matter for sensitivity).
        settings: how it was measured.
        device_name: the hardware (``NVIDIA H200``, the CPU's model name).
        torch_version: ``torch.__version__``.
        timer: the clock's name (``thread_time``, ``cuda_event``, ``wall``, or an injected one).
        input_size: ``(C, H, W)`` of the network's input.
        model_seconds: median seconds of the whole original network, same settings and clock.
        model_macs, model_params: the original network's MACs (batch 1) and parameters.
        layers: one :class:`LayerProfile` per eligible conv the forward calls, in plan order.
        seconds: wall time the profile took (cached layers are almost free).
        cached_layers: how many layers came from the cache.
    """

    source: ModelSource
    settings: ProfileSettings
    device_name: str
    torch_version: str
    timer: str
    input_size: tuple[int, int, int]
    model_seconds: float
    model_macs: int
    model_params: int
    layers: tuple[LayerProfile, ...]
    seconds: float = 0.0
    cached_layers: int = 0

    def layer(self, name: str) -> LayerProfile | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    def with_sensitivities(self, scores: Mapping[str, float]) -> Profile:
        """A copy with each named layer's ``sensitivity`` set."""
        return replace(self, layers=tuple(replace(layer, sensitivity=scores.get(layer.name, layer.sensitivity))
                                          for layer in self.layers))

    @property
    def has_sensitivities(self) -> bool:
        return bool(self.layers) and all(layer.sensitivity is not None for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": PROFILE_SCHEMA_VERSION, "model": self.source.to_dict(),
                "settings": self.settings.to_dict(), "device_name": self.device_name,
                "torch_version": self.torch_version, "timer": self.timer, "input_size": list(self.input_size),
                "model_seconds": self.model_seconds, "model_macs": self.model_macs,
                "model_params": self.model_params, "seconds": self.seconds,
                "cached_layers": self.cached_layers, "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        """Read :meth:`to_dict`'s form.

        Raises:
            ValueError: a newer schema, or a missing key (as ``ValueError`` naming it).
        """
        if d.get("schema_version", 0) > PROFILE_SCHEMA_VERSION:
            raise ValueError(f"profile schema {d.get('schema_version')} is newer than this version reads "
                             f"({PROFILE_SCHEMA_VERSION})")
        try:
            return cls(ModelSource.from_dict(d["model"]), ProfileSettings.from_dict(d["settings"]),
                       d["device_name"], d["torch_version"], d["timer"], tuple(d["input_size"]),
                       float(d["model_seconds"]), int(d["model_macs"]), int(d["model_params"]),
                       tuple(LayerProfile.from_dict(layer) for layer in d["layers"]), float(d.get("seconds", 0.0)),
                       int(d.get("cached_layers", 0)))
        except KeyError as err:
            raise ValueError(f"not a profile: missing key {err}") from err

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile written by :meth:`save`.

        Raises:
            ProfileMismatchError: the file is missing or is not a profile.
        """
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:
            raise ProfileMismatchError(str(path), f"cannot be read as a profile ({err})") from err


def _same_model(a: ModelSource, b: ModelSource) -> bool:
    """The same architecture: library, name (a timm tag aside) and constructor arguments."""
    return (a.library, a.name.split(".")[0], dict(a.kwargs)) == (b.library, b.name.split(".")[0], dict(b.kwargs))


def check_profile(profile: Profile, source: ModelSource, plan: Plan, device: str | torch.device, *,
                  path: str = "<profile>", input_size: Sequence[int] | None = None) -> None:
    """Refuse a profile measured on another model or device, or whose convs differ from ``plan``'s.

    Args:
        profile: the saved profile.
        source: the model being converted (as recorded by :func:`~scconv_surgery.models.rebuild_base`).
        plan: its plan (every layer of the profile must be one of its convs; the profile's layers that
            the plan does not replace are no candidates for selection).
        device: the device the selection is for.
        path: the profile's file, for the message.
        input_size: ``(C, H, W)`` the conversion runs at; each conv's time depends on its input
            shape, so a profile of another size is refused (None: not checked).

    Raises:
        ProfileMismatchError: another model, another device, another input size, a layer that is not a conv of the model, or
            a conv that ``plan`` replaces with other SCConv hyperparameters (variant, alpha, squeeze ratio,
            groups, gate threshold, stride policy) than the profile measured, or a profile that does not
            record them (schema 1).
    """
    if not _same_model(profile.source, source):
        def named(s: ModelSource) -> str:
            return f"{s.display_name} {dict(s.kwargs)}" if s.kwargs else s.display_name

        raise ProfileMismatchError(path, f"was measured on {named(profile.source)}, not {named(source)}")
    wanted = resolve_device(device)
    measured = torch.device(profile.settings.device)
    if measured.type != wanted.type or (wanted.type == "cuda" and (measured.index or 0) != wanted.index):
        raise ProfileMismatchError(path, f"was measured on {profile.settings.device}, not {wanted}")
    if device_name(wanted) != profile.device_name:
        raise ProfileMismatchError(path, f"was measured on {profile.device_name!r}, this device is "
                                   f"{device_name(wanted)!r}")
    if input_size is not None and tuple(input_size) != tuple(profile.input_size):
        raise ProfileMismatchError(path, f"was measured at input size {'x'.join(map(str, profile.input_size))}, "
                                   f"this conversion runs at {'x'.join(map(str, input_size))}: each conv's time "
                                   "depends on its input's shape")
    specs = {d.name: d.spec for d in plan.decisions}
    foreign = [layer.name for layer in profile.layers if layer.name not in specs]
    if foreign:
        raise ProfileMismatchError(path, f"measures {foreign[0]!r}, which is not a conv of this model "
                                   f"({len(foreign)} such layer{'s' if len(foreign) > 1 else ''})")
    _check_configs(profile, plan, path)


def _check_configs(profile: Profile, plan: Plan, path: str) -> None:
    """Every conv that ``plan`` replaces and ``profile`` measured was measured as the same SCConv:
    variant, alpha, squeeze ratio, groups, gate threshold and stride policy (a faster or slower
    replacement, another sensitivity)."""
    configs = {d.name: d.config for d in plan.replaced}
    measured = [layer for layer in profile.layers if layer.name in configs]
    unrecorded = [layer.name for layer in measured if layer.config is None]
    if unrecorded:
        raise ProfileMismatchError(path, "does not record the SCConv hyperparameters its convs were measured with "
                                   "(written before profiles recorded them); measure again", layer=unrecorded[0],
                                   hyperparameters=tuple(ScConvConfig().to_dict()))
    differing = [(layer, configs[layer.name]) for layer in measured if layer.config != configs[layer.name]]
    if not differing:
        return
    layer, wanted = differing[0]
    before, after = layer.config.to_dict(), (wanted or ScConvConfig()).to_dict()  # type: ignore[union-attr]
    fields = tuple(key for key in after if before.get(key) != after[key])
    more = f" (and {len(differing) - 1} more conv{'s' if len(differing) > 2 else ''})" if len(differing) > 1 else ""
    raise ProfileMismatchError(
        path, f"measured {layer.name!r} as an SCConv with {', '.join(f'{k}={before.get(k)!r}' for k in fields)}; "
        f"this conversion replaces it with {', '.join(f'{k}={after[k]!r}' for k in fields)}{more}",
        layer=layer.name, hyperparameters=fields)


def _runner(module: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], object]:
    """One inference forward (eval, no grad), or one training step (train, forward, backward)."""
    if not train:
        module.eval()

        def forward() -> object:
            with torch.no_grad():
                return module(x)
        return forward
    module.train()
    x = x.detach().requires_grad_(True)

    def step() -> object:
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        leaves = out if isinstance(out, torch.Tensor) else torch.cat([t.float().flatten() for t in _leaves(out)])
        leaves.float().sum().backward()
        return None
    return step


def _leaves(output: Any) -> list[torch.Tensor]:
    from ._probe import tensor_leaves

    return [t for _, t in tensor_leaves(output) if t.is_floating_point()]


def _prepared(module: nn.Module, settings: ProfileSettings, device: torch.device) -> nn.Module:
    module = module.to(device=device, dtype=settings.torch_dtype)
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def _input(shape: Sequence[int], settings: ProfileSettings, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator).to(device=device, dtype=settings.torch_dtype)
    return x.contiguous(memory_format=torch.channels_last) if settings.channels_last and x.dim() == 4 else x


def _optimize(module: nn.Module, shape: Sequence[int]) -> None:
    from .inference import optimize_for_inference

    optimize_for_inference(module, tuple(shape[1:]), batch_size=shape[0])


def _cache_file(cache_dir: Path, decision: Decision, shape: Sequence[int], settings: ProfileSettings,
                name: str, timer: str) -> Path:
    key = json.dumps({"spec": decision.spec.to_dict(), "config": decision.config.to_dict() if decision.config else None,
                      "shape": list(shape), "device_name": name, "device_type": torch.device(settings.device).type,
                      "dtype": settings.dtype, "memory_format": settings.memory_format, "mode": settings.mode,
                      "optimized": settings.optimized, "repeats": settings.repeats, "timer": timer,
                      "torch": torch.__version__, "schema": PROFILE_SCHEMA_VERSION}, sort_keys=True)
    return cache_dir / "profiles" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _measure_layer(conv: nn.Module, decision: Decision, shape: tuple[int, ...], settings: ProfileSettings,
                   device: torch.device, timer: Timer, seed: int) -> LayerProfile:
    dense = _prepared(copy.deepcopy(conv), settings, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = build_replacement(decision, device="cpu")
    size = tuple(shape[1:])  # counted as convert counts: batch 1, float32, before any inference cache
    counted = [count_model(copy.deepcopy(m).float().cpu(), size) for m in (conv, layer)]  # type: ignore[arg-type]
    layer = _prepared(layer, settings, device)
    if settings.optimized and not settings.train:
        _optimize(layer, shape)
    x = _input(shape, settings, device, seed)
    times = interleaved({"dense": _runner(dense, x, settings.train), "scconv": _runner(layer, x, settings.train)},
                         decision.name, timer, settings.repeats)
    ratio, spread = ratio_stats(times["dense"], times["scconv"])
    return LayerProfile(decision.name, tuple(shape), statistics.median(times["dense"]),
                        statistics.median(times["scconv"]), ratio, spread, counted[0].macs, counted[1].macs,
                        decision.params_before, decision.params_after, config=decision.config)


@dataclass(frozen=True)
class ModelTiming:
    """Two whole networks timed interleaved: the original and a converted one.

    Attributes:
        original_seconds, converted_seconds: medians of one forward (or training step).
        ratio: median over rounds of ``converted / original``.
        spread: interquartile range of the per-round ratios.
    """

    original_seconds: float
    converted_seconds: float
    ratio: float
    spread: float

    def to_dict(self) -> dict[str, Any]:
        return {"original_seconds": self.original_seconds, "converted_seconds": self.converted_seconds,
                "ratio": self.ratio, "spread": self.spread}


def _network_runners(models: Mapping[str, nn.Module], input_size: Sequence[int], settings: ProfileSettings,
                     device: torch.device) -> dict[str, Callable[[], object]]:
    shape = (settings.batch_size, *input_size)
    x = _input(shape, settings, device)
    runners = {}
    for label, model in models.items():
        model = _prepared(copy.deepcopy(model), settings, device)
        if settings.optimized and not settings.train and any(isinstance(m, ScConv) for m in model.modules()):
            _optimize(model, shape)
        runners[label] = _runner(model, x, settings.train)
    return runners


def time_models(original: nn.Module, converted: nn.Module, input_size: Sequence[int], settings: ProfileSettings,
                *, timer: Timer | None = None) -> ModelTiming:
    """Time ``converted`` against ``original`` end to end, interleaved, with the profile's settings.

    Each model is copied (neither is changed) onto the device, dtype and memory format of
    ``settings``; the converted copy goes through ``optimize_for_inference`` when ``settings.optimized``.

    Args:
        original, converted: the networks (same input).
        input_size: ``(C, H, W)``.
        settings: as for :func:`profile_plan` (``repeats`` rounds).
        timer: the clock (default :func:`default_timer`).

    Raises:
        DeviceError: ``settings.device`` does not exist here.
    """
    device = resolve_device(settings.device)
    timer = timer or default_timer(device)
    with single_thread(device.type == "cpu" and isinstance(timer, ThreadTimer)):
        runners = _network_runners({"original": original, "converted": converted}, input_size, settings, device)
        times = interleaved(runners, "", timer, settings.repeats)
    ratio, spread = ratio_stats(times["original"], times["converted"])
    return ModelTiming(statistics.median(times["original"]), statistics.median(times["converted"]), ratio, spread)


def profile_plan(model: nn.Module, source: ModelSource, plan: Plan, input_size: tuple[int, int, int],
                 settings: ProfileSettings = ProfileSettings(), *, timer: Timer | None = None,
                 cache_dir: Path | None | bool = None, seed: int = 0,
                 on_layer: Callable[[str, int, int], None] = noop) -> Profile:
    """Measure every conv ``plan`` replaces, and the whole network, on ``settings.device``.

    Args:
        model: the base model (read, not changed; its weights do not matter for latency).
        source: how it was built (recorded, and checked when a saved profile is reused).
        plan: its plan; every replaced conv that the forward calls is measured at the input shape
            one :func:`~scconv_surgery.probe.probe_model` pass shows, its batch dimension multiplied
            by ``settings.batch_size``.
        input_size: ``(C, H, W)`` of the network's input.
        settings: device, batch size, dtype, memory format, eager / optimized, inference / train.
        timer: the clock (default: :func:`default_timer`). Tests inject one whose times are exact.
        cache_dir: where layer results are cached: None for
            :func:`~scconv_surgery.survey.default_cache_dir`, False for no cache.
        seed: seeds the replacements' initialisation and the random inputs.
        on_layer: called as ``(name, done, total)`` after each layer (progress).

    Returns:
        A :class:`Profile`.

    Raises:
        DeviceError: the device does not exist here (checked before any work).
        ModelForwardError: the model fails on a dummy input of ``input_size``.
    """
    from .probe import probe_model
    from .survey import default_cache_dir

    started = time.perf_counter()
    device = resolve_device(settings.device)
    timer = timer or default_timer(device)
    name = device_name(device)
    folder = None if cache_dir is False else (default_cache_dir() if cache_dir in (None, True) else Path(cache_dir))
    layers, cached = [], 0
    # one thread for the probe pass too: on a loaded machine, idle OpenMP threads waiting for a core slow it 10x
    with single_thread(device.type == "cpu" and isinstance(timer, ThreadTimer)):
        probe = probe_model(model, input_size)
        targets = []
        for decision in plan.replaced:
            call = probe.first_call(decision.name)
            if call is not None and call.input_shape is not None:
                targets.append((decision, (call.input_shape[0] * settings.batch_size, *call.input_shape[1:])))
        for done, (decision, shape) in enumerate(targets, 1):
            path = _cache_file(folder, decision, shape, settings, name, timer.name) if folder else None
            entry = None
            if path is not None and path.is_file():
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    entry = replace(LayerProfile.from_dict(json.loads(path.read_text())), name=decision.name,
                                    config=decision.config)  # the key holds the config
                    cached += 1
            if entry is None:
                entry = _measure_layer(model.get_submodule(decision.name), decision, shape, settings, device,
                                       timer, seed)
                if path is not None:
                    _write_entry(path, entry.to_dict())
            layers.append(entry)
            on_layer(decision.name, done, len(targets))
        whole = _cached_network(folder, model, source, plan, input_size, settings, name, timer, device)
    return Profile(source, replace(settings, device=str(device)), name, torch.__version__, timer.name,
                   tuple(input_size), whole["seconds"], whole["macs"], whole["params"], tuple(layers),
                   time.perf_counter() - started, cached)


def _cached_network(folder: Path | None, model: nn.Module, source: ModelSource, plan: Plan,
                    input_size: Sequence[int], settings: ProfileSettings, name: str, timer: Timer,
                    device: torch.device) -> dict[str, Any]:
    """The whole network's median time, MACs and parameters, from the cache when the same architecture
    (source, every conv's name and spec) was timed with the same settings, device, clock and torch."""
    path = None
    if folder is not None:
        key = json.dumps({"model": [source.library, source.name, dict(source.kwargs)],
                          "convs": [[d.name, d.spec.to_dict()] for d in plan.decisions],
                          "input": list(input_size), "settings": replace(settings, device="").to_dict(),
                          "device_name": name, "device_type": device.type, "timer": timer.name,
                          "torch": torch.__version__, "schema": PROFILE_SCHEMA_VERSION}, sort_keys=True, default=str)
        path = folder / "profiles" / f"network-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            entry = json.loads(path.read_text())
            return {"seconds": float(entry["seconds"]), "macs": int(entry["macs"]), "params": int(entry["params"])}
    runner = _network_runners({"original": model}, input_size, settings, device)
    seconds = statistics.median(interleaved(runner, "", timer, settings.repeats)["original"])
    counts = count_model(model, tuple(input_size))  # type: ignore[arg-type]
    entry = {"seconds": seconds, "macs": counts.macs, "params": counts.params}
    if path is not None:
        _write_entry(path, entry)
    return entry


def _write_entry(path: Path, entry: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        tmp.replace(path)


def profile_model(source: ModelSource | str, settings: ProfileSettings = ProfileSettings(), *,
                  input_size: tuple[int, int, int] | None = None, rules: Sequence[Rule] = (),
                  config: ScConvConfig | None = None, strict_paper: bool = False, timer: Timer | None = None, cache_dir: Path | None | bool = None,
                  seed: int = 0, on_step: Callable[[str], None] = noop,
                  on_layer: Callable[[str, int, int], None] = noop) -> Profile:
    """Build a model by name and measure its eligible convs: ``scconv profile`` as a function.

    Args:
        source: a :class:`~scconv_surgery.models.ModelSource` or a model name.
        settings: how to measure (:class:`ProfileSettings`); its device is checked before any work.
        input_size: ``(C, H, W)``; default the model's own.
        rules, config, strict_paper: as for :func:`~scconv_surgery.plan.plan_conversion` (which convs
            are measured, with which hyperparameters); a conversion that reuses the profile must
            replace each measured conv with the same hyperparameters (:func:`check_profile`).
        timer, cache_dir, seed, on_layer: as for :func:`profile_plan`.
        on_step: called with a short message as each step starts.

    Raises:
        DeviceError: the device does not exist here (before the model is built).
        UnknownModelError, PretrainedWeightsError, WeightsFileError, FactoryError,
            ModelArgumentError: see :func:`~scconv_surgery.models.rebuild_base`.
    """
    from .models import default_input_size, rebuild_base
    from .plan import plan_conversion

    resolve_device(settings.device)
    source = ModelSource.parse(source) if isinstance(source, str) else source
    on_step(f"building {source.display_name}")
    model, source = rebuild_base(source)
    plan = plan_conversion(model, rules, config=config, strict_paper=strict_paper)
    size = tuple(input_size) if input_size else default_input_size(model, source)
    on_step(f"timing {len(plan.replaced)} convs and their SCConvs on {settings.device}")
    return profile_plan(model, source, plan, size, settings, timer=timer, cache_dir=cache_dir, seed=seed,
                        on_layer=on_layer)
