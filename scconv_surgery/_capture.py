"""Recording what chosen layers of a model see and return, over a set of images, with bounded memory.

Used by calibration (:mod:`scconv_surgery.calibrate`). A forward pass is cut short once the
last recorded layer has run (its hook raises a private exception), so recording early layers
does not pay for the rest of the network. Recorded tensors are written into buffers allocated
once (no ``torch.cat`` of a list, which would need the memory twice) and kept in a compact
dtype (bfloat16 by default: float32's range, 8 bits of mantissa).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._probe import eval_mode
from .probe import ModelProbe, as_probe

__all__ = ["LayerCalls", "probe_calls", "group_by_bytes", "record"]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once everything needed has been recorded."""


@dataclass(frozen=True)
class LayerCalls:
    """How a layer is called in one forward pass of a model.

    Attributes:
        name: the module's name.
        input_shapes: the shape of its first argument at each call, without the batch dim.
        output_shapes: the shape of its output at each call, without the batch dim.
    """

    name: str
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]

    def values_per_image(self, *, inputs: bool = True, outputs: bool = False) -> int:
        """Numbers recorded per image (all calls) when keeping the inputs and / or the outputs."""
        shapes = (self.input_shapes if inputs else ()) + (self.output_shapes if outputs else ())
        return sum(math.prod(shape) for shape in shapes)


def probe_calls(probe: ModelProbe | nn.Module, names: Sequence[str],
                example: torch.Tensor | None = None) -> list[LayerCalls]:
    """The named layers that the probed forward calls, in the order of their first call.

    Args:
        probe: a :class:`~scconv_surgery.probe.ModelProbe` of the model (read, no forward), or the
            model itself, probed here on ``example`` (:func:`~scconv_surgery.probe.probe_example`:
            eval mode, no grad, no hook or mode change left behind).
        names: the layers' names.
        example: the input, e.g. one image ``(1, C, H, W)``; only with a model.

    Returns:
        One :class:`LayerCalls` per named layer the forward calls, shapes without the batch dim.
        Layers the forward never calls are left out (the caller reports them).

    Raises:
        ValueError: a model without ``example``, or a probe with one.
        Exception: with a model, whatever its forward raises on ``example``.
    """
    probe = as_probe(probe, example=example, caller="probe_calls")
    wanted = set(names)
    return [LayerCalls(name, tuple(c.input_shape[1:] for c in calls), tuple(c.output_shape[1:] for c in calls))
            for name, calls in probe.calls.items() if name in wanted]


def group_by_bytes(layers: Sequence[LayerCalls], sizes: Callable[[LayerCalls], tuple[int, int]],
                   max_bytes: int) -> list[list[LayerCalls]]:
    """Consecutive layers grouped so that each group's recordings fit in ``max_bytes``.

    Args:
        layers: in call order.
        sizes: ``(held, transient)`` bytes of a layer: what is kept for the whole group, and
            what exists for that layer alone while it is fitted.
        max_bytes: the bound on ``sum(held) + max(transient)`` over a group. A layer over the
            bound alone forms a group of its own (the floor of the memory used).
    """
    groups: list[list[LayerCalls]] = []
    held = transient = 0
    for layer in layers:
        layer_held, layer_transient = sizes(layer)
        if groups and held + layer_held + max(transient, layer_transient) <= max_bytes:
            groups[-1].append(layer)
            held, transient = held + layer_held, max(transient, layer_transient)
        else:
            groups.append([layer])
            held, transient = layer_held, layer_transient
    return groups


def record(model: nn.Module, layers: Sequence[LayerCalls], images: torch.Tensor, *, batch_size: int,
           inputs: bool = True, outputs: bool = False,
           dtype: torch.dtype = torch.bfloat16) -> dict[str, list[torch.Tensor]]:
    """Run ``model`` over ``images`` and keep what ``layers`` receive and / or return.

    The forward of each batch stops once every layer has made all its calls (as
    :func:`probe_calls` counted them). Eval mode, no grad; the
    images are moved to the model's device and floating dtype batch by batch, and the
    recordings are kept on the model's device.

    Args:
        model: the model to run (unchanged).
        layers: the layers to record, in call order.
        images: ``(N, C, H, W)``.
        batch_size: images per forward.
        inputs: keep each call's first argument.
        outputs: keep each call's output (the module's own output, before other forward hooks).
        dtype: the dtype the recordings are kept in.

    Returns:
        ``{name: [tensor per call]}``, each tensor ``(N, *shape)``; with both ``inputs`` and
        ``outputs``, the inputs of all calls come first, then the outputs.
    """
    first = next(model.parameters(), None)
    model_device = first.device if first is not None else images.device
    model_dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    n = images.shape[0]
    buffers: dict[str, list[torch.Tensor]] = {}
    for layer in layers:
        shapes = (layer.input_shapes if inputs else ()) + (layer.output_shapes if outputs else ())
        buffers[layer.name] = [torch.empty((n, *shape), dtype=dtype, device=model_device) for shape in shapes]
    position = {"start": 0, "stop": 0}
    counts: dict[str, int] = {}
    expected = {layer.name: len(layer.output_shapes) for layer in layers}

    def pre_hook(layer: LayerCalls) -> Callable[..., None]:
        def keep_input(module: nn.Module, args: Any) -> None:
            call = counts.get(layer.name, 0)
            if call < len(layer.input_shapes):
                buffers[layer.name][call][position["start"]:position["stop"]] = args[0]
        return keep_input

    def post_hook(layer: LayerCalls) -> Callable[..., None]:
        offset = len(layer.input_shapes) if inputs else 0

        def keep_output(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            call = counts.get(layer.name, 0)
            if outputs and call < len(layer.output_shapes):
                buffers[layer.name][offset + call][position["start"]:position["stop"]] = output
            counts[layer.name] = call + 1
            if all(counts.get(name, 0) >= calls for name, calls in expected.items()):
                raise _StopForward  # everything recorded: the rest of the forward is not needed
        return keep_output

    handles = []
    try:
        for layer in layers:
            module = model.get_submodule(layer.name)
            if inputs:
                handles.append(module.register_forward_pre_hook(pre_hook(layer)))
            handles.append(module.register_forward_hook(post_hook(layer), prepend=True))
        with eval_mode(model), torch.no_grad():
            for start in range(0, n, batch_size):
                batch = images[start:start + batch_size].to(device=model_device, dtype=model_dtype)
                position.update(start=start, stop=start + batch.shape[0])
                counts.clear()
                try:
                    model(batch)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return buffers
