"""CRU, the channel reconstruction unit of SCConv (eqs. 5-9), in its two variants.

Split ``C_in`` into ``up = int(alpha * C_in)`` and ``low = C_in - up`` channels; squeeze each
by a 1x1 conv to ``up // r`` and ``low // r``; ``Y1 = GWC(up) + PWC1(up)`` (eq. 5);
``Y2 = concat(PWC2(low), low)`` (eq. 6); fuse ``Y = beta1 * Y1 + beta2 * Y2`` (eqs. 7-9), with
``beta`` a softmax across the two branches per channel (``paper``, :class:`CRU`) or over all
``2 * C_out`` concatenated channels (``seed``, :class:`SeedCRU`).

The equations are stated in ``reference.py`` (:func:`~.reference.cru_branches`,
:func:`~.reference.fuse_paper`, :func:`~.reference.fuse_seed`); the forward picks its
implementation with ``_execution.choose_path``. The fast forward runs the same parameters in few
operators: on CPUs both squeezes run as one 1x1 conv with two groups; on GPUs each as a 1x1 conv
over the whole input whose weight is zero outside its part (no channel-slice copy of a
channels_last tensor). Eq. 5 runs as GWC and PWC1 or as one dense conv (:class:`MergePolicy`,
the attribute ``merge``, decided in :meth:`CRU.merges_gwc_pwc1` only). The fuse is
:func:`~scconv_surgery.layers._fused.fuse` (a hand-written backward, in-place without autograd).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _deploy
from ._execution import InferenceCache, Path, choose_path
from ._fused import fuse
from .config import MergePolicy, ScConvConfig, Variant, cru_split, scconv_constraint_error
from .reference import cru_branches, fuse_paper, fuse_seed

__all__ = ["CRU", "SeedCRU", "make_cru", "merged_gwc_pwc1_weight"]


def merged_gwc_pwc1_weight(gwc_weight: torch.Tensor, pwc1_weight: torch.Tensor, groups: int) -> torch.Tensor:
    """GWC and PWC1 as one dense ``k x k`` weight: GWC's groups on the block diagonal, PWC1
    added to the centre tap, so ``conv(up, W) == GWC(up) + PWC1(up)`` (eq. 5) up to rounding.

    Args:
        gwc_weight: ``(C_out, up // r // g, k, k)``.
        pwc1_weight: ``(C_out, up // r, 1, 1)``.
        groups: g.

    Returns:
        ``(C_out, up // r, k, k)``, differentiable in both inputs.
    """
    out_channels, in_per_group, k, _ = gwc_weight.shape
    if groups == 1:
        dense = gwc_weight
    else:  # rows of group i hold its weights at columns i * in_per_group ... (i + 1) * in_per_group - 1
        dense = torch.block_diag(*gwc_weight.flatten(1).chunk(groups)).view(out_channels, groups * in_per_group, k, k)
    return dense + F.pad(pwc1_weight, (k // 2,) * 4)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    """A 1x1 conv without bias: ``(N, C_in, H, W)`` and ``(C_out, C_in / groups, 1, 1)`` ->
    ``(N, C_out, H / stride, W / stride)``.

    On CPUs, at stride 1, it runs as a matrix product wherever the input's layout allows one
    without a copy: oneDNN reorders NCHW input and output around a 1x1 conv, which costs many
    times the multiply-adds (measured at 2 threads, 8x16x56x56 to 64 channels: 4.2 ms as a conv,
    0.28 ms as a matmul), and a 1x1 conv on a channel slice of a channels_last tensor (or a
    grouped one) falls to PyTorch's slow im2col path (8 ms for the same shape at 1 thread).

    - NCHW within each sample (contiguous, or a channel slice of a contiguous tensor): a batched
      matmul over the samples, output NCHW;
    - channels_last (or a channel slice of it): the pixels are rows of one matrix, output
      channels_last;
    - elsewhere, ``F.conv2d``.
    """
    n, c, h, w = x.shape
    if stride != 1 or x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.conv2d(x, weight, None, stride, 0, 1, groups)
    out = weight.shape[0]
    if x.stride(3) == 1 and x.stride(2) == w and x.stride(1) == h * w:
        # bmm over the samples (times the groups), the weight broadcast: torch.matmul would fold
        # the batch into the rows, which transposes and copies input and output
        batch, rows, inner = n * groups, out // groups, c // groups
        weights = weight.view(1, groups, rows, inner).expand(n, groups, rows, inner).reshape(batch, rows, inner)
        return torch.bmm(weights, x.reshape(batch, inner, h * w)).view(n, out, h, w)
    if x.stride(1) == 1 and x.stride(2) == w * x.stride(3) and x.stride(0) == h * x.stride(2):
        pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: row stride x.stride(3)
        matrix = weight.view(out, c // groups)
        if groups == 1:
            y = pixels @ matrix.t()
        elif torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or pixels.dtype != matrix.dtype:
            # (autocast does not cast the out= form below, which then meets a float32 weight)
            y = torch.cat([p @ m.t() for p, m in zip(pixels.chunk(groups, 1), matrix.chunk(groups))], 1)
        else:  # each group's product straight into its columns
            y = pixels.new_empty(n * h * w, out)
            for p, m, o in zip(pixels.chunk(groups, 1), matrix.chunk(groups), y.chunk(groups, 1)):
                torch.mm(p, m.t(), out=o)
        return y.view(n, h, w, out).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, None, stride, 0, 1, groups)


class CRU(InferenceCache, nn.Module):
    """Channel reconstruction unit (eqs. 5-9), ``paper`` variant, generalised to ``in != out``
    and stride (:func:`make_cru` builds either variant).

    With ``stride > 1``, GWC, PWC1 and PWC2 take the stride and the reused ``low // r``
    channels are average-pooled (ceil mode) by it, so the output is ``ceil(H / stride)`` high,
    as a ``kernel_size`` conv with padding ``kernel_size // 2`` gives.

    Args:
        in_channels: C_in.
        out_channels: C_out (default C_in); must exceed ``low // r``.
        kernel_size: odd k of GWC (the replaced conv's kernel).
        stride: s of GWC, PWC1, PWC2.
        alpha, squeeze_ratio, gwc_groups: see :class:`ScConvConfig`.
        variant: must be this class's variant (``paper``; :class:`SeedCRU`: ``seed``).
        device, dtype: where the parameters are created.

    Attributes:
        merge: how eq. 5 runs (:class:`MergePolicy`; default ``auto``: merged in compiled and
            exported graphs, two convs in eager forwards). :func:`~scconv_surgery.optimize_for_inference`
            sets it per layer from timing.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))``.

    Raises:
        ValueError: the channel counts violate :func:`scconv_constraint_error`, k is even, or
            ``variant`` is not this class's (use :func:`make_cru`).
    """

    variant = Variant.PAPER

    def __init__(self, in_channels: int, out_channels: int | None = None, *, kernel_size: int = 3,
                 stride: int = 1, alpha: float = 0.5, squeeze_ratio: int = 2, gwc_groups: int = 2,
                 variant: Variant | str | None = None, device: Any = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if variant is not None and Variant(variant) is not self.variant:
            raise ValueError(f"{type(self).__name__} computes the {self.variant.value!r} variant, not "
                             f"{Variant(variant).value!r}: build layers with make_cru(..., variant=...)")
        out_channels = in_channels if out_channels is None else out_channels
        config = ScConvConfig(alpha=alpha, squeeze_ratio=squeeze_ratio, gwc_groups=gwc_groups)
        problem = scconv_constraint_error(in_channels, out_channels, config)
        if problem:
            raise ValueError(f"CRU({in_channels} -> {out_channels}): {problem}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.stride = stride
        up, low, up_sq, low_sq = cru_split(in_channels, alpha, squeeze_ratio)
        self.split = (up, low)
        kw = {"device": device, "dtype": dtype}
        self.squeeze1 = nn.Conv2d(up, up_sq, 1, bias=False, **kw)
        self.squeeze2 = nn.Conv2d(low, low_sq, 1, bias=False, **kw)
        self.gwc = nn.Conv2d(up_sq, out_channels, kernel_size, stride=stride,
                             padding=kernel_size // 2, groups=gwc_groups, **kw)
        self.pwc1 = nn.Conv2d(up_sq, out_channels, 1, stride=stride, bias=False, **kw)
        self.pwc2 = nn.Conv2d(low_sq, out_channels - low_sq, 1, stride=stride, bias=False, **kw)
        # cache_inference_weights(): the assembled weights of eval-mode forwards without gradients
        self.register_buffer("squeeze_weight", None, persistent=False)  # see _squeeze_weights()
        self.register_buffer("y1_weight", None, persistent=False)
        self.register_buffer("y2_weight", None, persistent=False)  # PWC2 + identity rows (_deploy.cru)
        self.merge = MergePolicy.AUTO
        # eq. 5's convs on a channels_last copy of the squeezed upper part (NCHW input on CPUs:
        # oneDNN runs a grouped conv on an NCHW channel slice at a third of its channels_last
        # speed); set per layer by optimize_for_inference's timing. Y1, and so the output, is then
        # channels_last, as a PyTorch conv's output is for channels_last weights.
        self.y1_channels_last = False

    def _squeezes_grouped(self, device: torch.device) -> bool:
        """Both squeezes as one conv with two groups: on CPUs, where the parts have equal sizes.
        Measured on CPUs against slicing the input (a conv copies a channel slice) and against
        zero-padded weights (twice the multiply-adds): fastest in training, and at 2 threads."""
        return device.type == "cpu" and self.split[0] == self.split[1] and \
            self.squeeze1.out_channels == self.squeeze2.out_channels

    def _squeeze_weights(self, grouped: bool) -> tuple[torch.Tensor, ...]:
        """Grouped: one ``(up // r + low // r, C_in / 2, 1, 1)`` weight for a 2-group conv.
        Otherwise the squeezes as ``(up // r, C_in, 1, 1)`` and ``(low // r, C_in, 1, 1)``
        weights over the whole input, each zero outside its part: no channel slice of the
        input, which GPUs would copy for a conv."""
        if grouped:
            return (torch.cat((self.squeeze1.weight, self.squeeze2.weight)),)
        up, low = self.split
        return (F.pad(self.squeeze1.weight, (0, 0, 0, 0, 0, low)),
                F.pad(self.squeeze2.weight, (0, 0, 0, 0, up, 0)))

    def merges_gwc_pwc1(self) -> bool:
        """Whether this forward runs eq. 5 as one dense conv: the one place ``merge`` is read."""
        merge = MergePolicy(self.merge)
        if merge is MergePolicy.AUTO:
            return torch.compiler.is_compiling() or torch.jit.is_tracing()
        return merge is MergePolicy.ALWAYS

    def _squeezed(self, x: torch.Tensor, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Both squeezes: the inputs of eq. 5 and eq. 6 (see :meth:`_squeeze_weights`)."""
        grouped = self._squeezes_grouped(x.device)
        if cached:
            weights = (self.squeeze_weight,) if grouped else self.squeeze_weight.split(self.squeeze1.out_channels)
        else:
            weights = self._squeeze_weights(grouped)
        if grouped:
            return pointwise_conv(x, weights[0], groups=2).split(self.squeeze1.out_channels, dim=1)
        return pointwise_conv(x, weights[0]), pointwise_conv(x, weights[1])

    def _submodules(self) -> tuple[nn.Module, ...]:
        return (self.squeeze1, self.squeeze2, self.gwc, self.pwc1, self.pwc2)

    def _module_branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Y1, Y2)`` of eqs. 5-6 as stated, each submodule called as a module."""
        return cru_branches(x, self.split, self.squeeze1, self.squeeze2, self.gwc, self.pwc1, self.pwc2,
                            self.stride)

    def _branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Y1, PWC2(low), reused low)`` of eqs. 5-6 (``Y2`` is the concat of the last two),
        by the fast forward."""
        cached = self._use_cache()
        return self._branches_from(*self._squeezed(x, cached), cached)

    def _branches_from(self, up: torch.Tensor, low: torch.Tensor, cached: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_branches` from the squeezed parts (``up // r`` and ``low // r`` channels)."""
        gwc = self.gwc
        if self.y1_channels_last or (up.stride(1) == 1 and up.device.type == "cpu"):
            # the k x k conv on a small channels_last copy: oneDNN's fast layout, which a channel
            # slice of a channels_last tensor is not (measured 19 ms against 4 ms at C=64@56 b8)
            up = up.contiguous(memory_format=torch.channels_last)
        if self.merges_gwc_pwc1():
            weight = self.y1_weight if cached else merged_gwc_pwc1_weight(gwc.weight, self.pwc1.weight, gwc.groups)
            y1 = F.conv2d(up, weight, gwc.bias, self.stride, gwc.padding)
        else:  # the conv output is ours: PWC1 is added in place (conv backward does not need it)
            y1 = F.conv2d(up, gwc.weight, gwc.bias, self.stride, gwc.padding, 1, gwc.groups)
            y1 = y1.add_(pointwise_conv(up, self.pwc1.weight, self.stride))
        return y1, pointwise_conv(low, self.pwc2.weight, self.stride), self._reused(low)

    def _reused(self, low: torch.Tensor) -> torch.Tensor:
        """Eq. 6's reused part: the squeezed lower part, average-pooled at stride > 1."""
        return low if self.stride == 1 else F.avg_pool2d(low, self.stride, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = choose_path(self, x, self._submodules())
        if path is Path.MODULES:
            return fuse_paper(*self._module_branches(x))
        if path is Path.EXPORT:
            return _deploy.cru(x, self)
        if path is Path.KERNELS:
            cached = self._use_cache()
            return self.from_squeezed_with_kernels(self._squeezed(x, cached), cached=cached)
        return fuse(*self._branches(x))

    def from_squeezed_with_kernels(self, squeezed: torch.Tensor | tuple[torch.Tensor, torch.Tensor], *,
                                   cached: bool = True) -> torch.Tensor:
        """Eqs. 5-9 from both squeezed parts (one tensor, or ``(up, low)``) with the C++ kernels
        (``Path.KERNELS`` only; ``ScConv`` calls it after the fused SRU + squeeze kernel). At stride 1
        GWC runs as a conv and ``scconv::cru_fuse_`` adds PWC1 and fuses with ``Y2`` in place in its
        output (``merge`` does not apply: PWC1 costs less there than in a merged conv); at stride > 1
        the convs run as in the fast forward and ``scconv::fuse_`` fuses."""
        if isinstance(squeezed, torch.Tensor):
            squeezed = squeezed.split((self.squeeze1.out_channels, self.squeeze2.out_channels), dim=1)
        if self.stride == 1:  # GWC as a conv; PWC1, PWC2 and the fuse in one kernel, in place in GWC's output
            up, low = squeezed
            gwc = self.gwc
            if self.y1_channels_last or (up.stride(1) == 1 and up.device.type == "cpu"):
                up = up.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout (see _branches_from)
            y1 = F.conv2d(up, gwc.weight, gwc.bias, 1, gwc.padding, 1, gwc.groups)
            if not (y1.is_contiguous() or y1.is_contiguous(memory_format=torch.channels_last)):
                y1 = y1.contiguous()
            y2_weight = self.y2_weight if cached else self._y2_weight()
            torch.ops.scconv.cru_fuse_.default(y1, up, low, self.pwc1.weight, y2_weight)
            return y1
        y1, pwc2, reused = self._branches_from(*squeezed, cached)
        torch.ops.scconv.fuse_.default(y1, pwc2, reused)
        return y1

    def cache_inference_weights(self, enabled: bool = True) -> None:
        """Keep (``enabled``) or drop the assembled weights used by eval-mode forwards that need
        no parameter gradients (see :class:`~._execution.InferenceCache`): the squeeze weights
        (concatenated for a grouped conv on CPUs, zero-padded elsewhere) and GWC + PWC1 as one
        dense conv (used where :meth:`merges_gwc_pwc1`)."""
        if enabled:
            self._refresh_cache()
        else:
            self.squeeze_weight = self.y1_weight = self.y2_weight = None

    def _cache_params(self) -> tuple[torch.Tensor, ...]:
        return (self.squeeze1.weight, self.squeeze2.weight, self.gwc.weight, self.pwc1.weight, self.pwc2.weight)

    def _has_cache(self) -> bool:
        return self.squeeze_weight is not None

    def _build_cache(self) -> None:
        self.squeeze_weight = torch.cat(self._squeeze_weights(self._squeezes_grouped(self.squeeze1.weight.device)))
        self.y1_weight = merged_gwc_pwc1_weight(self.gwc.weight, self.pwc1.weight, self.gwc.groups)
        self.y2_weight = self._y2_weight()

    def _y2_weight(self) -> torch.Tensor:
        """``Y2 = concat(PWC2(low), low)`` as one ``(C_out, low // r, 1, 1)`` weight: PWC2's rows,
        then the identity for the reused channels (stride 1)."""
        pwc2 = self.pwc2.weight
        identity = torch.eye(pwc2.shape[1], device=pwc2.device, dtype=pwc2.dtype).reshape(pwc2.shape[1], -1, 1, 1)
        return torch.cat((pwc2, identity))


class SeedCRU(CRU):
    """CRU as the unofficial ScConv code (blog posts) computes it (``variant="seed"``): the fuse
    is a softmax over all ``2 * C_out`` channels of ``concat(GAP(Y1), GAP(Y2))``
    (:func:`~.reference.fuse_seed`), then ``Y1 * b1 + Y2 * b2``."""

    variant = Variant.SEED

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if choose_path(self, x, self._submodules()) in (Path.MODULES, Path.EXPORT):
            return fuse_seed(*self._module_branches(x))
        y1, pwc2, reused = self._branches(x)
        return fuse_seed(y1, torch.cat((pwc2, reused), dim=1))


def make_cru(in_channels: int, out_channels: int | None = None, *, variant: Variant | str = Variant.PAPER,
             **kwargs: Any) -> CRU:
    """The CRU of ``variant``: :class:`CRU` (``paper``) or :class:`SeedCRU` (``seed``);
    ``kwargs`` as :class:`CRU`."""
    cls = SeedCRU if Variant(variant) is Variant.SEED else CRU
    return cls(in_channels, out_channels, **kwargs)
