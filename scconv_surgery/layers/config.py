"""SCConv's hyperparameters and the channel constraints they must satisfy.

Li, Wen and He, "SCConv: Spatial and Channel Reconstruction Convolution for Feature
Redundancy", CVPR 2023: SRU's GroupNorm groups and gate threshold, CRU's split ratio
``alpha``, squeeze ratio ``r`` and group-wise conv groups ``g`` (section 3 of the paper).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

__all__ = ["Variant", "StridePolicy", "MergePolicy", "ScConvConfig", "gn_group_count", "scconv_constraint_error", "cru_split"]


class Variant(str, Enum):
    """Which formulation of SCConv a layer computes."""

    PAPER = "paper"  # the paper's equations (DESIGN section 2), nn.GroupNorm, partly soft gate
    SEED = "seed"  # the unofficial ScConv code circulating in blog posts, defects included, to float tolerance


class StridePolicy(str, Enum):
    """How a conv with stride s > 1 is replaced."""

    INSIDE = "inside"  # GWC, PWC1, PWC2 take stride s; the reused channels are average-pooled by s
    POOL = "pool"  # AvgPool(s) first, then SCConv at stride 1 at the output resolution
    SKIP = "skip"  # strided convs are left alone


class MergePolicy(str, Enum):
    """Whether CRU runs eq. 5 (``Y1 = GWC(up) + PWC1(up)``) as one dense ``k x k`` conv whose
    weight holds GWC's groups on the block diagonal and PWC1 in the centre tap, or as the
    grouped conv and the 1x1 conv added. Same values; the merged conv does about 1.6x the
    multiply-adds but is one kernel (it wins on GPUs, under compilers and at large maps)."""

    AUTO = "auto"  # merged in compiled and exported graphs, two convs in eager forwards
    ALWAYS = "always"  # merged everywhere
    NEVER = "never"  # two convs everywhere


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


def cru_split(in_channels: int, alpha: float, squeeze_ratio: int) -> tuple[int, int, int, int]:
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
    up, low, up_sq, low_sq = cru_split(in_channels, config.alpha, config.squeeze_ratio)
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
