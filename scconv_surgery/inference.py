"""Inference-time preparation of converted models that keeps what they compute.

:func:`optimize_for_inference` makes each SCConv layer keep, as module state, the weights its
fast forward otherwise assembles from its parameters in every forward: SRU's GroupNorm affine
with ``w`` folded in, both squeezes as one weight, and GWC + PWC1 as one dense ``k x k`` conv
(PWC1 in the centre tap, eq. 5) where that is measured to be faster. The merged conv does
about 1.6x the multiply-adds of GWC + PWC1 but is one kernel instead of a grouped conv, a 1x1
conv and an add: on GPUs and at large feature maps it wins, at small maps on CPUs it can lose,
so each layer is timed on its own input shape, as ``cudnn.benchmark`` does.
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
    """Cache the assembled weights of every SCConv layer of ``model`` (in place) for inference.

    The cache is module state in the spirit of timm's ``reparameterize``, but reversible and
    never stale: non-persistent buffers (not in the ``state_dict``, so checkpoints are
    unchanged) that ``.to()``, ``.half()``, ``.double()`` and ``.cuda()`` rebuild from the
    converted parameters, and that are rebuilt at the next forward after any change to the
    parameters (``load_state_dict``, an optimizer step). They are used by eval-mode forwards
    that need no parameter gradients; train mode, and eval-mode forwards whose parameters
    require gradients, assemble the weights from the parameters as before. Built under
    ``torch.no_grad`` (not ``inference_mode``), so an eval forward that needs input gradients
    (saliency maps) works.

    Args:
        model: a converted model (or an :class:`~scconv_surgery.ScConv`).
        input_size: ``(C, H, W)`` of the model's input, to time each layer at its own shape.
        batch_size: the batch size to time at.
        merge: ``"auto"`` (time GWC + PWC1 merged and as two convs per layer, keep the faster),
            ``"always"`` (merged), or ``"never"`` (drop every cache: the layers assemble their
            weights in every forward again, as before this call; eager forwards then run GWC
            and PWC1 as two convs, ``torch.compile`` merges them in its graph).

    Returns:
        Layer name -> whether its eager eval forward runs GWC + PWC1 as one dense conv.

    Raises:
        ValueError: an unknown ``merge``.
    """
    if merge not in ("auto", "always", "never"):
        raise ValueError(f"merge must be 'auto', 'always' or 'never', got {merge!r}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ScConv)}
    if merge != "auto":
        for layer in layers.values():
            _cache(layer, merge == "always", merge_gwc_pwc1=True)
        return {name: merge == "always" for name in layers}
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0].detach()))
               for name, m in layers.items()]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input(model, (batch_size, *input_size), fill=torch.randn))
    finally:
        for handle in handles:
            handle.remove()
    chosen = {}
    with eval_mode(model), torch.no_grad():
        for name, layer in layers.items():
            if name not in inputs:
                continue
            x = inputs[name]
            _cache(layer, True, merge_gwc_pwc1=False)
            separate = _median_seconds(lambda: layer(x), x.device)
            _cache(layer, True, merge_gwc_pwc1=True)
            merged = _median_seconds(lambda: layer(x), x.device)
            chosen[name] = merged < separate
            _cache(layer, True, merge_gwc_pwc1=chosen[name])
    return chosen


def _cache(layer: ScConv, enabled: bool, *, merge_gwc_pwc1: bool) -> None:
    layer.sru.cache_inference_weights(enabled)
    layer.cru.cache_inference_weights(enabled, merge_gwc_pwc1=merge_gwc_pwc1)
