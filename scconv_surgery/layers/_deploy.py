"""The lean standard-operator graph of an SCConv layer, what exporters record.

After :func:`~scconv_surgery.optimize_for_inference`, exporting a converted network
(``torch.export``, ``torch.onnx.export`` with either exporter, ``torch.jit.trace``) records
these functions instead of the module-by-module statement of ``reference.py``: the same
equations from the cached, folded weights, in operators every runtime has (GroupNorm,
Sigmoid, Greater, Where, Mul, Add, Sub, Conv, Split, Gather, ReduceMean; with ONNX opset 21:
17 nodes per layer at stride 1, 19 at stride 2; with opset 20, 21 and 23):

- SRU: eq. 2's ratio folded into GroupNorm's affine (one ``group_norm``: one
  ``GroupNormalization`` node from ONNX opset 21 on; below, torch's exporter writes it as
  Reshape, InstanceNormalization, Reshape, Mul, Add; for stride-1 layers with large inputs, after
  :func:`~scconv_surgery.optimize_for_inference`, Reshape, InstanceNormalization, Reshape,
  BatchNormalization at any opset, which onnxruntime runs faster: :func:`sru`), the gate as two
  ``where`` (eqs. 3-4), the cross reconstruction as a ``Gather`` of channels;
- CRU: both squeezes as one conv (two groups where the halves are equal), GWC + PWC1 as one
  dense conv (:class:`~.config.MergePolicy`), the fuse as ``Y2 + sigmoid(GAP(Y1 - Y2)) * (Y1 - Y2)``
  (a two-way softmax is a sigmoid of the difference, and GAP is linear: eqs. 7-9).

No cast, slice or constant tensor is created per call. tests/test_deploy.py counts the nodes per
layer and compares onnxruntime with PyTorch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .cru import CRU

__all__ = ["sru", "cru"]


def sru(x: torch.Tensor, num_groups: int, eps: float, scale: torch.Tensor, shift: torch.Tensor,
        threshold: float, channel_roll: torch.Tensor, instance_norm: bool = False) -> torch.Tensor:
    """SRU, ``paper`` variant (eqs. 1-4), from GroupNorm's affine with ``w`` folded in.

    Args:
        x: ``(N, C, H, W)``.
        num_groups, eps: GroupNorm's.
        scale, shift: ``(gamma * w, beta * w)``, each ``(C,)``, in the gate's dtype.
        threshold: t.
        channel_roll: ``(C,)`` int64, ``(c + C // 2) mod C``: eq. 4's roll as one ``Gather``.
        instance_norm: GroupNorm as ``InstanceNormalization`` of ``x`` viewed as ``(N, G, -1)``
            (no affine), then the per-channel affine as one inference ``BatchNormalization``
            (mean 0, variance 1, eps 0): 4 ONNX nodes instead of one ``GroupNormalization``,
            which onnxruntime (1.32) expands into about 15 elementwise nodes at run time, while
            it runs these as two fused kernels (measured 1.15 ms against 2.83 ms for
            8x64x56x56 at one thread). :func:`~scconv_surgery.optimize_for_inference` sets it
            for stride-1 layers with large inputs (``SRU.instance_norm_export``).

    Returns:
        ``(N, C, H, W)`` in ``x``'s dtype.
    """
    xf = x if x.dtype == scale.dtype else x.to(scale.dtype)
    if instance_norm:
        channels, height, width = xf.shape[1:]
        z = F.instance_norm(xf.reshape(-1, num_groups, channels // num_groups * height * width), eps=eps)
        z = F.batch_norm(z.reshape(-1, channels, height, width), torch.zeros_like(scale), torch.ones_like(scale),
                         scale, shift, False, 0.0, 0.0)
        gate = torch.sigmoid(z)  # eqs. 1-3
    else:
        gate = torch.sigmoid(F.group_norm(xf, num_groups, scale, shift, eps))  # eqs. 1-3
    keep = gate > threshold
    x2 = torch.where(keep, 0.0, gate * xf)  # W2 * X
    out = torch.where(keep, xf, x2) + x2.index_select(1, channel_roll)  # W1 * X + roll(W2 * X): eq. 4
    return out if out.dtype == x.dtype else out.to(x.dtype)


def cru(x: torch.Tensor, unit: CRU) -> torch.Tensor:
    """CRU, ``paper`` variant (eqs. 5-9), from ``unit``'s cached weights (``squeeze_weight``,
    ``y1_weight``, ``y2_weight``). ``(N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))``.

    At stride 1, ``Y2 = concat(PWC2(low), low)`` is one 1x1 conv whose last rows are the
    identity (``y2_weight``: ``low // r`` more rows, about 3% of the layer's multiply-adds).
    """
    grouped = unit.squeeze_weight.shape[1] != sum(unit.split)
    squeezed = F.conv2d(x, unit.squeeze_weight, None, 1, 0, 1, 2 if grouped else 1)
    up, low = squeezed.split((unit.squeeze1.out_channels, unit.squeeze2.out_channels), dim=1)
    gwc, stride = unit.gwc, unit.stride
    if unit.merges_gwc_pwc1():
        y1 = F.conv2d(up, unit.y1_weight, gwc.bias, stride, gwc.padding)  # eq. 5, one conv
    else:
        y1 = F.conv2d(up, gwc.weight, gwc.bias, stride, gwc.padding, 1, gwc.groups) + F.conv2d(
            up, unit.pwc1.weight, None, stride)
    if stride == 1:
        y2 = F.conv2d(low, unit.y2_weight)  # eq. 6
    else:
        y2 = torch.cat((F.conv2d(low, unit.pwc2.weight, None, stride),
                        F.avg_pool2d(low, stride, ceil_mode=True)), dim=1)
    diff = y1 - y2
    return y2 + torch.sigmoid(diff.mean((2, 3), keepdim=True)) * diff  # eqs. 7-9
