"""SRU, the spatial reconstruction unit of SCConv (eqs. 1-4), in its two variants.

``paper`` (:class:`SRU`): ``G = GroupNorm(X)`` (eq. 1), ``w = gamma / sum(gamma)`` (eq. 2),
``S = sigmoid(G * w)`` (eq. 3); where ``S > t`` the input is kept whole (``W1 = 1, W2 = 0``),
elsewhere ``W1 = W2 = S``; ``out = X1 + roll(X2, -C // 2)`` over channels (eq. 4).
``seed`` (:class:`SeedSRU`): the unofficial ScConv code that circulates in blog posts: a hand-written group norm and hard
complementary masks ``S >= t`` and ``S < t``, through which GroupNorm gets no gradient.

The gate and its threshold are computed in float32 (float64 for float64 input) whatever the
input dtype or autocast; the output has the input's dtype and memory format.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._execution import InferenceCache, calls_submodules, gate_dtype
from ._fused import guarded_inverse_sum, ratio_affine, soft_gate
from .config import Variant, gn_group_count

__all__ = ["SRU", "SeedSRU", "SeedGroupNorm", "gamma_ratio", "reconstruct", "GAMMA_SUM_EPS"]

GAMMA_SUM_EPS = 1e-6  # smallest |sum(gamma)| used as the denominator of eq. 2


def gamma_ratio(gamma: torch.Tensor, eps: float = GAMMA_SUM_EPS) -> torch.Tensor:
    """``w_i = gamma_i / sum_j gamma_j`` (eq. 2: a plain ratio, not a softmax).

    Args:
        gamma: GroupNorm scale, shape ``(C,)``.
        eps: the denominator's magnitude is clamped to at least ``eps``, its sign kept (a sum
            of exactly 0 counts as positive), so that a sum near 0 gives large, finite weights.

    Returns:
        Shape ``(C,)``, in ``gamma``'s dtype: pass float32 (as SRU does) so that weights up
        to ``|gamma| / eps`` stay finite.
    """
    return gamma * guarded_inverse_sum(gamma, eps)


def reconstruct(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Cross reconstruction of eq. 4: ``concat(X11 + X22, X12 + X21)``.

    Written as ``x1 + roll(x2, -(C // 2))`` over channels, which equals eq. 4 for even C and
    generalises it to odd C (every channel of ``x2`` is added exactly once).

    Args:
        x1, x2: shape ``(N, C, H, W)``.

    Returns:
        Shape ``(N, C, H, W)``; the inputs are not modified.
    """
    return x1 + x2.roll(-(x2.shape[1] // 2), 1)


def _soft_gate_reference(x: torch.Tensor, gate: torch.Tensor, threshold: float) -> torch.Tensor:
    """:func:`soft_gate` as the paper states it (``torch.where``), for the module-by-module
    forward: slower on CPUs, exportable by every exporter, same values."""
    keep = gate > threshold
    x2 = x * torch.where(keep, 0.0, gate)
    return reconstruct(torch.where(keep, x, x2), x2)


def _hard_gate(x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """``seed`` steps 5-6: ``X1 = (S >= t) * X``, ``X2 = (S < t) * X``; eq. 4.

    ``dropped`` is the float mask ``S < t`` (``ceil(t - S)``: ``t - S`` lies in ``(-1, 1)``;
    boolean masks are slow on CPUs). ``X1 = X - X2`` is exact, so
    ``out = X1 + roll(X2) = X + roll(X2) - X2``. Without autograd ``dropped`` is overwritten.
    """
    x2 = dropped.mul_(x) if not torch.is_grad_enabled() else dropped * x
    return x2.roll(-(x.shape[1] // 2), 1).sub_(x2).add_(x)


def seed_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """The seed's group norm: ``(x - mean) / (std + eps) * weight + bias`` per group.

    Unbiased std, ``eps`` added to the std. Computed on ``x.unflatten(1, (G, C // G))``, a view
    for any memory format, so channels_last input is neither copied nor converted.

    Args:
        x: ``(N, C, H, W)``.
        num_groups: G, dividing C.
        weight, bias: ``(C,)``.
        eps: added to the std.

    Returns:
        ``(N, C, H, W)``, in the memory format of ``x``.
    """
    grouped = x.unflatten(1, (num_groups, -1))
    std, mean = torch.std_mean(grouped, dim=(2, 3, 4), keepdim=True)
    scale = weight.reshape(num_groups, -1, 1, 1) / (std + eps)
    return torch.addcmul(bias.reshape(num_groups, -1, 1, 1) - mean * scale, grouped, scale).flatten(1, 2)


class SeedGroupNorm(nn.Module):
    """The seed's hand-written group norm (its ``GroupBatchnorm2d``), for the ``seed`` variant.

    Unlike ``nn.GroupNorm``: the unbiased standard deviation, ``eps`` (1e-10) added to the std
    rather than the variance, and the scale drawn from ``randn``. Unlike the seed, it works on
    channels_last input and keeps its memory format.

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
        return seed_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class SRU(InferenceCache, nn.Module):
    """Spatial reconstruction unit (eqs. 1-4), ``paper`` variant; ``variant="seed"`` builds a
    :class:`SeedSRU`.

    Args:
        channels: C, input and output channels.
        gn_groups: upper bound on the GroupNorm group count; the largest divisor of C not
            above it is used.
        gate_threshold: ``t``; positions with gate ``S > t`` are kept whole in ``X1``.
        variant: ``paper`` (this class) or ``seed`` (:class:`SeedSRU`).
        device, dtype: where the parameters are created.

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``, in the input's dtype and memory format.

    Note:
        The fast forward folds ``w`` into GroupNorm's affine (``G * w = norm(X) * (gamma * w) +
        beta * w``), one kernel, and runs the gate and reconstruction as
        :func:`~scconv_surgery.layers._fused.soft_gate` (a hand-written backward; in place
        without autograd); it calls ``self.gn`` as a module only where that is observable
        (hooks, fx or jit tracing; see ``_execution.py``). :meth:`cache_inference_weights`
        keeps the folded affine for eval-mode forwards without gradients. ``use_triton``
        (default: environment variable ``SCCONV_TRITON=1``) runs steps 3-6 of eager CUDA
        inference as one fused Triton kernel (``triton_sru.py``; not measured yet, off by default).
    """

    def __new__(cls, *args: Any, variant: Variant | str = Variant.PAPER, **kwargs: Any) -> SRU:
        if cls is SRU and Variant(variant) is Variant.SEED:
            cls = SeedSRU
        return super().__new__(cls)

    def __init__(self, channels: int, *, gn_groups: int = 16, gate_threshold: float = 0.5,
                 variant: Variant | str = Variant.PAPER, device: Any = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.variant = Variant(variant)
        self.channels = channels
        self.gate_threshold = gate_threshold
        self.gn = self._make_norm(gn_group_count(channels, gn_groups), channels, device=device, dtype=dtype)
        self.register_buffer("gate_scale", None, persistent=False)  # cache_inference_weights()
        self.register_buffer("gate_shift", None, persistent=False)
        # opt-in fused Triton kernel for CUDA inference (triton_sru.py); read once, here
        self.use_triton = os.environ.get("SCCONV_TRITON", "0") == "1"

    def _make_norm(self, groups: int, channels: int, **kw: Any) -> nn.Module:
        return nn.GroupNorm(groups, channels, eps=1e-5, **kw)

    def gate_affine(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """GroupNorm's affine with ``w`` folded in: ``(gamma * w, beta * w)``, each ``(C,)``."""
        if self._use_cache():
            return self.gate_scale, self.gate_shift
        return self._folded_affine(dtype)

    def _folded_affine(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return ratio_affine(self.gn.weight.to(dtype), self.gn.bias.to(dtype), GAMMA_SUM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = gate_dtype(x)
        if calls_submodules(self.gn):
            gate = torch.sigmoid(self.gn(x).to(dtype) * gamma_ratio(self.gn.weight.to(dtype)).reshape(1, -1, 1, 1))
            return _soft_gate_reference(x, gate, self.gate_threshold).to(x.dtype)
        scale, shift = self.gate_affine(dtype)
        if self.use_triton and x.is_cuda and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            from .triton_sru import fused_soft_gate

            return fused_soft_gate(x, self.gn.num_groups, self.gn.eps, scale, shift, self.gate_threshold)
        xf = x.to(dtype)
        z = F.group_norm(xf, self.gn.num_groups, scale, shift, self.gn.eps)
        return soft_gate(xf, z, self.gate_threshold).to(x.dtype)

    def cache_inference_weights(self, enabled: bool = True) -> None:
        """Keep (``enabled``) or drop the folded GroupNorm affine used by eval-mode forwards that
        need no parameter gradients (see :class:`InferenceCache`)."""
        if enabled:
            self._refresh_cache()
        else:
            self.gate_scale = self.gate_shift = None

    def _cache_params(self) -> tuple[torch.Tensor, ...]:
        return (self.gn.weight, self.gn.bias)

    def _has_cache(self) -> bool:
        return self.gate_scale is not None

    def _build_cache(self) -> None:
        self.gate_scale, self.gate_shift = self._folded_affine(gate_dtype(self.gn.weight))

    def extra_repr(self) -> str:
        return f"{self.channels}, variant={self.variant.value}, gate_threshold={self.gate_threshold}"


class SeedSRU(SRU):
    """SRU as the unofficial ScConv code (blog posts) computes it (``variant="seed"``): :class:`SeedGroupNorm` and
    hard masks ``S >= t`` / ``S < t``, through which GroupNorm receives no gradient."""

    def __init__(self, channels: int, *, gn_groups: int = 16, gate_threshold: float = 0.5,
                 variant: Variant | str = Variant.SEED, device: Any = None,
                 dtype: torch.dtype | None = None):
        super().__init__(channels, gn_groups=gn_groups, gate_threshold=gate_threshold, variant=Variant.SEED,
                         device=device, dtype=dtype)

    def _make_norm(self, groups: int, channels: int, **kw: Any) -> nn.Module:
        return SeedGroupNorm(groups, channels, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = gate_dtype(x)
        gn = self.gn
        if calls_submodules(gn):  # the seed's own masks
            gate = torch.sigmoid(gn(x).to(dtype) * gamma_ratio(gn.weight.detach().to(dtype)).reshape(1, -1, 1, 1))
            return reconstruct(x * (gate >= self.gate_threshold), x * (gate < self.gate_threshold)).to(x.dtype)
        with torch.no_grad():  # the masks carry no gradient: computed from plain values, w folded in
            scale, shift = self._folded_affine(dtype)
            gate = seed_group_norm(x.to(dtype), gn.num_groups, scale, shift, gn.eps).sigmoid_()
            dropped = torch.rsub(gate, self.gate_threshold).ceil_()
        return _hard_gate(x, dropped).to(x.dtype)

    def cache_inference_weights(self, enabled: bool = True) -> None:
        """Nothing to cache: the seed's group norm depends on each sample's statistics."""

    def _has_cache(self) -> bool:
        return False
