"""SCConv: Spatial and Channel Reconstruction Convolution.

Li, Wen and He, "SCConv: Spatial and Channel Reconstruction Convolution for Feature
Redundancy", CVPR 2023, pp. 6153-6162. ``ScConv = CRU(SRU(x))``:

- :class:`SRU` (spatial reconstruction unit, eqs. 1-4) gates the input by how informative
  each position is, judged from GroupNorm's per-channel scale, and cross-adds the
  informative and the less informative halves;
- :class:`CRU` (channel reconstruction unit, eqs. 5-9) splits the channels in two, squeezes
  both parts, transforms the upper part richly (group-wise + point-wise conv) and the lower
  part cheaply (point-wise conv + reuse), and fuses the two by a per-channel softmax.

Two variants (:class:`Variant`) compute it: ``paper`` follows the equations; ``seed``
reproduces, to float tolerance, the code of the user's seed document (hand-written group
norm, hard masks, a softmax over all 2C channels of the fuse). Both are generalised, beyond
the paper, to ``in_channels != out_channels`` and ``stride > 1`` (:class:`StridePolicy`) so
that a :class:`ScConv` is a drop-in for a dense k x k convolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Variant", "StridePolicy", "ScConvConfig", "ScConv", "SRU", "CRU",
    "scconv_constraint_error", "gn_group_count", "gamma_ratio", "reconstruct", "fuse_weights",
]

GAMMA_SUM_EPS = 1e-6  # smallest |sum(gamma)| used as the denominator of eq. 2


class Variant(str, Enum):
    """Which formulation of SCConv a layer computes."""

    PAPER = "paper"  # the paper's equations (DESIGN section 2), nn.GroupNorm, partly soft gate
    SEED = "seed"  # the seed document's code, defects included, to float tolerance


class StridePolicy(str, Enum):
    """How a conv with stride s > 1 is replaced."""

    INSIDE = "inside"  # GWC, PWC1, PWC2 take stride s; the reused channels are average-pooled by s
    POOL = "pool"  # AvgPool(s) first, then SCConv at stride 1 at the output resolution
    SKIP = "skip"  # strided convs are left alone


@dataclass(frozen=True)
class ScConvConfig:
    """SCConv hyperparameters (paper defaults), shared by every layer one rule replaces.

    Attributes:
        variant: ``paper`` or ``seed`` (:class:`Variant`).
        alpha: split ratio of CRU; the upper part has ``int(alpha * in_channels)`` channels.
        squeeze_ratio: ``r``, each part is squeezed to ``1/r`` of its channels by a 1x1 conv.
        gwc_groups: ``g``, the group count of the group-wise conv (GWC).
        gn_groups: upper bound on SRU's GroupNorm group count; the layer uses the largest
            divisor of ``in_channels`` not above it (the paper does not give it; the seed: 16).
        gate_threshold: ``t`` of SRU's gate (the paper: 0.5).
        stride_policy: how strided convs are replaced (:class:`StridePolicy`).
    """

    variant: Variant = Variant.PAPER
    alpha: float = 0.5
    squeeze_ratio: int = 2
    gwc_groups: int = 2
    gn_groups: int = 16
    gate_threshold: float = 0.5
    stride_policy: StridePolicy = StridePolicy.INSIDE

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", Variant(self.variant))
        object.__setattr__(self, "stride_policy", StridePolicy(self.stride_policy))
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        for name in ("squeeze_ratio", "gwc_groups", "gn_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= self.gate_threshold <= 1.0:
            raise ValueError(f"gate_threshold must be in [0, 1], got {self.gate_threshold}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (enums as their strings)."""
        d = asdict(self)
        d["variant"] = self.variant.value
        d["stride_policy"] = self.stride_policy.value
        return d


def gn_group_count(channels: int, gn_groups: int) -> int:
    """The largest divisor of ``channels`` that is at most ``gn_groups`` (at least 1)."""
    for g in range(min(gn_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _cru_split(in_channels: int, alpha: float, squeeze_ratio: int) -> tuple[int, int, int, int]:
    """(up, low, up // r, low // r) channel counts of CRU's split and squeeze."""
    up = int(alpha * in_channels)
    low = in_channels - up
    return up, low, up // squeeze_ratio, low // squeeze_ratio


def scconv_constraint_error(in_channels: int, out_channels: int, config: ScConvConfig) -> str | None:
    """Why SCConv cannot map ``in_channels -> out_channels`` with ``config``, or None if it can.

    The constraints: both squeezed parts keep at least one channel, ``up // r`` and
    ``out_channels`` are divisible by ``gwc_groups``, and ``out_channels > low // r`` so that
    PWC2 has at least one output channel (eq. 11 of the paper, generalised).
    """
    up, low, up_sq, low_sq = _cru_split(in_channels, config.alpha, config.squeeze_ratio)
    if in_channels < 2:
        return f"in_channels={in_channels}: SRU needs at least 2 channels"
    if up_sq < 1 or low_sq < 1:
        return (f"in_channels={in_channels} too small: squeezed parts have {up_sq} and {low_sq} "
                f"channels (alpha={config.alpha}, squeeze_ratio={config.squeeze_ratio})")
    if up_sq % config.gwc_groups:
        return (f"squeezed upper part ({up_sq} channels) is not divisible by "
                f"gwc_groups={config.gwc_groups}")
    if out_channels % config.gwc_groups:
        return f"out_channels={out_channels} is not divisible by gwc_groups={config.gwc_groups}"
    if out_channels <= low_sq:
        return f"out_channels={out_channels} must exceed the reused lower part ({low_sq} channels)"
    return None


def gamma_ratio(gamma: torch.Tensor, eps: float = GAMMA_SUM_EPS) -> torch.Tensor:
    """``w_i = gamma_i / sum_j gamma_j`` (eq. 2: a plain ratio, not a softmax).

    Args:
        gamma: GroupNorm scale, shape ``(C,)``.
        eps: the denominator's magnitude is clamped to at least ``eps`` (sign kept), so that a
            sum near 0 gives large but finite weights.

    Returns:
        Shape ``(1, C, 1, 1)``, ready to broadcast over ``(N, C, H, W)``, in ``gamma``'s dtype.

    Note:
        Computed in float32 and clamped to ``gamma``'s finite range, so that in float16 a sum
        near 0 gives the largest finite weight rather than ``inf`` (``0 * inf`` would be NaN).
    """
    work = gamma.to(torch.promote_types(gamma.dtype, torch.float32))
    total = work.sum()
    ratio = work / torch.copysign(total.abs().clamp_min(eps), total)
    if torch.finfo(gamma.dtype).max < torch.finfo(work.dtype).max:  # float16 / bfloat16
        limit = torch.finfo(gamma.dtype).max
        ratio = ratio.clamp(-limit, limit)
    return ratio.to(gamma.dtype).reshape(1, -1, 1, 1)


def reconstruct(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Cross reconstruction of eq. 4: ``concat(X11 + X22, X12 + X21)``.

    Written as ``x1 + roll(x2, -(C // 2))`` over channels, which equals eq. 4 for even C and
    generalises it to odd C (every channel of ``x2`` is added exactly once).

    Args:
        x1, x2: shape ``(N, C, H, W)``.

    Returns:
        Shape ``(N, C, H, W)``; the inputs are not modified.
    """
    return _reconstruct_(x1.clone(), x2)


def _reconstruct_(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """:func:`reconstruct` written into ``x1`` (two in-place adds on channel slices, no roll copy)."""
    channels = x1.shape[1]
    half = channels // 2
    x1[:, : channels - half].add_(x2[:, half:])
    x1[:, channels - half:].add_(x2[:, :half])
    return x1


def fuse_weights(y1: torch.Tensor, y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch weights of CRU's fuse (eqs. 7-8), ``paper`` variant.

    ``S_m = GAP(Y_m)`` per channel, then a softmax across the two branches, per channel.

    Args:
        y1, y2: the two branches, shape ``(N, C, H, W)``.

    Returns:
        ``(beta1, beta2)``, each ``(N, C, 1, 1)``, with ``beta1 + beta2 == 1``.
    """
    s = torch.stack((y1.mean((2, 3), keepdim=True), y2.mean((2, 3), keepdim=True)))
    beta = torch.softmax(s, dim=0)
    return beta[0], beta[1]


class SeedGroupNorm(nn.Module):
    """The seed's hand-written group norm (its ``GroupBatchnorm2d``), for the ``seed`` variant.

    Unlike ``nn.GroupNorm``: the unbiased standard deviation, ``eps`` (1e-10) added to the std
    rather than the variance, and the scale drawn from ``randn``. ``reshape`` replaces the
    seed's ``view``, so channels_last input works; the values are the same.

    Args:
        num_groups: groups; must divide ``num_channels``.
        num_channels: C.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-10, *,
                 device: Any = None, dtype: torch.dtype | None = None):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide num_channels={num_channels}")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_()
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(x.shape[0], self.num_groups, -1)
        mean = grouped.mean(dim=2, keepdim=True)
        std = grouped.std(dim=2, keepdim=True)
        normed = ((grouped - mean) / (std + self.eps)).reshape(x.shape)
        return normed * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class SRU(nn.Module):
    """Spatial reconstruction unit (eqs. 1-4).

    Args:
        channels: C, input and output channels.
        gn_groups: upper bound on the GroupNorm group count; the largest divisor of C not
            above it is used.
        gate_threshold: ``t``; positions with gate ``S > t`` are kept whole in ``X1``.
        variant: ``paper`` gates with ``W1 = 1, W2 = 0`` where ``S > t`` and ``W1 = W2 = S``
            elsewhere (gamma gets gradients); ``seed`` uses the hard masks ``S >= t`` and
            ``S < t`` (gamma gets no gradient).

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, *, gn_groups: int = 16, gate_threshold: float = 0.5,
                 variant: Variant | str = Variant.PAPER, device: Any = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.variant = Variant(variant)
        self.gate_threshold = gate_threshold
        groups = gn_group_count(channels, gn_groups)
        if self.variant is Variant.PAPER:
            self.gn: nn.Module = nn.GroupNorm(groups, channels, eps=1e-5, device=device, dtype=dtype)
        else:
            self.gn = SeedGroupNorm(groups, channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant is Variant.SEED:
            gate = torch.sigmoid(self.gn(x) * gamma_ratio(self.gn.weight))  # eqs. 1-3
            x1 = (gate >= self.gate_threshold) * x
            x2 = (gate < self.gate_threshold) * x
            return _reconstruct_(x1, x2)
        # eqs. 1-3 with w folded into GroupNorm's affine: GN(x) * w = norm(x) * (gamma * w) + beta * w,
        # so normalising, scaling and weighting are one kernel
        gn = self.gn
        w = gamma_ratio(gn.weight).reshape(-1)
        gate = torch.sigmoid_(F.group_norm(x, gn.num_groups, gn.weight * w, gn.bias * w, gn.eps))
        # step 4 without torch.where / masked_fill (slow on CPU) and with few fresh activations (each
        # one costs page faults): keep = 1 where S > t, else 0, exactly (S > 0, t >= 0); no gradient
        return _GateReconstruct.apply(x, gate, self.gate_threshold)  # steps 4-6


def _keep_mask(gate: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where ``gate > threshold``, else 0, in ``gate``'s dtype (exact: gate > 0, threshold >= 0).

    ``ceil(threshold(...))`` rather than ``gate > t`` plus a cast, or ``torch.where``: those are
    several times slower on CPU.
    """
    return torch.ceil_(F.threshold(gate, threshold, 0.0))


class _GateReconstruct(torch.autograd.Function):
    """SRU steps 4-6 (paper variant) with a hand-written backward.

    Forward: ``keep = S > t``; ``X1 = keep * X + (1 - keep) * S * X``; ``X2 = (1 - keep) * S * X``;
    ``out = X1 + roll(X2, -(C // 2))`` (eq. 4). Backward, with ``G`` the output gradient and
    ``R = roll(G, C // 2)`` the gradient reaching ``X2``: ``dX = keep * G + (1 - keep) * S * (G + R)``
    and ``dS = (1 - keep) * X * (G + R)``: six passes where autograd's generic chain takes about
    twelve. The mask is recomputed from ``S`` instead of being saved.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gate: torch.Tensor, threshold: float) -> torch.Tensor:
        keep = _keep_mask(gate.detach(), threshold)
        soft = gate * x  # W1 = W2 = S where S <= t
        x2 = soft.addcmul_(keep, soft, value=-1.0)  # W2 = 0 where S > t (S*x - S*x = 0 exactly)
        x1 = torch.addcmul(x2, keep, x)  # W1 = 1 where S > t: 0 + x
        ctx.save_for_backward(x, gate)
        ctx.threshold = threshold
        return _reconstruct_(x1, x2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, gate = ctx.saved_tensors
        channels = grad.shape[1]
        half = channels // 2
        total = grad.clone()  # G + R, R = roll(G, C // 2): X2's channel j fed output channel j - C//2
        total[:, half:].add_(grad[:, : channels - half])
        total[:, :half].add_(grad[:, channels - half:])
        keep = _keep_mask(gate, ctx.threshold)
        total.addcmul_(keep, total, value=-1.0)  # (1 - keep) * (G + R)
        grad_gate = total * x if ctx.needs_input_grad[1] else None
        grad_x = (total.mul_(gate)).addcmul_(keep, grad) if ctx.needs_input_grad[0] else None
        return grad_x, grad_gate, None


class CRU(nn.Module):
    """Channel reconstruction unit (eqs. 5-9), generalised to ``in != out`` and stride.

    Split ``in_channels`` into ``up = int(alpha * C_in)`` and ``low = C_in - up``; squeeze
    each by a 1x1 conv to ``up // r`` and ``low // r`` channels;
    ``Y1 = GWC(up) + PWC1(up)`` (eq. 5); ``Y2 = concat(PWC2(low), low)`` (eq. 6);
    ``Y = beta1 * Y1 + beta2 * Y2`` with per-channel branch weights (eqs. 7-9).

    With ``stride > 1``, GWC, PWC1 and PWC2 take the stride and the reused ``low`` channels
    are average-pooled (ceil mode) by it, so the output is ``ceil(H / stride)`` high, as a
    ``kernel_size`` conv with padding ``kernel_size // 2`` gives.

    Args:
        in_channels: C_in.
        out_channels: C_out (default C_in); must exceed ``low // r``.
        kernel_size: odd k of GWC (the replaced conv's kernel).
        stride: s of GWC, PWC1, PWC2.
        alpha, squeeze_ratio, gwc_groups: see :class:`ScConvConfig`.
        variant: ``paper`` fuses with a softmax across the two branches per channel;
            ``seed`` with a softmax over all 2 * C_out concatenated channels, as the seed code.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))``.

    Raises:
        ValueError: the channel counts violate :func:`scconv_constraint_error`.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, kernel_size: int = 3,
                 stride: int = 1, alpha: float = 0.5, squeeze_ratio: int = 2, gwc_groups: int = 2,
                 variant: Variant | str = Variant.PAPER, device: Any = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        config = ScConvConfig(alpha=alpha, squeeze_ratio=squeeze_ratio, gwc_groups=gwc_groups)
        problem = scconv_constraint_error(in_channels, out_channels, config)
        if problem:
            raise ValueError(f"CRU({in_channels} -> {out_channels}): {problem}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.variant = Variant(variant)
        self.stride = stride
        up, low, up_sq, low_sq = _cru_split(in_channels, alpha, squeeze_ratio)
        self.split = (up, low)
        kw = {"device": device, "dtype": dtype}
        self.squeeze1 = nn.Conv2d(up, up_sq, 1, bias=False, **kw)
        self.squeeze2 = nn.Conv2d(low, low_sq, 1, bias=False, **kw)
        self.gwc = nn.Conv2d(up_sq, out_channels, kernel_size, stride=stride,
                             padding=kernel_size // 2, groups=gwc_groups, **kw)
        self.pwc1 = nn.Conv2d(up_sq, out_channels, 1, stride=stride, bias=False, **kw)
        self.pwc2 = nn.Conv2d(low_sq, out_channels - low_sq, 1, stride=stride, bias=False, **kw)
        self.fused_squeeze = up == low and up_sq == low_sq  # read once at construction (compile-friendly)
        self.merged_weight: torch.Tensor | None = None  # set by merge_pwc1_into_gwc() for inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_squeeze:  # both squeezes as one grouped 1x1 conv: no split copies, one kernel
            weight = torch.cat((self.squeeze1.weight, self.squeeze2.weight))
            up, low = F.conv2d(x, weight, groups=2).chunk(2, dim=1)
            # read by GWC and PWC1: copy the channel slice once, not in each conv, in the input's layout
            channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            up = up.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        else:
            up, low = torch.split(x, self.split, dim=1)
            up, low = self.squeeze1(up), self.squeeze2(low)
        if self.merged_weight is not None and not self.training:  # inference: GWC and PWC1 as one conv
            y1 = F.conv2d(up, self.merged_weight, self.gwc.bias, self.stride, self.gwc.padding)
        else:
            y1 = self.gwc(up).add_(self.pwc1(up))  # eq. 5 (a conv's output is not needed by its backward)
        reused = low if self.stride == 1 else F.avg_pool2d(low, self.stride, ceil_mode=True)
        y2 = torch.cat((self.pwc2(low), reused), dim=1)  # eq. 6
        if self.variant is Variant.SEED:
            out = torch.cat((y1, y2), dim=1)
            out = torch.softmax(out.mean((2, 3), keepdim=True), dim=1) * out
            out1, out2 = torch.split(out, y1.shape[1], dim=1)
            return out1 + out2
        # eqs. 7-9: a softmax over two branches is a sigmoid of the difference, and
        # beta1 * Y1 + beta2 * Y2 = Y2 + beta1 * (Y1 - Y2): one lerp instead of three passes
        beta1 = torch.sigmoid(y1.mean((2, 3), keepdim=True) - y2.mean((2, 3), keepdim=True))
        return torch.lerp(y2, y1, beta1)


    def merged_gwc_pwc1_weight(self) -> torch.Tensor:
        """GWC and PWC1 as one dense ``k x k`` weight: GWC's groups on the block diagonal, PWC1 added
        to the centre tap. ``conv(up, W) == GWC(up) + PWC1(up)`` (eq. 5) up to float rounding.

        Returns:
            Shape ``(C_out, up // r, k, k)``, detached.
        """
        gwc = self.gwc
        out_channels, in_per_group, k, _ = gwc.weight.shape
        groups = gwc.groups
        weight = gwc.weight.new_zeros(out_channels, in_per_group * groups, k, k)
        out_per_group = out_channels // groups
        for g in range(groups):  # construction time only, never in forward
            rows = slice(g * out_per_group, (g + 1) * out_per_group)
            weight[rows, g * in_per_group:(g + 1) * in_per_group] = gwc.weight[rows]
        weight[:, :, k // 2, k // 2] += self.pwc1.weight[:, :, 0, 0]
        return weight.detach()

    def merge_pwc1_into_gwc(self, merge: bool = True) -> None:
        """Run GWC + PWC1 as one dense conv (``merge=True``) or as the two convs again.

        Used in eval mode only (in train mode the two convs run and get gradients). The merged
        weight is a copy: after training, call this again before inference.
        """
        self.merged_weight = self.merged_gwc_pwc1_weight() if merge else None


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
        self.sru = SRU(in_channels, gn_groups=config.gn_groups, gate_threshold=config.gate_threshold,
                       variant=config.variant, device=device, dtype=dtype)
        self.cru = CRU(in_channels, out_channels, kernel_size=kernel_size,
                       stride=1 if pool_first else stride, alpha=config.alpha,
                       squeeze_ratio=config.squeeze_ratio, gwc_groups=config.gwc_groups,
                       variant=config.variant, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cru(self.sru(self.pool(x)))

    def extra_repr(self) -> str:
        c = self.config
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, variant={c.variant.value}, alpha={c.alpha}, "
                f"squeeze_ratio={c.squeeze_ratio}, gwc_groups={c.gwc_groups}, "
                f"gn_groups={self.sru.gn.num_groups}, gate_threshold={c.gate_threshold}, "
                f"stride_policy={c.stride_policy.value}")

