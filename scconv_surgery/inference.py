"""Inference-time rewrites of converted models that keep what they compute.

:func:`optimize_for_inference` folds PWC1 into GWC's centre tap (eq. 5 as one dense ``k x k``
conv) in each SCConv layer where that is measured to be faster: the merged conv does about
1.6x the multiply-adds of GWC + PWC1 but is one kernel instead of a grouped conv, a 1x1 conv
and an add; on CPUs it wins at large feature maps (ResNet-50's first stage) and loses at
small ones, so each layer is timed on its own input shape, as ``cudnn.benchmark`` does.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ._probe import eval_mode, example_input
from .layers import ScConv

__all__ = ["optimize_for_inference"]


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 15) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def optimize_for_inference(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), *,
                           batch_size: int = 1, merge: str = "auto") -> dict[str, bool]:
    """Fold PWC1 into GWC in the SCConv layers of ``model`` (in place) where it is faster.

    Args:
        model: a converted model; its weights are treated as frozen (call this again after
            training, or pass ``merge="never"`` before training to undo it).
        input_size: ``(C, H, W)`` of the model's input, to time each layer at its own shape.
        batch_size: the batch size to time at.
        merge: ``"auto"`` (time both forms per layer, keep the faster), ``"always"`` or
            ``"never"`` (undo).

    Returns:
        Layer name -> whether it runs merged.

    Raises:
        ValueError: an unknown ``merge``.
    """
    if merge not in ("auto", "always", "never"):
        raise ValueError(f"merge must be 'auto', 'always' or 'never', got {merge!r}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ScConv)}
    if merge != "auto":
        for layer in layers.values():
            layer.cru.merge_pwc1_into_gwc(merge == "always")
        return {name: merge == "always" for name in layers}
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0].detach()))
               for name, m in layers.items()]
    try:
        with eval_mode(model), torch.inference_mode():
            model(example_input(model, (batch_size, *input_size), fill=torch.randn))
    finally:
        for handle in handles:
            handle.remove()
    chosen = {}
    with eval_mode(model), torch.inference_mode():
        for name, layer in layers.items():
            if name not in inputs:
                continue
            x = inputs[name]
            layer.cru.merge_pwc1_into_gwc(False)
            separate = _median_seconds(lambda: layer(x), x.device)
            layer.cru.merge_pwc1_into_gwc(True)
            merged = _median_seconds(lambda: layer(x), x.device)
            chosen[name] = merged < separate
            layer.cru.merge_pwc1_into_gwc(chosen[name])
    return chosen
