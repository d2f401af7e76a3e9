"""Inference-time preparation of converted models that keeps what they compute.

:func:`optimize_for_inference` makes each SCConv layer keep, as module state, the weights its
fast forward otherwise assembles from its parameters in every forward: SRU's GroupNorm affine
with ``w`` folded in, both squeezes as one weight, and GWC + PWC1 as one dense ``k x k`` conv
(PWC1 in the centre tap, eq. 5). Whether eager forwards run eq. 5 merged is one decision per
layer (:class:`~scconv_surgery.layers.MergePolicy`): the merged conv does about 1.6x the
multiply-adds of GWC + PWC1 but is one kernel instead of a grouped conv, a 1x1 conv and an
add; on GPUs and at large feature maps it wins, at small maps on CPUs it can lose, so
``merge="auto"`` times each layer on its own input shape, as ``cudnn.benchmark`` does.
Exported graphs (``torch.export``, ONNX, ``torch.jit.trace``) then record the lean graph of
``layers/_deploy.py``, and eval-mode CPU float32 forwards without autograd run the fused C++
kernels of ``layers/_kernels.py`` (built at the first call, then cached; docs/inference.md).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ._probe import eval_mode, example_input
from .layers import ScConv
from .layers.config import MergePolicy, Variant

__all__ = ["optimize_for_inference"]

# per-sample input elements from which an exported SRU at stride 1 writes GroupNorm as
# InstanceNormalization + BatchNormalization (3 more ONNX nodes, 20 per layer; faster in
# onnxruntime): in ResNet-50 at 224x224 the stride-1 layers of its first two stages (64x56x56,
# 128x28x28)
INSTANCE_NORM_EXPORT_MIN_ELEMENTS = 100_000


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 15) -> float:
    # one CPU thread: the thread's own CPU time, which other work on a shared machine does not move
    clock = time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def _memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last where the model's first 4-D weight is (``model.to(memory_format=...)``), so
    that each layer is timed on the layout it will meet."""
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        if p.dim() == 4:
            break
    return torch.contiguous_format


def optimize_for_inference(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), *,
                           batch_size: int = 1, merge: MergePolicy | str = MergePolicy.AUTO,
                           kernels: bool = True, enabled: bool = True) -> dict[str, bool]:
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
        merge: how eager forwards run eq. 5 (:class:`~scconv_surgery.layers.MergePolicy` or
            its string): ``"auto"`` times GWC + PWC1 merged and as two convs per layer (on CPUs,
            for NCHW input, each also on a channels_last copy of its input, which makes that
            layer's output channels_last; with the kernels, each also with SRU and the squeezes
            as one kernel; with the kernels at stride 1, where PWC1 runs inside the fuse kernel,
            the merge is not timed) and keeps the fastest, timed on the model's memory format
            (channels_last if its weights are) by thread CPU time at one thread; it also sets
            each stride-1 layer's ``sru.instance_norm_export`` where the layer's input has at least
            ``INSTANCE_NORM_EXPORT_MIN_ELEMENTS`` elements per sample (exported graphs then
            write GroupNorm as InstanceNormalization + BatchNormalization, which onnxruntime
            runs faster: ``layers/_deploy.sru``); ``"always"`` merged;
            ``"never"`` two convs (also in exported graphs).
        kernels: use the fused C++ CPU kernels for eval-mode CPU float32 forwards without
            autograd of ``paper`` layers (built or loaded here, once per process; if that fails,
            one warning names the cause and the PyTorch forward runs).
        enabled: ``False`` undoes this call: drops every cache, turns the kernels off and sets
            ``merge`` back to ``auto`` (the layers assemble their weights in every forward).

    Returns:
        Layer name -> whether its eager eval forward runs GWC + PWC1 as one dense conv.

    Raises:
        ValueError: an unknown ``merge``.
    """
    try:
        merge = MergePolicy(merge)
    except ValueError:
        raise ValueError(f"merge must be one of {[m.value for m in MergePolicy]}, got {merge!r}") from None
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ScConv)}
    for layer in layers.values():
        layer.sru.instance_norm_export = False  # until measured below (merge="auto")
    if not enabled:
        for layer in layers.values():
            _set(layer, cached=False, merge=MergePolicy.AUTO, use_kernels=False)
        return {name: False for name in layers}
    use_kernels = kernels and _kernels_available(layers.values())
    if merge is not MergePolicy.AUTO:
        for layer in layers.values():
            _set(layer, cached=True, merge=merge, use_kernels=use_kernels)
        return {name: merge is MergePolicy.ALWAYS for name in layers}
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0].detach()))
               for name, m in layers.items()]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input(model, (batch_size, *input_size), fill=torch.randn).contiguous(
                memory_format=_memory_format(model)))
    finally:
        for handle in handles:
            handle.remove()
    chosen = {}
    with eval_mode(model), torch.no_grad():
        for name, layer in layers.items():
            if name not in inputs:
                continue
            x = inputs[name]
            layouts = [False, True] if x.device.type == "cpu" and x.is_contiguous() else [False]
            kernel_layer = use_kernels and layer.config.variant is Variant.PAPER and x.device.type == "cpu" \
                and x.dtype == torch.float32
            fusions = [False, True] if kernel_layer else [False]
            # the kernels at stride 1 run GWC alone and PWC1 inside scconv::cru_fuse_: nothing to merge
            policies = (MergePolicy.NEVER,) if kernel_layer and layer.cru.stride == 1 else \
                (MergePolicy.NEVER, MergePolicy.ALWAYS)
            times = {}
            for policy in policies:
                for channels_last in layouts:
                    for fused in fusions:
                        _set(layer, cached=True, merge=policy, use_kernels=use_kernels, y1_channels_last=channels_last,
                             fuse_sru_squeeze=fused)
                        times[policy, channels_last, fused] = _median_seconds(lambda: layer(x), x.device)
            policy, channels_last, fused = min(times, key=times.__getitem__)
            # exported graphs: GroupNorm as InstanceNormalization where the input is large (see
            # layers/_deploy.sru: 3 more ONNX nodes, each onnxruntime pass over the input saved),
            # at stride 1, where the layer then has 20 nodes (at stride 2 it would have 22)
            layer.sru.instance_norm_export = layer.stride == 1 and x[0].numel() >= INSTANCE_NORM_EXPORT_MIN_ELEMENTS
            chosen[name] = policy is MergePolicy.ALWAYS
            # not merged in eager: AUTO, so that compiled and exported graphs still merge
            _set(layer, cached=True, merge=MergePolicy.ALWAYS if chosen[name] else MergePolicy.AUTO,
                 use_kernels=use_kernels, y1_channels_last=channels_last, fuse_sru_squeeze=fused)
    return chosen


def _kernels_available(layers) -> bool:  # type: ignore[no-untyped-def]
    """Build or load the C++ kernels if some ``paper`` layer holds CPU float32 parameters."""
    wanted = any(layer.config.variant is Variant.PAPER and layer.cru.gwc.weight.device.type == "cpu"
                 and layer.cru.gwc.weight.dtype == torch.float32 for layer in layers)
    if not wanted:
        return False
    from .layers import _kernels

    return _kernels.load() is not None


def _set(layer: ScConv, *, cached: bool, merge: MergePolicy, use_kernels: bool,
         y1_channels_last: bool = False, fuse_sru_squeeze: bool = False) -> None:
    layer.sru.cache_inference_weights(cached)
    layer.cru.cache_inference_weights(cached)
    layer.cru.merge = merge
    layer.cru.y1_channels_last = y1_channels_last
    layer.fuse_sru_squeeze = fuse_sru_squeeze
    layer.sru.use_kernels = layer.cru.use_kernels = use_kernels and layer.config.variant is Variant.PAPER
