"""Convs that standardise their weight, and the normalisation layer that follows a conv.

timm's ``StdConv2d`` family (timm/layers/std_conv.py; Qiao et al., "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization", 2019; Brock et al., "High-Performance
Large-Scale Image Recognition Without Normalization", 2021, for the scaled ones) standardises
its weight in every forward, and the ``Scaled`` ones multiply it by a learned gain. An SCConv in
its place has neither, which changes the scale of what the next layer receives: irrelevant where
a normalisation layer follows, not in NF-ResNets and NFNets, which have none (the README's
"Weight-standardised convs" records the measurement, ``benchmarks/std_conv_scale.py`` makes it).
"""
from __future__ import annotations

from torch import nn

__all__ = ["WEIGHT_STANDARDIZING_CONVS", "following_norm"]

# timm's conv classes that standardise their weight
WEIGHT_STANDARDIZING_CONVS = frozenset({"StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"})
# layers that normalise by statistics of their own input, so the scale of what they receive
# does not matter (timm's BatchNormAct2d, GroupNormAct and LayerNorm2d subclass these)
_NORMALIZATIONS = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
# modules that pass a tensor through unchanged in eval mode
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d)


def following_norm(model: nn.Module, name: str) -> str | None:
    """The normalisation layer that follows the module ``name``, or None.

    "Follows" is read from the module tree: the next module registered after it in its parent
    (an ``nn.Identity`` or dropout in between is passed over) is a BatchNorm, GroupNorm,
    LayerNorm or InstanceNorm over the module's output channels. This is how timm, torchvision
    and most code write a conv and its norm (``conv2`` then ``bn2``, or ``conv`` then ``bn`` in a
    ``ConvNormAct``), and it needs no forward.

    Returns:
        The norm's full dotted name, e.g. ``stages.0.blocks.0.norm3``.
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    module = parent.get_submodule(child)
    children = list(parent.named_children())
    index = next(i for i, (n, _) in enumerate(children) if n == child)
    for next_name, candidate in children[index + 1:]:
        if isinstance(candidate, _PASS_THROUGH):
            continue
        width = getattr(candidate, "num_features", getattr(candidate, "num_channels", None))
        if width is None and isinstance(candidate, nn.LayerNorm):
            width = candidate.normalized_shape[-1] if candidate.normalized_shape else None
        if isinstance(candidate, _NORMALIZATIONS) and width == getattr(module, "out_channels", None):
            return f"{parent_name}.{next_name}" if parent_name else next_name
        return None
    return None
