"""SCConv's elementwise steps in few operators, with hand-written backward passes.

Two steps of the fast forward dominate its operator count and memory traffic when left to
autograd: SRU's gate and reconstruction (eqs. 3-4) and CRU's fuse (eqs. 7-9). Each is a
function here with two forms:

- without autograd (``no_grad``, ``inference_mode``): each step writes into tensors it owns,
  so that an activation-sized tensor is allocated only where one must be (on CPUs every new
  one costs page faults, more than a few extra small operators);
- with autograd: an ``autograd.Function`` whose backward is written in differentiable torch
  operators over its inputs and outputs only. Each intermediate its backward needs is
  returned as an extra output (unused by the caller), as PyTorch's extension notes prescribe,
  so that double backward (gradient penalties) and ``torch.func`` (``grad``, ``vmap``,
  ``jacrev``) differentiate the backward itself exactly. ``setup_context`` and
  ``generate_vmap_rule`` make them ``torch.func``-ready, a ``jvp`` gives forward mode
  (``jvp``, ``jacfwd``, ``hessian``), and ``torch.compile`` / ``torch.export`` trace through
  them (through a subclass without the ``jvp``, which Dynamo cannot trace).

Both forms use only operators with ``vmap`` batching rules (no ``addcmul_``, ``lerp_``, ``out=``).
tests/test_fused.py checks each function against plain autograd on the equations it
implements (``reference.py``): values, gradients (``gradcheck``) and second derivatives (``gradgradcheck``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import gamma_ratio

__all__ = ["ratio_affine", "soft_gate", "fuse"]


def _sigmoid_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``grad * output * (1 - output)`` in one operator (differentiable, with vmap rules)."""
    return torch.ops.aten.sigmoid_backward(grad, output)


def _without_jvp(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """``function`` without its forward-mode rule (``jvp``), for ``torch.compile``, which cannot
    trace a custom one; same forward and backward."""
    return type(function.__name__, (function,), {"jvp": staticmethod(torch.autograd.Function.jvp)})


def _plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a + b`` where either may be an undefined (None) gradient."""
    if a is None:
        return b
    return a if b is None else a + b


# --------------------------------------------------------------------------------------------
# SRU: GroupNorm's affine with w = gamma / sum(gamma) folded in (eq. 2)
# --------------------------------------------------------------------------------------------


def ratio_affine(gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm's affine with eq. 2's ratio folded in: ``(gamma * w, beta * w)``, each ``(C,)``.

    ``w = gamma / sum(gamma)`` (:func:`~scconv_surgery.layers.reference.gamma_ratio`), so that
    ``norm(X) * (gamma * w) + beta * w`` is ``GN(X) * w`` (eqs. 1-3) in one ``group_norm``.
    Plain autograd: a hand-written backward over ``(C,)`` vectors measured no faster.
    Pass float32 (or float64) parameters: weights up to ``|gamma| / eps`` stay finite there.
    """
    w = gamma_ratio(gamma, eps)
    return gamma * w, beta * w


# --------------------------------------------------------------------------------------------
# SRU: gate and reconstruction (eqs. 3-4)
# --------------------------------------------------------------------------------------------


def _gate_masks(s: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W2, keep)`` from ``S`` (``W2`` is written into ``s``): ``keep = 1`` where ``S > t``,
    else 0; ``W2 = S`` where ``S <= t``, else 0; so ``W1 = W2 + keep``. ``threshold(S, t, 0)``
    is ``S * keep``: float masks, no ``torch.where`` and no boolean tensor (both slow on CPUs)."""
    kept = F.threshold(s, threshold, 0.0)
    return s.sub_(kept), kept.ceil_()  # kept is S > t >= 0 or 0, at most 1: its ceil is the mask


def _add_rolled_(out: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``out += roll(x2, -(C // 2))`` over channels, in place: two channel-slice adds."""
    channels = out.shape[1]
    half = channels // 2
    out_low, out_high = out.split((channels - half, half), dim=1)
    x2_low, x2_high = x2.split((half, channels - half), dim=1)
    out_low.add_(x2_high)
    out_high.add_(x2_low)
    return out


class _SoftGate(torch.autograd.Function):
    """``(X, z) -> W1 * X + roll(W2 * X, -shift)``; extra outputs ``W2`` and ``keep``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, z: torch.Tensor, threshold: float, shift: int):  # type: ignore[override]
        w2, keep = _gate_masks(z.sigmoid(), threshold)
        x2 = w2 * x
        return torch.addcmul(x2, keep, x).add_(x2.roll(-shift, 1)), w2, keep

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def, override]
        x, _, _, shift = inputs
        _, w2, keep = output
        ctx.mark_non_differentiable(keep)
        ctx.save_for_backward(x, w2, keep)
        ctx.save_for_forward(x, w2, keep)
        ctx.shift = shift
        ctx.set_materialize_grads(False)

    @staticmethod
    def jvp(ctx, t_x, t_z, _t_threshold, _t_shift):  # type: ignore[no-untyped-def, override]
        # d W2 = W2 (1 - W2) d z; d X2 = W2 d X + X d W2; d out = d X2 + roll(d X2, -shift) + keep d X
        x, w2, keep = ctx.saved_tensors
        t_w2 = None if t_z is None else _sigmoid_backward(t_z, w2)
        t_x2 = _plus(None if t_x is None else w2 * t_x, None if t_w2 is None else x * t_w2)
        if t_x2 is None:
            return None, None, None
        t_out = t_x2 + t_x2.roll(-ctx.shift, 1)
        return t_out if t_x is None else torch.addcmul(t_out, keep, t_x), t_w2, None

    @staticmethod
    def backward(ctx, g, g_w2, _g_keep):  # type: ignore[no-untyped-def, override]
        # out = X2 + roll(X2, -shift) + keep * X with X2 = W2 * X:
        # dL/dX2 = g + roll(g, shift); dL/dX = keep g + W2 dL/dX2; dL/dW2 = X dL/dX2;
        # dL/dz = dL/dW2 * W2 (1 - W2): W2 is S where it depends on z, and 0 (slope 0) elsewhere
        x, w2, keep = ctx.saved_tensors
        g_x = g_x2 = None
        if g is not None:
            g_x2 = g.roll(ctx.shift, 1).add_(g)
            if ctx.needs_input_grad[0]:
                g_x = torch.addcmul(g * keep, w2, g_x2)
            # without create_graph nothing saved dL/dX2: dL/dW2 = X dL/dX2 is written into it
            g_x2 = x * g_x2 if torch.is_grad_enabled() else g_x2.mul_(x)
        g_w2 = _plus(g_x2, g_w2)
        g_z = None if g_w2 is None or not ctx.needs_input_grad[1] else _sigmoid_backward(g_w2, w2)
        return g_x, g_z, None, None


_SoftGateCompiled = _without_jvp(_SoftGate)


def soft_gate(x: torch.Tensor, z: torch.Tensor, threshold: float) -> torch.Tensor:
    """SRU's partly soft gate and cross reconstruction (``paper``, DESIGN section 2 steps 3-6).

    ``S = sigmoid(z)``; where ``S > t``, ``W1 = 1, W2 = 0``, elsewhere ``W1 = W2 = S``;
    ``out = W1 * X + roll(W2 * X, -(C // 2))`` over channels (eq. 4, :func:`reconstruct`).

    Args:
        x: X, ``(N, C, H, W)``.
        z: ``GN(X) * w``, same shape and dtype as ``x``. Without autograd it is overwritten.
        threshold: t.

    Returns:
        ``(N, C, H, W)``, in the memory format of ``x``.
    """
    if torch.is_grad_enabled():
        function = _SoftGateCompiled if torch.compiler.is_compiling() else _SoftGate
        return function.apply(x, z, threshold, x.shape[1] // 2)[0]
    w2, keep = _gate_masks(z.sigmoid_(), threshold)
    x2 = w2.mul_(x)  # in z's buffer
    return _add_rolled_(keep.mul_(x).add_(x2), x2)  # W1 * X = keep * X + X2, in keep's buffer


# --------------------------------------------------------------------------------------------
# CRU: fuse (eqs. 7-9)
# --------------------------------------------------------------------------------------------


class _Fuse(torch.autograd.Function):
    """``(Y1, PWC2 out, reused) -> Y2 + beta * (Y1 - Y2)``; extra outputs ``Y1 - Y2`` and ``beta``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y1: torch.Tensor, pwc2: torch.Tensor, reused: torch.Tensor):  # type: ignore[override]
        y2 = torch.cat((pwc2, reused), dim=1)
        diff = y1 - y2
        beta = diff.mean((2, 3), keepdim=True).sigmoid_()
        return torch.addcmul(y2, beta, diff), diff, beta

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def, override]
        _, pwc2, reused = inputs
        _, diff, beta = output
        ctx.save_for_backward(diff, beta)
        ctx.save_for_forward(diff, beta)
        ctx.split = (pwc2.shape[1], reused.shape[1])
        ctx.set_materialize_grads(False)

    @staticmethod
    def jvp(ctx, t_y1, t_pwc2, t_reused):  # type: ignore[no-untyped-def, override]
        # d Y2 = concat(d pwc2, d reused); d D = d Y1 - d Y2; d beta = beta (1 - beta) mean_hw(d D);
        # d out = d Y2 + d beta D + beta d D
        diff, beta = ctx.saved_tensors
        t_y2 = None
        if t_pwc2 is not None or t_reused is not None:
            n, _, h, w = diff.shape
            zeros = diff.new_zeros
            t_y2 = torch.cat((zeros(n, ctx.split[0], h, w) if t_pwc2 is None else t_pwc2,
                              zeros(n, ctx.split[1], h, w) if t_reused is None else t_reused), dim=1)
        t_diff = t_y1 if t_y2 is None else (-t_y2 if t_y1 is None else t_y1 - t_y2)
        if t_diff is None:
            return None, None, None
        t_beta = _sigmoid_backward(t_diff.mean((2, 3), keepdim=True), beta)
        t_out = torch.addcmul(beta * t_diff, t_beta, diff)
        return t_out if t_y2 is None else t_out + t_y2, t_diff, t_beta

    @staticmethod
    def backward(ctx, g, g_diff, g_beta):  # type: ignore[no-untyped-def, override]
        # out = Y2 + beta D, D = Y1 - Y2, beta = sigmoid(mean_hw(D)):
        # dL/dbeta = sum_hw(g D); dL/dD = beta g + sigmoid'(.) dL/dbeta / HW; dL/dY1 = dL/dD, dL/dY2 = g - dL/dD
        diff, beta = ctx.saved_tensors
        area = diff.shape[2] * diff.shape[3]
        g_mean = None if g is None else (g * diff).mean((2, 3), keepdim=True)  # dL/dbeta / HW
        g_mean = _plus(g_mean, None if g_beta is None else g_beta / area)
        g_d = None if g_mean is None else _sigmoid_backward(g_mean, beta)
        if g is not None:
            g_d = torch.addcmul(g_d, g, beta)
        g_d = _plus(g_d, g_diff)
        if g_d is None:
            return None, None, None
        g_y2 = -g_d if g is None else g - g_d
        g_pwc2, g_reused = g_y2.split(ctx.split, dim=1)
        return g_d, g_pwc2, g_reused


_FuseCompiled = _without_jvp(_Fuse)


def fuse(y1: torch.Tensor, pwc2: torch.Tensor, reused: torch.Tensor) -> torch.Tensor:
    """CRU's fuse, eqs. 7-9, ``paper`` variant: ``Y2 = concat(pwc2, reused)`` (eq. 6),
    ``beta1 = softmax(GAP(Y1), GAP(Y2))_1`` per channel, ``Y = beta1 * Y1 + (1 - beta1) * Y2``.

    A two-way softmax is a sigmoid of the difference, and the means are linear, so
    ``beta1 = sigmoid(GAP(Y1 - Y2))`` and ``Y = Y2 + beta1 * (Y1 - Y2)``.

    Args:
        y1: ``(N, C_out, H, W)``; without autograd it is overwritten (and returned).
        pwc2, reused: ``(N, C_out - r, H, W)`` and ``(N, r, H, W)``.

    Returns:
        ``(N, C_out, H, W)``.
    """
    if torch.is_grad_enabled():
        function = _FuseCompiled if torch.compiler.is_compiling() else _Fuse
        return function.apply(y1, pwc2, reused)[0]
    y2 = torch.cat((pwc2, reused), dim=1)
    diff = y1.sub_(y2)
    return diff.mul_(diff.mean((2, 3), keepdim=True).sigmoid_()).add_(y2)

