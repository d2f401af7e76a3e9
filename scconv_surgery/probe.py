"""One recorded forward of a model: which modules it calls, in what order, on what shapes, and
which normalisation layer runs right after each module.

The steps that need to know how a model runs read one :class:`ModelProbe` instead of each
running a forward with its own hooks: the shape check (:func:`~scconv_surgery.apply.check_shapes`),
the stale-norm finder (:func:`~scconv_surgery.finetune.stale_batchnorms`) and calibration's layer
order (:func:`~scconv_surgery._capture.probe_calls`). fvcore's counting traces the model itself.
As fvcore's ``JitModelAnalysis`` names modules, the names are those of ``named_modules()``: a
module registered under several names (aliases) is recorded under its first one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.overrides import TorchFunctionMode

from ._probe import eval_mode, iter_tensors
from .errors import ModelForwardError

__all__ = ["as_probe", "ModuleCall", "ModelProbe", "probe_model", "probe_example", "keeps_running_stats", "is_norm",
           "ROOT_FORWARD"]

ROOT_FORWARD = ""  # the name under which ModelProbe.outside_reads records the model's own forward

# modules that return their input unchanged in eval mode: "what runs next" looks past them
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout)
# normalisation layers by class; any module holding running statistics counts too (keeps_running_stats)
_NORMALIZATIONS: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def keeps_running_stats(module: nn.Module) -> bool:
    """Whether ``module`` holds running statistics: tensor buffers of its own named ``running_mean``
    and ``running_var``.

    True for BatchNorm of any dimension, ``SyncBatchNorm``, timm's ``BatchNormAct2d``, torchvision's
    ``FrozenBatchNorm2d`` (buffers, no parameters), an InstanceNorm with ``track_running_stats=True``
    and any custom module that registers both buffers; False for a BatchNorm built with
    ``track_running_stats=False`` (its statistics are those of each batch, nothing is kept).
    """
    buffers = dict(module.named_buffers(recurse=False))
    return isinstance(buffers.get("running_mean"), torch.Tensor) and isinstance(buffers.get("running_var"),
                                                                              torch.Tensor)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer: BatchNorm / InstanceNorm of any kind
    (``_NormBase``, so timm's ``BatchNormAct2d`` too), GroupNorm, LayerNorm, RMSNorm and their
    subclasses (timm's ``GroupNormAct``, ``LayerNorm2d``), or any module that keeps running statistics."""
    return isinstance(module, _NORMALIZATIONS) or keeps_running_stats(module)


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module during the probe's forward.

    Attributes:
        input_shape: the shape of its first positional argument, batch dimension included (e.g.
            ``(1, 64, 56, 56)``; a module that folds or splits the batch shows it here); None when
            that argument is not a tensor or there is none.
        output_shape: the shape of its output, batch dimension included; None when the output is
            not a single tensor.
    """

    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None


@dataclass(frozen=True)
class ModelProbe:
    """What one eval-mode, no-grad forward of a model on one input showed.

    Made by :func:`probe_model` (a seeded dummy batch at an input size) or :func:`probe_example`
    (a given input). The model is read, never changed: no hook, mode change or buffer update is
    left behind.

    Attributes:
        model: the model's class name (for messages).
        input_shape: the probed input, ``(N, C, H, W)`` (``N`` is 1 for :func:`probe_model`).
        order: the modules without children (leaves) in the order of their first call.
        calls: every module the forward called, containers included and the root excluded, in the
            order of their first call (when it started), each with one :class:`ModuleCall` per call
            in call order. A module the forward never calls (an unused branch, an auxiliary head
            that runs only in train mode) is absent.
        norms_after: for each called module that is not itself a norm, the normalisation layer
            (:func:`is_norm`) that runs right after it: the first module whose call starts after
            one of its calls ended is that norm, where pass-through modules (``nn.Identity``,
            dropout) and containers that are not norms (``nn.Sequential``, a block: their children
            run next) are looked past. The earliest call followed by a norm decides. A module
            followed by anything else (an activation, a conv, a functional op is not seen) has no
            entry: ``conv2 -> bn2`` is found, ``conv2 -> relu -> bn`` is not.
        running_stats: the called modules that keep running statistics (:func:`keeps_running_stats`),
            in call order.
        outside_reads: for each module whose own parameters were used by a torch function while
            another module's forward was the innermost one running (TridentNet's
            ``F.conv2d(x, self.conv.weight, ...)`` in a block's forward, a tied weight read by
            another layer, ``conv.weight.shape`` read elsewhere), the names of those modules, in
            order of first read; the model's own forward is :data:`ROOT_FORWARD` (``""``). Seen with
            ``torch.overrides.TorchFunctionMode``: only reads by torch functions during this
            forward (a read in a branch the forward does not take, or by code that runs outside
            the forward, is not seen).

    Example:
        >>> probe = probe_model(torchvision.models.resnet50(), (3, 224, 224))
        >>> probe.calls["layer1.0.conv2"][0]
        ModuleCall(input_shape=(1, 64, 56, 56), output_shape=(1, 64, 56, 56))
        >>> probe.norms_after["layer1.0.conv2"], probe.order[:3]
        ('layer1.0.bn2', ('conv1', 'bn1', 'relu'))
    """

    model: str
    input_shape: tuple[int, ...]
    order: tuple[str, ...]
    calls: Mapping[str, tuple[ModuleCall, ...]]
    norms_after: Mapping[str, str]
    running_stats: tuple[str, ...]
    outside_reads: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "calls", MappingProxyType(dict(self.calls)))
        object.__setattr__(self, "norms_after", MappingProxyType(dict(self.norms_after)))
        object.__setattr__(self, "outside_reads", MappingProxyType(dict(self.outside_reads)))

    def first_call(self, name: str) -> ModuleCall | None:
        """The first call of the module ``name``, or None when the forward never called it."""
        calls = self.calls.get(name)
        return calls[0] if calls else None

    def norm_after(self, name: str) -> str | None:
        """The normalisation layer that runs right after the module ``name`` (see ``norms_after``), or None."""
        return self.norms_after.get(name)


def probe_model(model: nn.Module, input_size: Sequence[int], *, seed: int = 0) -> ModelProbe:
    """Probe ``model`` with one seeded dummy batch ``(1, *input_size)``.

    The batch is drawn from N(0, 1) with its own generator seeded by ``seed`` (the global RNG is
    left as it is), on the CPU in float32, then moved to the model's device and floating dtype
    (the first parameter decides); on the meta device it is an empty meta tensor.

    Args:
        model: any ``nn.Module`` taking one image tensor; read, not changed.
        input_size: ``(C, H, W)``.
        seed: seeds the dummy batch.

    Raises:
        ModelForwardError: the forward fails on the dummy batch (wrong channels or size, not an
            image model).
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    shape = (1, *input_size)
    if device.type == "meta":
        example = torch.empty(shape, device=device, dtype=dtype)
    else:
        generator = torch.Generator().manual_seed(seed)
        example = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    try:
        return probe_example(model, example)
    except Exception as err:
        raise ModelForwardError(type(model).__name__, shape, f"{type(err).__name__}: {err}") from err


def probe_example(model: nn.Module, example: torch.Tensor) -> ModelProbe:
    """Probe ``model`` with the given input (e.g. one calibration image, ``(1, C, H, W)``).

    Eval mode for every submodule and no grad during the forward; afterwards every module's own
    mode is restored and every hook removed.

    Raises:
        Exception: whatever the model's forward raises on ``example``, unchanged.
    """
    modules = {name: module for name, module in model.named_modules() if name}
    events: list[tuple[str, bool]] = []  # (name, True at a call's start / False at its end)
    calls: dict[str, list[ModuleCall]] = {}

    def started(name: str) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            events.append((name, True))
            calls.setdefault(name, [])
        return hook

    def ended(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            events.append((name, False))
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            calls.setdefault(name, []).append(ModuleCall(
                tuple(x.shape) if x is not None else None,
                tuple(output.shape) if isinstance(output, torch.Tensor) else None))
        return hook

    running: list[nn.Module] = [model]  # the modules whose forward is under way, innermost last
    reads = _ParameterReads(model, running)

    def entered(module: nn.Module, args: tuple) -> None:
        running.append(module)

    def left(module: nn.Module, args: tuple, output: Any) -> None:
        if running[-1] is module:
            running.pop()

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(started(name)))
            handles.append(module.register_forward_hook(ended(name)))
            # the module is "running" from before its first pre-hook until after its last hook
            handles.append(module.register_forward_pre_hook(entered, prepend=True))
            handles.append(module.register_forward_hook(left))
        with eval_mode(model), torch.no_grad(), reads:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    leaves = {name for name, module in modules.items() if not any(True for _ in module.children())}
    order = tuple(dict.fromkeys(name for name, is_start in events if is_start and name in leaves))
    return ModelProbe(type(model).__name__, tuple(example.shape), order,
                      {name: tuple(c) for name, c in calls.items()}, _norms_after(events, modules),
                      tuple(name for name in calls if keeps_running_stats(modules[name])), reads.found())


class _ParameterReads(TorchFunctionMode):
    """Records which module's forward was running (innermost) when a torch function used a
    parameter that another module owns (holds in its own ``_parameters``)."""

    def __init__(self, model: nn.Module, running: list[nn.Module]):
        super().__init__()
        self._running = running
        self._names = {id(m): name for name, m in model.named_modules()}  # first name of each module
        self._owners: dict[int, list[nn.Module]] = {}
        for module in model.modules():
            for p in module._parameters.values():
                if p is not None:
                    self._owners.setdefault(id(p), []).append(module)
        self._reads: dict[str, dict[str, None]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        reader = self._running[-1]
        for tensor in iter_tensors((args, kwargs)):
            for owner in self._owners.get(id(tensor), ()):
                if owner is not reader:
                    self._reads.setdefault(self._names[id(owner)], {})[self._names.get(id(reader), ROOT_FORWARD)] = None
        return func(*args, **kwargs)

    def found(self) -> dict[str, tuple[str, ...]]:
        return {owner: tuple(readers) for owner, readers in self._reads.items()}



def as_probe(subject: nn.Module | ModelProbe, *, input_size: Sequence[int] | None = None,
             example: torch.Tensor | None = None, caller: str) -> ModelProbe:
    """``subject`` when it is a probe, else the model probed here: at ``input_size``
    (:func:`probe_model`) or on ``example`` (:func:`probe_example`). For the functions that read
    a probe and, for convenience, also take the model itself.

    Raises:
        ValueError: a model without ``input_size`` / ``example``, or a probe with one (names
            ``caller``).
        ModelForwardError, Exception: see :func:`probe_model`, :func:`probe_example`.
    """
    given = "input_size" if input_size is not None else "example" if example is not None else None
    if isinstance(subject, ModelProbe):
        if given:
            raise ValueError(f"{caller} takes {given}= only with a model, not with a ModelProbe")
        return subject
    if input_size is not None:
        return probe_model(subject, input_size)
    if example is not None:
        return probe_example(subject, example)
    raise ValueError(f"{caller} needs input_size= or example= to probe a model")


def _norms_after(events: Sequence[tuple[str, bool]], modules: Mapping[str, nn.Module]) -> dict[str, str]:
    """``{module: the norm whose call starts next after one of its calls ended}`` (see ``ModelProbe``)."""
    found: dict[str, str] = {}
    for index, (name, is_start) in enumerate(events):
        if is_start or name in found or is_norm(modules[name]) or isinstance(modules[name], PASS_THROUGH):
            continue
        for after, after_is_start in events[index + 1:]:
            if not after_is_start:  # an enclosing module finishing
                continue
            module = modules[after]
            if is_norm(module):
                found[name] = after
                break
            if isinstance(module, PASS_THROUGH) or any(True for _ in module.children()):
                continue  # returns its input / its children run next
            break  # something else consumes first
    return found
