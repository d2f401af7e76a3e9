"""Fusing: fold the BatchNorm that follows an SCConv into a per-channel affine at its end.

What ``fuse`` means for SCConv: a dense conv followed by an eval-mode BatchNorm folds into the
conv's weight and bias (PyTorch: ``torch.nn.utils.fusion.fuse_conv_bn_eval``). An SCConv has no
single weight to fold into: its last step (CRU's fuse, eqs. 7-9 of the paper) weighs Y1 and Y2
by a softmax over their global averages, so scaling the convs inside would change that
softmax. What folds exactly is a per-channel affine after the whole SCConv:
``BN(y) = y * scale + shift`` with ``scale = gamma / sqrt(running_var + eps)`` and
``shift = beta - running_mean * scale``. :class:`FusedScConv` holds the SCConv and that affine;
the BatchNorm becomes ``nn.Identity``. The result is for inference: the affine's tensors are
buffers and the statistics no longer update.

:func:`fuse_scconv_bn` follows timm's ``reparameterize_model`` (timm/utils/model.py): it works
on a copy unless ``inplace=True`` and returns the model.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .layers import ScConv
from .probe import probe_model

__all__ = ["FusedScConv", "fold_batchnorm", "fuse_scconv_bn"]


class FusedScConv(nn.Module):
    """An SCConv followed by a per-channel affine: ``scconv(x) * weight + bias``.

    The affine is the eval-mode BatchNorm that followed the SCConv, folded
    (:func:`fold_batchnorm`). ``weight`` and ``bias`` have shape ``(C_out,)``, the shapes
    ultralytics' ``fuse_conv_and_bn`` expects of a conv's per-channel parameters, so a second
    fold into it also works.

    Args:
        scconv: the SCConv, kept as it is (its state_dict keys move under ``scconv.``).
        weight: per-channel scale, shape ``(C_out,)``.
        bias: per-channel shift, shape ``(C_out,)``.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, H', W')``, as ``scconv``.
    """

    def __init__(self, scconv: ScConv, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.scconv = scconv
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())

    @property
    def in_channels(self) -> int:
        return self.scconv.in_channels

    @property
    def out_channels(self) -> int:
        return self.scconv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scconv(x)
        shape = (1, -1, 1, 1)
        return torch.addcmul(self.bias.reshape(shape).to(y.dtype), y, self.weight.reshape(shape).to(y.dtype))


def fold_batchnorm(scconv: ScConv | FusedScConv, bn: nn.BatchNorm2d) -> FusedScConv:
    """Fold an eval-mode BatchNorm that follows ``scconv`` into a :class:`FusedScConv`.

    Exact (to float rounding) for the BatchNorm in eval mode: ``bn(scconv(x)) ==
    fold_batchnorm(scconv, bn)(x)``. A ``FusedScConv`` folds a second BatchNorm into its affine.

    Raises:
        ValueError: ``bn`` keeps no running statistics (``track_running_stats=False``), or its
            channel count differs from the SCConv's output channels.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the BatchNorm keeps no running statistics (track_running_stats=False): nothing to fold")
    out_channels = scconv.out_channels
    if bn.num_features != out_channels:
        raise ValueError(f"the BatchNorm has {bn.num_features} channels, the SCConv returns {out_channels}")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.float() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.float()
        shift = -bn.running_mean.float() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.float()
        if isinstance(scconv, FusedScConv):  # bn(y * w + b) = y * (w * scale) + (b * scale + shift)
            scale, shift = scconv.weight.float() * scale, scconv.bias.float() * scale + shift
            scconv = scconv.scconv
        dtype = bn.running_var.dtype
    return FusedScConv(scconv, scale.to(dtype), shift.to(dtype))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def fuse_scconv_bn(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), *,
                   inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows an SCConv into it (:class:`FusedScConv`).

    Which BatchNorm follows which SCConv is found by one recorded forward of a dummy batch
    (:func:`~scconv_surgery.probe.probe_model`): the norm that runs right after the SCConv
    and reads its output. An SCConv reached under several names, a norm without running
    statistics, or one that is not an ``nn.BatchNorm2d`` is left as it is. The folded norm
    becomes ``nn.Identity``. The model is put in eval mode (folding uses the running
    statistics). timm's ``reparameterize_model`` convention: a copy unless ``inplace``.

    Args:
        model: a converted model.
        input_size: ``(C, H, W)`` of the dummy batch that finds the norms.
        inplace: change ``model`` itself instead of a copy.

    Returns:
        The fused model in eval mode; its outputs equal the eval-mode outputs of ``model`` to
        float tolerance.

    Raises:
        ModelForwardError: the forward fails on the dummy batch.
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    probe = probe_model(model, input_size)
    modules = dict(model.named_modules(remove_duplicate=False))
    seen: dict[int, int] = {}
    for m in modules.values():
        seen[id(m)] = seen.get(id(m), 0) + 1
    for name, module in list(modules.items()):
        if not isinstance(module, ScConv) or seen[id(module)] > 1:
            continue
        norm_name = probe.norm_after(name)
        norm = modules.get(norm_name) if norm_name else None
        if not isinstance(norm, nn.BatchNorm2d) or norm.running_mean is None or seen[id(norm)] > 1:
            continue
        _set_submodule(model, name, fold_batchnorm(module, norm))
        _set_submodule(model, norm_name, nn.Identity())  # type: ignore[arg-type]
    return model
