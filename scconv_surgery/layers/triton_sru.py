"""Opt-in fused Triton kernel for SRU's gate and reconstruction (``paper`` variant, inference).

SRU's steps 3-6 in one kernel: each program normalises one channel and its eq. 4 partner
(``(c + C // 2) mod C``) with the group statistics, applies the folded affine, the sigmoid,
the partly soft gate and the cross reconstruction, and writes the output once: one read of
the input per output (twice per element), one write, instead of about ten elementwise
kernels. The group statistics come from one ``torch.var_mean``.

Not used unless asked for: set ``SCCONV_TRITON=1`` before building the layers, or
``layer.sru.use_triton = True``; it then runs for eval-mode forwards without autograd on
CUDA tensors, in eager mode (``torch.compile`` generates its own fused kernels). Its speed
has not been measured yet: ``benchmarks/gpu_check.sh`` times it against the PyTorch path.
Checked on CPU against the PyTorch path with ``TRITON_INTERPRET=1`` (tests/test_triton_sru.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["fused_soft_gate"]


@triton.jit
def _soft_gate_kernel(x_ptr, out_ptr, mean_ptr, rstd_ptr, scale_ptr, shift_ptr,
                      channels, half, channels_per_group, groups, positions,
                      stride_n, stride_c, stride_p, threshold, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # one (sample, channel) per program row
    n = row // channels
    c = row % channels
    partner = (c + half) % channels  # X2's channel that eq. 4 adds to output channel c
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < positions
    base = x_ptr + n * stride_n + offsets * stride_p
    x = tl.load(base + c * stride_c, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(base + partner * stride_c, mask=mask, other=0.0).to(tl.float32)
    g = n * groups + c // channels_per_group
    gp = n * groups + partner // channels_per_group
    z = (x - tl.load(mean_ptr + g)) * tl.load(rstd_ptr + g) * tl.load(scale_ptr + c) + tl.load(shift_ptr + c)
    zp = ((xp - tl.load(mean_ptr + gp)) * tl.load(rstd_ptr + gp) * tl.load(scale_ptr + partner)
          + tl.load(shift_ptr + partner))
    s = 1.0 / (1.0 + tl.exp(-z))
    sp = 1.0 / (1.0 + tl.exp(-zp))
    w1 = tl.where(s > threshold, 1.0, s)  # keep whole where S > t
    w2 = tl.where(sp > threshold, 0.0, sp)
    y = x * w1 + xp * w2
    tl.store(out_ptr + n * stride_n + c * stride_c + offsets * stride_p, y.to(out_ptr.dtype.element_ty), mask=mask)


def fused_soft_gate(x: torch.Tensor, num_groups: int, eps: float, scale: torch.Tensor, shift: torch.Tensor,
                    threshold: float) -> torch.Tensor:
    """SRU's output (``paper`` variant) from its input and the folded GroupNorm affine.

    Args:
        x: ``(N, C, H, W)``, contiguous or channels_last.
        num_groups, eps: GroupNorm's.
        scale, shift: ``(C,)`` float32, ``gamma * w`` and ``beta * w``.
        threshold: ``t``.

    Returns:
        ``(N, C, H, W)`` in ``x``'s dtype and memory format. No autograd.
    """
    n, channels, height, width = x.shape
    if x.stride(2) != width * x.stride(3):
        x = x.contiguous()
    var, mean = torch.var_mean(x.float().unflatten(1, (num_groups, -1)), dim=(2, 3, 4), correction=0)
    rstd = (var + eps).rsqrt_()
    out = torch.empty_like(x)
    positions = height * width
    block = min(1024, triton.next_power_of_2(positions))
    grid = (n * channels, triton.cdiv(positions, block))
    _soft_gate_kernel[grid](x, out, mean.contiguous(), rstd.contiguous(), scale.float().contiguous(),
                            shift.float().contiguous(), channels, channels // 2, channels // num_groups,
                            num_groups, positions, x.stride(0), x.stride(1), x.stride(3), threshold, BLOCK=block)
    return out
