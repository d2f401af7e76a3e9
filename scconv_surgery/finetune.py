"""Helpers for fine-tuning a converted model: new vs pretrained parameters, stale BatchNorms.

A converted model mixes pretrained layers with freshly initialised SCConv modules. Following
timm's ``param_groups_weight_decay`` (timm/optim/_param_groups.py), :func:`param_groups`
puts norms and biases (tensors of one dimension or fewer) in groups without weight decay, and
gives the new SCConv parameters their own learning rate. Some parameters never receive a
gradient (:func:`gradient_free_parameters`: the ``seed`` variant's GroupNorm scale and bias,
behind its hard masks); they are created frozen and left out of the groups, so that
DistributedDataParallel does not wait for their gradients. A BatchNorm (of any kind, frozen
ones included) right after a replaced conv normalises with statistics gathered on the dense
conv's outputs: :func:`stale_batchnorms` finds these from a
:class:`~scconv_surgery.probe.ModelProbe`, :func:`reset_batchnorm_stats` resets their running
estimates, and :func:`recompute_batchnorm_stats` re-estimates them on images.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from torch.nn.modules.batchnorm import _BatchNorm

from ._probe import eval_mode
from .errors import CalibrationError
from .layers import SRU, ScConv, Variant
from .probe import ModelProbe, as_probe, keeps_running_stats, probe_example

__all__ = ["new_parameter_names", "gradient_free_parameters", "param_groups", "stale_batchnorms",
           "reset_batchnorm_stats", "recompute_batchnorm_stats", "check_batchnorm_images"]


def new_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that belong to SCConv modules (the ones a conversion added)."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, ScConv):
            names += [f"{module_name}.{name}" for name, _ in module.named_parameters()]
    return names


def gradient_free_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters that no loss can give a gradient: those of the ``seed`` variant's
    group norm (its scale and bias reach the output only through the hard masks ``S >= t`` and
    ``S < t``, which have no gradient; the seed code behaves the same).

    :func:`~scconv_surgery.apply_plan` (so ``convert`` and ``load`` too) sets
    ``requires_grad=False`` on them, and :func:`param_groups` leaves them out: under
    DistributedDataParallel a parameter that requires grad but never gets one stops training
    at the second step ("Expected to have finished reduction in the prior iteration").
    """
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, SRU) and module.variant is Variant.SEED:
            prefix = f"{module_name}.gn." if module_name else "gn."
            names += [prefix + name for name, _ in module.gn.named_parameters()]
    return names


def param_groups(model: nn.Module, *, lr: float, new_lr: float | None = None, weight_decay: float = 0.0,
                 no_weight_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Optimizer parameter groups for fine-tuning a converted model.

    Four groups at most (empty ones are left out): pretrained / new, each with and without
    weight decay. Norm weights, biases and other tensors with ``ndim <= 1`` get no weight
    decay, as in timm's ``param_groups_weight_decay``; parameters of SCConv modules are new
    and get ``new_lr``. Frozen parameters (``requires_grad=False``) and those that never receive
    a gradient (:func:`gradient_free_parameters`) are left out; a shared parameter appears once.

    Args:
        model: a converted model (e.g. from :func:`scconv_surgery.load`).
        lr: learning rate of the pretrained parameters.
        new_lr: learning rate of the new SCConv parameters (default ``lr``).
        weight_decay: weight decay of the decayed groups.
        no_weight_decay: extra parameter names to exclude from weight decay.

    Returns:
        A list for ``torch.optim`` constructors; each group also has a ``"name"`` key
        (``"pretrained"``, ``"pretrained_no_decay"``, ``"new"``, ``"new_no_decay"``).

    Example:
        >>> optimizer = torch.optim.AdamW(param_groups(model, lr=1e-4, new_lr=1e-3, weight_decay=0.05))
    """
    new = set(new_parameter_names(model))
    skip = set(no_weight_decay)
    gradient_free = set(gradient_free_parameters(model))
    groups: dict[str, list[torch.Tensor]] = {"pretrained": [], "pretrained_no_decay": [], "new": [],
                                              "new_no_decay": []}
    for name, param in model.named_parameters():  # shared parameters are yielded once
        if not param.requires_grad or name in gradient_free:
            continue
        kind = "new" if name in new else "pretrained"
        decay = param.ndim > 1 and name not in skip
        groups[kind if decay else f"{kind}_no_decay"].append(param)
    rates = {"pretrained": lr, "new": lr if new_lr is None else new_lr}
    return [{"name": key, "params": params, "lr": rates[key.split("_")[0]],
             "weight_decay": weight_decay if not key.endswith("no_decay") else 0.0}
            for key, params in groups.items() if params]


def stale_batchnorms(probe: ModelProbe | nn.Module, replaced: Sequence[str],
                     input_size: tuple[int, int, int] | None = None) -> list[str]:
    """The layers keeping running statistics that run right after a replaced module.

    Their statistics were gathered on the dense conv's outputs. Every kind is found
    (:func:`~scconv_surgery.probe.keeps_running_stats`): BatchNorm of any dimension,
    ``SyncBatchNorm``, timm's ``BatchNormAct2d`` (RegNet, EfficientNet, CSPDarknet), torchvision's
    ``FrozenBatchNorm2d``, an InstanceNorm with ``track_running_stats=True``, and any module with
    ``running_mean`` and ``running_var`` buffers. "Right after" is the probe's
    :attr:`~scconv_surgery.probe.ModelProbe.norms_after`: the norm whose call starts next after the
    module's call ended, looking past ``nn.Identity``, dropout and containers.

    Args:
        probe: a probe of the model (the base or the converted one: they run the same modules
            under the same names), or the model itself, probed here at ``input_size`` with
            :func:`~scconv_surgery.probe.probe_model` (one forward; no hook or mode change is
            left behind).
        replaced: names of the replaced modules.
        input_size: ``(C, H, W)``; only (and then required) with a model.

    Returns:
        The norms' names, in the order of ``replaced``.

    Raises:
        ModelForwardError: the model (when given one) fails on the dummy input.
        ValueError: a model without ``input_size``, or a probe with one.

    Note:
        A BatchNorm built with ``track_running_stats=False`` keeps no statistics and is not listed
        (before the probe, any BatchNorm was).
    """
    probe = as_probe(probe, input_size=input_size, caller="stale_batchnorms")
    keeping = set(probe.running_stats)
    after = [probe.norm_after(name) for name in replaced]
    return [norm for norm in after if norm is not None and norm in keeping]


def reset_batchnorm_stats(model: nn.Module, names: Sequence[str]) -> None:
    """Reset, in place, the running statistics of the named modules to those of a fresh BatchNorm.

    A module with ``reset_running_stats()`` (BatchNorm of any kind, ``BatchNormAct2d``,
    ``SyncBatchNorm``, InstanceNorm) calls it: mean 0, variance 1, ``num_batches_tracked`` 0
    (nothing for one built with ``track_running_stats=False``).
    Any other module with ``running_mean`` / ``running_var`` buffers, torchvision's
    ``FrozenBatchNorm2d`` among them, gets the same values written into its buffers (and
    ``num_batches_tracked`` 0 if it has one).

    Note:
        A ``FrozenBatchNorm2d`` never updates its statistics (it has no train-mode estimate, and
        :func:`recompute_batchnorm_stats` leaves it alone): after the reset it normalises with
        mean 0 and variance 1, i.e. it applies ``weight * x / sqrt(1 + eps) + bias``, as a reset
        BatchNorm does in eval mode. Its statistics were gathered on the dense conv's outputs;
        reset is the honest state until fine-tuning or new statistics replace them.

    Raises:
        ValueError: a named module neither keeps running statistics nor has ``reset_running_stats``
            (nothing is changed then).
    """
    modules = [(name, model.get_submodule(name)) for name in names]
    for name, module in modules:  # check all before changing any
        if not keeps_running_stats(module) and not callable(getattr(module, "reset_running_stats", None)):
            raise ValueError(f"{name!r} ({type(module).__name__}) keeps no running statistics to reset")
    for _, module in modules:
        if callable(getattr(module, "reset_running_stats", None)):
            module.reset_running_stats()
            continue
        with torch.no_grad():
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            if isinstance(getattr(module, "num_batches_tracked", None), torch.Tensor):
                module.num_batches_tracked.zero_()


def check_batchnorm_images(model: nn.Module, probe: ModelProbe, num_images: int, *,
                           names: Sequence[str] | None = None) -> None:
    """Check that :func:`recompute_batchnorm_stats` can re-estimate the chosen BatchNorms from
    ``num_images`` images, before any work.

    In train mode a BatchNorm needs more than one value per channel in a batch ("Expected more
    than 1 value per channel when training"). One image gives one value per channel to a
    BatchNorm after a 1x1 map (or after pooling, on ``(N, C)``): re-estimating it needs batches of
    at least two images, which :func:`recompute_batchnorm_stats` makes, and so at least two images.

    Args:
        model: the model whose BatchNorms are re-estimated.
        probe: a :class:`~scconv_surgery.probe.ModelProbe` of it, or of the model it was converted
            from (the shapes of the BatchNorms' inputs).
        num_images: how many images the re-estimation reads.
        names: the BatchNorms to re-estimate (default: every one that tracks running statistics).

    Raises:
        CalibrationError: a single image, and a chosen BatchNorm sees one value per channel per image.
    """
    if num_images > 1:
        return
    for name in _chosen_batchnorms(model, names):
        for call in probe.calls.get(name, ()):
            shape = call.input_shape
            if shape is not None and len(shape) >= 2 and math.prod(shape) <= shape[1] * probe.input_shape[0]:
                raise CalibrationError(f"re-estimating BatchNorm statistics needs at least 2 images: {name!r} "
                                       f"sees one value per channel per image (its input is {shape}); give more "
                                       "images, or skip the re-estimation (calibrate's batchnorm='none')", "images")


def _chosen_batchnorms(model: nn.Module, names: Sequence[str] | None) -> list[str]:
    """BatchNorms (``_BatchNorm``, so ``SyncBatchNorm`` and timm's ``BatchNormAct2d`` too) that
    track running statistics, among ``names`` (all by default)."""
    return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and (names is None or n in names)]


def _batches(num_images: int, batch_size: int) -> list[slice]:
    """Consecutive batches of ``max(batch_size, 2)`` images; a lone image left at the end joins the
    batch before it (one image gives a 1x1 map one value per channel)."""
    size = max(batch_size, 2)
    starts = list(range(0, num_images, size))
    if len(starts) > 1 and num_images - starts[-1] == 1:
        starts.pop()
    return [slice(start, stop) for start, stop in zip(starts, starts[1:] + [num_images])]


def recompute_batchnorm_stats(model: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
                              names: Sequence[str] | None = None, probe: ModelProbe | None = None) -> list[str]:
    """Re-estimate the running mean and variance of BatchNorm layers on ``images`` (in place).

    As ``torch.optim.swa_utils.update_bn``: the statistics are reset and accumulated as a
    plain average over the batches (``momentum=None``: a cumulative moving average) in one pass
    without grad, but only the BatchNorm layers are in train mode (dropout and drop-path stay off).
    Every module's mode and momentum are restored afterwards; if the forward fails, the
    statistics are restored too.

    Args:
        model: the model; its BatchNorm buffers are modified.
        images: ``(N, C, H, W)``, moved to the model's device and dtype batch by batch.
        batch_size: images per forward (the statistics of each batch normalise it, as in
            training). At least 2 are used: a BatchNorm in train mode needs more than one value
            per channel, and after a 1x1 map one image gives one; a single image left at the end
            joins the batch before it. No gradient is kept, so the larger batch costs little memory.
        names: the BatchNorm layers to update (default: every one that tracks running statistics:
            ``_BatchNorm``, so ``SyncBatchNorm`` and timm's ``BatchNormAct2d`` too). Other modules
            keeping statistics (torchvision's ``FrozenBatchNorm2d``) have no train-mode estimate and
            are left as they are, not listed.
        probe: a probe of ``model`` (or of the model it was converted from), read only when
            ``images`` holds a single image, to tell whether that can work
            (:func:`check_batchnorm_images`); made from that image when needed and not given.

    Returns:
        The names of the updated layers. A BatchNorm the forward never calls keeps its
        statistics and is not listed.

    Raises:
        CalibrationError: ``images`` holds a single image and a chosen BatchNorm would see one
            value per channel (:func:`check_batchnorm_images`); nothing is changed.
    """
    modules = dict(model.named_modules())
    chosen = _chosen_batchnorms(model, names)
    if not chosen:
        return []
    first = next(model.parameters())
    if images.shape[0] == 1:
        check_batchnorm_images(model, probe or probe_example(model, images.to(first.device, first.dtype)), 1,
                               names=chosen)
    momenta = {n: modules[n].momentum for n in chosen}
    saved = {n: {k: v.clone() for k, v in modules[n].state_dict().items()} for n in chosen}
    with eval_mode(model), torch.no_grad():
        try:
            for n in chosen:
                modules[n].reset_running_stats()
                modules[n].momentum = None
                modules[n].train()
            for batch in _batches(images.shape[0], batch_size):
                model(images[batch].to(device=first.device, dtype=first.dtype))
        except BaseException:
            for n in chosen:
                modules[n].load_state_dict(saved[n])
            raise
        finally:
            for n in chosen:
                modules[n].momentum = momenta[n]
        updated = [n for n in chosen if int(modules[n].num_batches_tracked) > 0]
        for n in set(chosen) - set(updated):  # never called (e.g. an auxiliary head in eval mode): as it was
            modules[n].load_state_dict(saved[n])
    return updated
