"""SRU, the spatial reconstruction unit of SCConv (eqs. 1-4), in its two variants.

``paper`` (:class:`SRU`): ``G = GroupNorm(X)`` (eq. 1), ``w = gamma / sum(gamma)`` (eq. 2),
``S = sigmoid(G * w)`` (eq. 3); where ``S > t`` the input is kept whole (``W1 = 1, W2 = 0``),
elsewhere ``W1 = W2 = S``; ``out = X1 + roll(X2, -C // 2)`` over channels (eq. 4).
``seed`` (:class:`SeedSRU`): the unofficial ScConv code that circulates in blog posts: a
hand-written group norm and hard complementary masks ``S >= t`` and ``S < t``, through which
GroupNorm gets no gradient. :func:`make_sru` builds the class of a variant.

The equations are stated in ``reference.py``; the forward picks its implementation with
``_execution.choose_path``. The gate and its threshold are computed in float32 (float64 for
float64 input) whatever the input dtype or autocast; the output has the input's dtype and
memory format.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _deploy
from ._execution import InferenceCache, Path, choose_path
from ._fused import ratio_affine, soft_gate
from .config import Variant, gn_group_count
from .reference import GAMMA_SUM_EPS, gate_dtype, seed_group_norm, sru_paper, sru_seed

__all__ = ["SRU", "SeedSRU", "SeedGroupNorm", "make_sru"]


class SeedGroupNorm(nn.Module):
    """The seed's hand-written group norm (its ``GroupBatchnorm2d``), for the ``seed`` variant.

    Unlike ``nn.GroupNorm``: the unbiased standard deviation, ``eps`` (1e-10) added to the std
    rather than the variance, and the scale drawn from ``randn``. Unlike the seed, it works on
    channels_last input and keeps its memory format (:func:`~.reference.seed_group_norm`).

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


def _hard_gate(x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """``seed`` steps 5-6 from the float mask ``dropped = (S < t)``: ``X2 = dropped * X``,
    ``out = X1 + roll(X2) = X + roll(X2) - X2`` (``X1 = X - X2`` is exact). Without autograd
    ``dropped`` is overwritten."""
    x2 = dropped.mul_(x) if not torch.is_grad_enabled() else dropped * x
    return x2.roll(-(x.shape[1] // 2), 1).sub_(x2).add_(x)


class SRU(InferenceCache, nn.Module):
    """Spatial reconstruction unit (eqs. 1-4), ``paper`` variant (:func:`make_sru` builds
    either variant).

    Args:
        channels: C, input and output channels.
        gn_groups: upper bound on the GroupNorm group count; the largest divisor of C not
            above it is used.
        gate_threshold: ``t``; positions with gate ``S > t`` are kept whole in ``X1``.
        variant: must be this class's variant (``paper``; :class:`SeedSRU`: ``seed``).
        device, dtype: where the parameters are created.

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``, in the input's dtype and memory format.

    Raises:
        ValueError: ``variant`` is not this class's (use :func:`make_sru`).

    Note:
        The fast forward folds ``w`` into GroupNorm's affine (``G * w = norm(X) * (gamma * w) +
        beta * w``), one kernel, and runs the gate and reconstruction as
        :func:`~scconv_surgery.layers._fused.soft_gate`. :meth:`cache_inference_weights`
        keeps the folded affine for eval-mode forwards without gradients. ``use_triton``
        (default: environment variable ``SCCONV_TRITON=1``) runs steps 3-6 of eager CUDA
        inference as one fused Triton kernel (``triton_sru.py``; not measured yet, off by default).
    """

    variant = Variant.PAPER
    # exported graphs write GroupNorm as InstanceNormalization + BatchNormalization (_deploy.sru);
    # set by optimize_for_inference for stride-1 layers with large inputs
    instance_norm_export: bool = False

    def __init__(self, channels: int, *, gn_groups: int = 16, gate_threshold: float = 0.5,
                 variant: Variant | str | None = None, device: Any = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if variant is not None and Variant(variant) is not self.variant:
            raise ValueError(f"{type(self).__name__} computes the {self.variant.value!r} variant, not "
                             f"{Variant(variant).value!r}: build layers with make_sru(..., variant=...)")
        self.channels = channels
        self.gate_threshold = gate_threshold
        self.gn = self._make_norm(gn_group_count(channels, gn_groups), channels, device=device, dtype=dtype)
        self.register_buffer("gate_scale", None, persistent=False)  # cache_inference_weights()
        self.register_buffer("gate_shift", None, persistent=False)
        self.register_buffer("channel_roll", None, persistent=False)
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
        path = choose_path(self, x, (self.gn,))
        if path is Path.MODULES:
            return sru_paper(x, self.gn(x), self.gn.weight, self.gate_threshold)
        if path is Path.EXPORT:
            return _deploy.sru(x, self.gn.num_groups, self.gn.eps, self.gate_scale, self.gate_shift,
                               self.gate_threshold, self.channel_roll, self.instance_norm_export)
        scale, shift = self.gate_affine(gate_dtype(x))
        if path is Path.KERNELS:
            return torch.ops.scconv.sru.default(x, scale, shift, self.gn.num_groups, self.gn.eps,
                                                self.gate_threshold)
        if self.use_triton and x.is_cuda and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            from .triton_sru import fused_soft_gate

            return fused_soft_gate(x, self.gn.num_groups, self.gn.eps, scale, shift, self.gate_threshold)
        xf = x.to(scale.dtype)
        z = F.group_norm(xf, self.gn.num_groups, scale, shift, self.gn.eps)
        return soft_gate(xf, z, self.gate_threshold).to(x.dtype)

    def cache_inference_weights(self, enabled: bool = True) -> None:
        """Keep (``enabled``) or drop the folded GroupNorm affine used by eval-mode forwards that
        need no parameter gradients (see :class:`~._execution.InferenceCache`)."""
        if enabled:
            self._refresh_cache()
        else:
            self.gate_scale = self.gate_shift = self.channel_roll = None

    def _cache_params(self) -> tuple[torch.Tensor, ...]:
        return (self.gn.weight, self.gn.bias)

    def _has_cache(self) -> bool:
        return self.gate_scale is not None

    def _build_cache(self) -> None:
        self.gate_scale, self.gate_shift = self._folded_affine(gate_dtype(self.gn.weight))
        channels = torch.arange(self.channels, device=self.gate_scale.device)
        self.channel_roll = (channels + self.channels // 2) % self.channels

    def extra_repr(self) -> str:
        return f"{self.channels}, variant={self.variant.value}, gate_threshold={self.gate_threshold}"


class SeedSRU(SRU):
    """SRU as the unofficial ScConv code (blog posts) computes it (``variant="seed"``):
    :class:`SeedGroupNorm` and hard masks ``S >= t`` / ``S < t``, through which GroupNorm
    receives no gradient. No inference cache (the norm depends on each sample's statistics),
    no kernels, no lean export graph: it exports as ``reference.sru_seed``."""

    variant = Variant.SEED

    def _make_norm(self, groups: int, channels: int, **kw: Any) -> nn.Module:
        return SeedGroupNorm(groups, channels, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gn = self.gn
        if choose_path(self, x, (gn,)) in (Path.MODULES, Path.EXPORT):
            return sru_seed(x, gn(x), gn.weight, self.gate_threshold)
        dtype = gate_dtype(x)
        with torch.no_grad():  # the masks carry no gradient: computed from plain values, w folded in
            scale, shift = self._folded_affine(dtype)
            gate = seed_group_norm(x.to(dtype), gn.num_groups, scale, shift, gn.eps).sigmoid_()
            dropped = torch.rsub(gate, self.gate_threshold).ceil_()
        return _hard_gate(x, dropped).to(x.dtype)

    def cache_inference_weights(self, enabled: bool = True) -> None:
        """Nothing to cache: the seed's group norm depends on each sample's statistics."""

    def _has_cache(self) -> bool:
        return False


def make_sru(channels: int, *, variant: Variant | str = Variant.PAPER, **kwargs: Any) -> SRU:
    """The SRU of ``variant``: :class:`SRU` (``paper``) or :class:`SeedSRU` (``seed``);
    ``kwargs`` as :class:`SRU`."""
    cls = SeedSRU if Variant(variant) is Variant.SEED else SRU
    return cls(channels, **kwargs)


