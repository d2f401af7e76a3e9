"""How an SCConv unit runs its forward: the fast path, or submodule by submodule.

Every unit has two forwards with the same parameters and the same outputs (to float
rounding): a fast one that reads its submodules' weights and runs few, large operators (see
``sru.py``, ``cru.py`` and ``_fused.py``), and one that calls each parameter-holding submodule
as a module, as the paper draws it. The second runs only where calling the submodules is observable:
a hook on one of them (or a global module hook), or a tracer that records module calls
(``torch.fx`` symbolic tracing, as in torchvision's ``create_feature_extractor``, and
``torch.jit`` tracing or scripting, as in the TorchScript ONNX exporter).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.nn.modules import module as _module

__all__ = ["calls_submodules", "gate_dtype", "InferenceCache"]


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def calls_submodules(*modules: nn.Module) -> bool:
    """True where the forward must call ``modules`` as modules (hooks, fx or jit tracing)."""
    if is_fx_symbolic_tracing() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(_has_hooks(m) for m in modules)


def gate_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype SRU's gate is computed in: float64 for float64 input, else float32.

    float16 and bfloat16 put the gate ``sigmoid(GN(X) * w)``, which sits close to its 0.5
    threshold, within one rounding step of it (about 19% of bfloat16 keep decisions flip
    against float32), so the gate is always computed in at least float32.
    """
    if is_fx_symbolic_tracing():  # x.dtype is a Proxy: no Python branch on it
        return torch.float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class InferenceCache:
    """Mixin for a unit that can keep weights assembled from its parameters (the folded
    GroupNorm affine, the merged GWC + PWC1 weight) for eval-mode forwards that need no
    parameter gradients, in the spirit of timm's ``reparameterize``, but reversible.

    The cached tensors are non-persistent buffers (never in the ``state_dict``): ``.to()``,
    ``.half()`` and friends rebuild them from the converted parameters, and any change to the
    parameters (``load_state_dict``, an optimizer step, an in-place edit: their version counters
    move) rebuilds them at the next forward that uses them. Under ``torch.compile`` the version
    check is skipped.
    """

    _cache_key: tuple[tuple[int, int], ...] | None = None

    def _cache_params(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _has_cache(self) -> bool:
        raise NotImplementedError

    def _build_cache(self) -> None:
        raise NotImplementedError

    def _cache_key_now(self) -> tuple[tuple[int, int], ...]:
        return tuple((p.data_ptr(), p._version) for p in self._cache_params())

    def _use_cache(self) -> bool:
        """True when this forward may use the cache (rebuilt first if the parameters moved)."""
        if self.training or not self._has_cache():
            return False
        params = self._cache_params()
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return False  # gradients must reach the parameters: assemble from them
        if torch.compiler.is_compiling():
            return True
        try:
            key = self._cache_key_now()
        except RuntimeError:  # torch.func transforms: parameters without storage, not the cached ones
            return False
        if key != self._cache_key:  # the parameters changed (or functional_call swapped them in)
            self._refresh_cache()
        return True

    def _refresh_cache(self) -> None:
        # normal tensors even when the rebuild happens inside torch.inference_mode: a later forward
        # that records autograd (an eval forward for input gradients) may save them for backward
        with torch.inference_mode(False), torch.no_grad():
            self._build_cache()
        self._cache_key = self._cache_key_now()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)  # type: ignore[misc]
        if self._has_cache():
            self._refresh_cache()
        return self
