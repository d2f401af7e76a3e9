"""SCConv's equations, stated once: the oracle of the tests and what tracers record.

Li, Wen and He, "SCConv: Spatial and Channel Reconstruction Convolution for Feature
Redundancy", CVPR 2023, pp. 6153-6162 (DESIGN section 2). Each function here is the plain
statement of one step, in standard operators, for both variants (``paper`` and ``seed``):

- SRU (eqs. 1-4): :func:`sru_paper`, :func:`sru_seed`, with :func:`gamma_ratio` (eq. 2) and
  :func:`reconstruct` (eq. 4); eq. 1 is the caller's GroupNorm (``nn.GroupNorm`` or
  :func:`seed_group_norm`), called as a module so that hooks fire;
- CRU (eqs. 5-9): :func:`cru_branches` (eqs. 5-6, the convs passed as callables, so the
  module path calls them as modules) and :func:`fuse_paper` / :func:`fuse_seed` (eqs. 7-9).

The faster implementations (``_fused.py``: in place and hand-written backward; ``_kernels.py``:
fused C++ CPU kernels; ``_deploy.py``: the lean graph exporters record) compute the same
values from the same parameters; the tests compare each of them against these functions.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ["GAMMA_SUM_EPS", "gate_dtype", "guarded_inverse_sum", "gamma_ratio", "reconstruct",
           "seed_group_norm", "sru_paper", "sru_seed", "cru_branches", "fuse_paper", "fuse_seed"]

GAMMA_SUM_EPS = 1e-6  # smallest |sum(gamma)| used as the denominator of eq. 2

Conv = Callable[[torch.Tensor], torch.Tensor]


def gate_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype SRU's gate is computed in: float64 for float64 input, else float32.

    float16 and bfloat16 put the gate ``sigmoid(GN(X) * w)``, which sits close to its 0.5
    threshold, within one rounding step of it (about 19% of bfloat16 keep decisions flip
    against float32), so the gate is always computed in at least float32.
    """
    if is_fx_symbolic_tracing():  # x.dtype is a Proxy: no Python branch on it
        return torch.float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def guarded_inverse_sum(gamma: torch.Tensor, eps: float = GAMMA_SUM_EPS) -> torch.Tensor:
    """``1 / sum(gamma)`` with its magnitude clamped to at most ``1 / eps``, sign kept (a sum of
    +0 counts as positive): the guarded denominator of eq. 2, shape ``()``."""
    total = gamma.sum()
    return torch.where(total < 0, total.clamp_max(-eps), total.clamp_min(eps)).reciprocal()


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


def sru_paper(x: torch.Tensor, normalized: torch.Tensor, gamma: torch.Tensor, threshold: float) -> torch.Tensor:
    """SRU, ``paper`` variant, eqs. 2-4 given eq. 1's output (DESIGN section 2, steps 2-6).

    ``w = gamma / sum(gamma)``; ``S = sigmoid(G * w)``; where ``S > t``: ``W1 = 1, W2 = 0``,
    elsewhere ``W1 = W2 = S``; ``out = reconstruct(W1 * X, W2 * X)``.

    Args:
        x: X, ``(N, C, H, W)``.
        normalized: G = GroupNorm(X) with its affine (eq. 1), same shape.
        gamma: GroupNorm's scale, ``(C,)``.
        threshold: t.

    Returns:
        ``(N, C, H, W)`` in ``x``'s dtype; the gate is computed in :func:`gate_dtype`.
    """
    dtype = gate_dtype(x)
    gate = torch.sigmoid(normalized.to(dtype) * gamma_ratio(gamma.to(dtype)).reshape(1, -1, 1, 1))
    keep = gate > threshold
    x2 = x * torch.where(keep, 0.0, gate)
    return reconstruct(torch.where(keep, x, x2), x2).to(x.dtype)


def sru_seed(x: torch.Tensor, normalized: torch.Tensor, gamma: torch.Tensor, threshold: float) -> torch.Tensor:
    """SRU, ``seed`` variant: hard complementary masks ``S >= t`` and ``S < t`` (no gradient
    reaches ``gamma`` through them), then eq. 4.

    Args: as :func:`sru_paper`, with ``normalized`` from :func:`seed_group_norm`.
    """
    dtype = gate_dtype(x)
    gate = torch.sigmoid(normalized.to(dtype) * gamma_ratio(gamma.detach().to(dtype)).reshape(1, -1, 1, 1))
    return reconstruct(x * (gate >= threshold), x * (gate < threshold)).to(x.dtype)


def cru_branches(x: torch.Tensor, split: tuple[int, int], squeeze1: Conv, squeeze2: Conv, gwc: Conv,
                 pwc1: Conv, pwc2: Conv, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CRU's two branches, eqs. 5-6 (DESIGN section 2, CRU steps 1-3; section 3 for stride).

    Split X into ``up`` and ``low`` channels, squeeze each (1x1), ``Y1 = GWC(up) + PWC1(up)``,
    ``Y2 = concat(PWC2(low), low)``, the reused ``low`` average-pooled (ceil mode) at stride > 1.

    Args:
        x: ``(N, C_in, H, W)``.
        split: ``(up, low)`` channel counts.
        squeeze1, squeeze2, gwc, pwc1, pwc2: the convs (modules, so hooks fire; or functions).
        stride: s of GWC, PWC1, PWC2.

    Returns:
        ``(Y1, Y2)``, each ``(N, C_out, ceil(H / s), ceil(W / s))``.
    """
    up, low = torch.split(x, split, dim=1)
    up, low = squeeze1(up), squeeze2(low)
    reused = low if stride == 1 else F.avg_pool2d(low, stride, ceil_mode=True)
    return gwc(up) + pwc1(up), torch.cat((pwc2(low), reused), dim=1)


def fuse_paper(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """CRU's fuse, ``paper`` variant, eqs. 7-9: ``S_i = GAP(Y_i)`` (eq. 7);
    ``beta = softmax(S_1, S_2)`` per channel across the two branches (eq. 8);
    ``Y = beta_1 * Y1 + beta_2 * Y2`` (eq. 9).

    A two-way softmax is a sigmoid of the difference (``beta_1 = sigmoid(S_1 - S_2)``,
    ``beta_2 = 1 - beta_1``), so eq. 9 is ``lerp(Y2, Y1, beta_1)``: one sigmoid and one lerp per
    layer, as the operator counts of ``counting.py`` report them.

    Args:
        y1, y2: ``(N, C, H, W)``.

    Returns:
        ``(N, C, H, W)``.
    """
    beta1 = torch.sigmoid(y1.mean((2, 3), keepdim=True) - y2.mean((2, 3), keepdim=True))  # eqs. 7-8
    return torch.lerp(y2, y1, beta1)  # eq. 9


def fuse_seed(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """CRU's fuse, ``seed`` variant: a softmax over all ``2 C`` channels of
    ``concat(GAP(Y1), GAP(Y2))``, then ``Y1 * b1 + Y2 * b2``."""
    beta = torch.softmax(torch.cat((y1.mean((2, 3), keepdim=True), y2.mean((2, 3), keepdim=True)), dim=1), dim=1)
    beta1, beta2 = beta.chunk(2, dim=1)
    return torch.addcmul(y1 * beta1, y2, beta2)
