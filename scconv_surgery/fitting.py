"""Fitting SCConv's hyperparameters to a conv's channels, and what a replacement costs.

The paper's hyperparameters (``alpha`` 1/2, ``squeeze_ratio`` 2, ``gwc_groups`` 2) do not fit
every conv. DenseNet-121's 58 dense 3x3 convs map 128 to 32 channels (the growth rate), and
CRU needs ``out_channels > (in_channels - int(alpha * in_channels)) // squeeze_ratio`` so that
PWC2 has an output channel (:func:`~scconv_surgery.layers.scconv_constraint_error`). This
module finds the closest hyperparameters that fit (:func:`fit_config`), says which change
would make a skipped conv fit (:func:`suggest_fixes`), and compares what a conv and its
replacement cost (:func:`conv_cost`, :func:`scconv_cost`), which decides grouped convs.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .layers import ScConvConfig, StridePolicy, scconv_constraint_error
from .layers.config import cru_split

__all__ = ["Adaptation", "Cost", "fit_config", "suggest_fixes", "format_fix", "conv_cost", "scconv_cost",
           "scconv_macs"]

# what fvcore counts per element of a GroupNorm with affine (fvcore/nn/jit_handles.py, norm_flop_counter)
_GROUP_NORM_MACS = 5
# alpha values tried when suggesting a fix, nearest the configured one first
_ALPHAS = (0.5, 0.625, 0.375, 0.75, 0.25)


@dataclass(frozen=True)
class Adaptation:
    """One hyperparameter of a replacement that differs from the configured value, and why.

    Attributes:
        key: the :class:`~scconv_surgery.layers.ScConvConfig` field, e.g. ``squeeze_ratio``.
        configured: the value asked for (the paper's, unless a rule or ``config`` set it).
        used: the value the replacement uses.
        why: the constraint the configured value fails, e.g. ``out_channels=32 must exceed the
            reused lower part (32 channels)``, or ``GWC takes the conv's groups``.
    """

    key: str
    configured: Any
    used: Any
    why: str

    def __str__(self) -> str:
        return f"{self.key}={self.used} (not {self.configured}: {self.why})"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "configured": self.configured, "used": self.used, "why": self.why}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Adaptation:
        return cls(d["key"], d["configured"], d["used"], d.get("why", ""))


def _candidates(in_channels: int, config: ScConvConfig, *, groups: int | None, strict: bool):
    """``(squeeze_ratio, gwc_groups)`` pairs to try: the configured pair first, then squeeze
    ratios above and GWC group counts below the configured ones (none when ``strict``)."""
    r0, g0 = config.squeeze_ratio, groups or config.gwc_groups
    yield r0, g0
    if strict:
        return
    up = int(config.alpha * in_channels)
    for r in range(r0, max(up, r0) + 1):
        for g in ([g0] if groups else range(g0, 0, -1)):
            if (r, g) != (r0, g0):
                yield r, g


def fit_config(in_channels: int, out_channels: int, config: ScConvConfig, *, groups: int | None = None,
               strict: bool = False) -> tuple[ScConvConfig, tuple[Adaptation, ...]] | None:
    """The hyperparameters closest to ``config`` with which SCConv maps ``in -> out`` channels.

    Only two hyperparameters move, each in the direction that keeps the layer small:
    ``squeeze_ratio`` up from the configured value (the reused lower part shrinks, so PWC2
    gets output channels) and ``gwc_groups`` down (to a divisor of the squeezed upper part and
    of ``out_channels``). ``alpha``, ``gn_groups``, ``gate_threshold``, the variant and the
    stride policy are never changed. Of the pairs that fit, the one that changes the fewest
    hyperparameters wins, then the smallest ``squeeze_ratio``, then the largest ``gwc_groups``.

    Args:
        in_channels, out_channels: the conv's channels.
        config: the configured hyperparameters.
        groups: for a grouped conv, its group count: GWC takes it (``gwc_groups`` is set to
            it, recorded as an adaptation when it differs) and only ``squeeze_ratio`` moves.
        strict: change nothing but ``gwc_groups`` for a grouped conv (``strict_paper``).

    Returns:
        ``(config, adaptations)``, with one :class:`Adaptation` per changed hyperparameter
        (empty when ``config`` fits as it is), or None when no pair fits.

    Example:
        >>> config, adapted = fit_config(128, 32, ScConvConfig())  # a DenseNet-121 3x3 conv
        >>> config.squeeze_ratio, [a.key for a in adapted]
        (4, ['squeeze_ratio'])
    """
    best: tuple[tuple[int, int, int], int, int] | None = None
    r0, g0 = config.squeeze_ratio, config.gwc_groups
    for r, g in _candidates(in_channels, config, groups=groups, strict=strict):
        rank = ((r != r0) + (g != (groups or g0)), r - r0, -g)
        if best is not None and rank >= best[0]:
            continue
        if scconv_constraint_error(in_channels, out_channels, replace(config, squeeze_ratio=r, gwc_groups=g)) is None:
            best = (rank, r, g)
            if rank[0] == 0:  # the configured pair (tried first) fits: nothing can rank better
                break
    if best is None:
        return None
    _, r, g = best
    adaptations = []
    if r != r0:
        why = scconv_constraint_error(in_channels, out_channels, replace(config, gwc_groups=g)) or ""
        adaptations.append(Adaptation("squeeze_ratio", r0, r, why))
    if g != g0:
        why = ("GWC takes the conv's groups" if groups else
               scconv_constraint_error(in_channels, out_channels, replace(config, squeeze_ratio=r)) or "")
        adaptations.append(Adaptation("gwc_groups", g0, g, why))
    return replace(config, squeeze_ratio=r, gwc_groups=g), tuple(adaptations)


def suggest_fixes(in_channels: int, out_channels: int, config: ScConvConfig, *,
                  groups: int | None = None) -> list[dict[str, Any]]:
    """Hyperparameter changes that would make SCConv map ``in -> out`` (a rule could set them).

    Tried in order: the automatic adaptation (:func:`fit_config`); the ``alpha`` nearest the
    configured one that fits alone; and, where neither fits (a 3-channel stem), any
    ``squeeze_ratio`` and ``gwc_groups``, smallest change first.

    Returns:
        Up to two fixes, each a mapping from rule key to value, e.g.
        ``[{"squeeze_ratio": 4}, {"alpha": 0.75}]`` for a 128 -> 32 conv; empty when nothing
        fits (a 1-channel input).
    """
    fixes: list[dict[str, Any]] = []
    fitted = fit_config(in_channels, out_channels, config, groups=groups)
    if fitted is not None:
        fixes.append({a.key: a.used for a in fitted[1] if not (groups and a.key == "gwc_groups")})
    for alpha in sorted(_ALPHAS, key=lambda a: abs(a - config.alpha)):
        candidate = replace(config, alpha=alpha, gwc_groups=groups or config.gwc_groups)
        if alpha != config.alpha and scconv_constraint_error(in_channels, out_channels, candidate) is None:
            fixes.append({"alpha": alpha})
            break
    if not fixes:
        for r in range(1, max(in_channels, 1) + 1):
            g = next((g for g in range(groups or config.gwc_groups, 0, -1) if scconv_constraint_error(
                in_channels, out_channels, replace(config, squeeze_ratio=r, gwc_groups=g)) is None), None)
            if g is not None:
                fixes.append({"squeeze_ratio": r, **({"gwc_groups": g} if g != config.gwc_groups else {})})
                break
    return [fix for fix in fixes if fix][:2]


def format_fix(fix: Mapping[str, Any]) -> str:
    """``{"squeeze_ratio": 1, "gwc_groups": 1}`` -> ``squeeze_ratio: 1, gwc_groups: 1`` (rules-file form)."""
    return ", ".join(f"{key}: {value}" for key, value in fix.items())


@dataclass(frozen=True)
class Cost:
    """What one layer costs: parameters, and multiply-adds per output position.

    Attributes:
        params: parameter count (weights and biases; SCConv's GroupNorm affine included).
        macs_per_position: multiply-adds for one output position (``H_out * W_out`` times
            this is the layer's MACs for one image), as fvcore counts them (convs, and
            GroupNorm at 5 per element).
    """

    params: int
    macs_per_position: int

    def __str__(self) -> str:
        return f"{self.params:,} params, {self.macs_per_position:,} MACs per output position"


def conv_cost(in_channels: int, out_channels: int, kernel_size: int, *, groups: int = 1, bias: bool = False) -> Cost:
    """A ``kernel_size`` x ``kernel_size`` conv with ``groups`` groups."""
    macs = out_channels * (in_channels // groups) * kernel_size * kernel_size
    return Cost(macs + (out_channels if bias else 0), macs)


def _scconv_parts(in_channels: int, out_channels: int, kernel_size: int, config: ScConvConfig) -> tuple[int, int, int]:
    """(parameters, MACs per input position, MACs per output position) of SCConv, as fvcore counts.

    At the input resolution: GroupNorm (5 per element) and the two squeezes; at the output
    resolution: GWC, PWC1, PWC2. Parameters: GroupNorm affine, squeezes, GWC with bias, PWCs.
    """
    up, low, up_sq, low_sq = cru_split(in_channels, config.alpha, config.squeeze_ratio)
    squeeze = up * up_sq + low * low_sq
    transform = (up_sq // config.gwc_groups) * out_channels * kernel_size ** 2 + up_sq * out_channels \
        + low_sq * (out_channels - low_sq)
    params = 2 * in_channels + squeeze + transform + out_channels
    return params, squeeze + _GROUP_NORM_MACS * in_channels, transform


def scconv_macs(in_channels: int, out_channels: int, kernel_size: int, config: ScConvConfig, *,
                input_hw: tuple[int, int], output_hw: tuple[int, int]) -> int:
    """SCConv's multiply-adds for one image, as fvcore counts them.

    fvcore counts the convs' multiply-adds and SRU's GroupNorm at 5 per input element; the rest
    of SRU and CRU's fuse are elementwise work it does not count. Under the ``inside`` stride
    policy, GroupNorm and the two squeezes run at the input resolution and GWC, PWC1 and PWC2
    at the output resolution; under ``pool`` everything runs at the output resolution.

    Args:
        in_channels, out_channels, kernel_size, config: the layer.
        input_hw, output_hw: ``(H, W)`` of its input and output.
    """
    _, at_input, at_output = _scconv_parts(in_channels, out_channels, kernel_size, config)
    output_area = output_hw[0] * output_hw[1]
    input_area = input_hw[0] * input_hw[1] if config.stride_policy is not StridePolicy.POOL else output_area
    return at_input * input_area + at_output * output_area


def scconv_cost(in_channels: int, out_channels: int, kernel_size: int, stride: int, config: ScConvConfig) -> Cost:
    """SCConv's parameters (eqs. 1-9: GroupNorm affine, two squeezes, GWC with bias, PWC1,
    PWC2) and its multiply-adds per output position as fvcore counts them (:func:`scconv_macs`;
    with stride s under the ``inside`` policy, ``s * s`` input positions per output position).

    Example:
        >>> scconv_cost(64, 64, 3, 1, ScConvConfig())  # 29 * 64**2 / 16 + 2 * 64 + 64 params
        Cost(params=7616, macs_per_position=7744)
    """
    params, _, _ = _scconv_parts(in_channels, out_channels, kernel_size, config)
    macs = scconv_macs(in_channels, out_channels, kernel_size, config, input_hw=(stride, stride), output_hw=(1, 1))
    return Cost(params, macs)
