"""ScConv = CRU(SRU(x)): SCConv as a drop-in replacement for a dense k x k convolution.

Li, Wen and He, "SCConv: Spatial and Channel Reconstruction Convolution for Feature
Redundancy", CVPR 2023, pp. 6153-6162. Generalised beyond the paper to ``in_channels !=
out_channels`` and ``stride > 1`` (:class:`StridePolicy`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import ScConvConfig, StridePolicy
from ._execution import fuses_sru_and_squeeze
from .cru import make_cru
from .sru import make_sru

__all__ = ["ScConv"]


class ScConv(nn.Module):
    """SCConv, a drop-in replacement for a dense ``kernel_size`` x ``kernel_size`` conv.

    ``ScConv(x) = CRU(SRU(x))``, with SRU on ``in_channels`` and CRU mapping
    ``in_channels -> out_channels``.

    Args:
        in_channels: C_in of the replaced conv.
        out_channels: C_out of the replaced conv (default C_in).
        kernel_size: odd k of the replaced conv; GWC takes it (padding ``k // 2``).
        stride: s of the replaced conv.
        config: hyperparameters (:class:`ScConvConfig`; paper defaults). Under
            ``stride_policy="pool"`` a strided layer average-pools by s first and runs SCConv at
            stride 1; ``"inside"`` strides GWC, PWC1, PWC2 (``"skip"`` is the planner's
            business and acts as ``"inside"`` here).
        device, dtype: where the parameters are created.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))``, the shape a conv with
        padding ``k // 2`` gives.

    Raises:
        ValueError: the channel counts violate :func:`scconv_constraint_error`.

    Example:
        >>> layer = ScConv(64)  # replaces nn.Conv2d(64, 64, 3, padding=1): 36,864 weights
        >>> sum(p.numel() for p in layer.parameters())  # 29 * 64**2 / 16 + 2 * 64 + 64
        7616
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, kernel_size: int = 3,
                 stride: int = 1, config: ScConvConfig | None = None, device: Any = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        config = config or ScConvConfig()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.config = config
        pool_first = stride > 1 and config.stride_policy is StridePolicy.POOL
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if pool_first else nn.Identity()
        self.sru = make_sru(in_channels, gn_groups=config.gn_groups, gate_threshold=config.gate_threshold,
                       variant=config.variant, device=device, dtype=dtype)
        self.cru = make_cru(in_channels, out_channels, kernel_size=kernel_size,
                       stride=1 if pool_first else stride, alpha=config.alpha,
                       squeeze_ratio=config.squeeze_ratio, gwc_groups=config.gwc_groups,
                       variant=config.variant, device=device, dtype=dtype)
        # SRU and CRU's squeezes as one C++ kernel (NCHW CPU input): set by optimize_for_inference's timing
        self.fuse_sru_squeeze = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if fuses_sru_and_squeeze(self, x):  # the C++ kernels: SRU's output is never written
            sru, cru = self.sru, self.cru
            scale, shift = sru.gate_affine(torch.float32)
            grouped = cru.squeeze_weight.shape[1] != x.shape[1]
            # the squeezed parts as two tensors, channels_last where GWC will run on them (no copy)
            channels_last = cru.y1_channels_last or not x.is_contiguous()
            squeezed = torch.ops.scconv.sru_squeeze_split.default(
                x, scale, shift, sru.gn.num_groups, sru.gn.eps, sru.gate_threshold, cru.squeeze_weight,
                2 if grouped else 1, cru.squeeze1.out_channels, channels_last)
            return cru.from_squeezed_with_kernels(squeezed)
        return self.cru(self.sru(x))

    def extra_repr(self) -> str:
        c = self.config
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, variant={c.variant.value}, alpha={c.alpha}, "
                f"squeeze_ratio={c.squeeze_ratio}, gwc_groups={c.gwc_groups}, "
                f"gn_groups={self.sru.gn.num_groups}, gate_threshold={c.gate_threshold}, "
                f"stride_policy={c.stride_policy.value}")
