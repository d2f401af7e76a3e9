"""Which implementation an SCConv unit's forward runs, decided in one place.

Every unit computes the same values from the same parameters in up to four ways
(:class:`Path`); :func:`choose_path` picks one per forward:

- ``MODULES``: the equations as stated in ``reference.py``, each parameter-holding submodule
  called as a module. Runs where calling the submodules is observable: a hook on one of them
  (or a global module hook), ``torch.fx`` symbolic tracing (torchvision's
  ``create_feature_extractor``), and tracing or exporting a unit without the inference cache.
- ``EXPORT``: the lean standard-operator graph of ``_deploy.py`` (folded weights, about 18
  operators per layer): exporting (``torch.export``, either ONNX exporter, ``torch.jit.trace``)
  a unit that keeps the inference cache (:func:`~scconv_surgery.optimize_for_inference`).
- ``KERNELS``: the fused C++ CPU kernels (``_kernels.py``): eval-mode, CPU float32 forwards
  without autograd of a ``paper`` unit that :func:`~scconv_surgery.optimize_for_inference`
  switched them on for, once they are built; eager or under ``torch.compile`` (one graph node
  per kernel). ``ScConv`` runs SRU and CRU's squeezes as one kernel where that measured
  faster (:func:`fuses_sru_and_squeeze`), and at stride 1 PWC1, PWC2 and the fuse as one kernel
  after GWC (``CRU.from_squeezed_with_kernels``).
- ``FAST``: few large ATen operators, in place without autograd, hand-written backward with it
  (``_fused.py``): everything else (training, CUDA, other dtypes, ``torch.compile``).
"""
from __future__ import annotations

from enum import Enum

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.nn.modules import module as _module

__all__ = ["Path", "choose_path", "fuses_sru_and_squeeze", "InferenceCache"]


class Path(Enum):
    """The implementation one forward of a unit runs (see the module docstring)."""

    MODULES = "modules"
    EXPORT = "export"
    KERNELS = "kernels"
    FAST = "fast"


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _has_global_hooks() -> bool:
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or _module._global_backward_pre_hooks)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting()


def choose_path(unit: nn.Module, x: torch.Tensor, submodules: tuple[nn.Module, ...]) -> Path:
    """The :class:`Path` of this forward of ``unit`` on ``x`` (``submodules``: those that hold
    parameters). ``unit`` is an :class:`InferenceCache` with a ``use_kernels`` attribute."""
    if is_fx_symbolic_tracing() or _has_global_hooks() or any(_has_hooks(m) for m in submodules):
        return Path.MODULES
    if _exporting():
        return Path.EXPORT if unit._cache_ready() else Path.MODULES
    if (unit.use_kernels and not unit.training and x.device.type == "cpu" and x.dtype == torch.float32
            and not _needs_autograd(x, unit)):
        from . import _kernels

        if _kernels.loaded() is not None:
            return Path.KERNELS
    return Path.FAST


def fuses_sru_and_squeeze(layer: nn.Module, x: torch.Tensor) -> bool:
    """True where ``ScConv`` runs SRU and CRU's squeezes as one C++ kernel (SRU's output is never
    written): where ``optimize_for_inference`` measured it faster (``layer.fuse_sru_squeeze``), on
    NCHW or channels_last input, both units take
    ``Path.KERNELS``, and neither has hooks of its own."""
    sru, cru = layer.sru, layer.cru
    return (layer.fuse_sru_squeeze and not _has_hooks(sru) and not _has_hooks(cru)
            and choose_path(sru, x, (sru.gn,)) is Path.KERNELS
            and choose_path(cru, x, cru._submodules()) is Path.KERNELS
            and cru._use_cache() and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)))


def _needs_autograd(x: torch.Tensor, unit: nn.Module) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in unit.parameters()))


class InferenceCache:
    """Mixin for a unit that can keep weights assembled from its parameters (the folded
    GroupNorm affine, the merged GWC + PWC1 weight) for eval-mode forwards that need no
    parameter gradients, in the spirit of timm's ``reparameterize``, but reversible.

    The cached tensors are non-persistent buffers (never in the ``state_dict``): ``.to()``,
    ``.half()`` and friends rebuild them from the converted parameters, and any change to the
    parameters (``load_state_dict``, an optimizer step, an in-place edit: their version counters
    move) rebuilds them at the next forward that uses them. Under ``torch.compile`` and export
    the version check is skipped.
    """

    _cache_key: tuple[tuple[int, int], ...] | None = None
    use_kernels: bool = False  # the C++ CPU kernels, where the path allows (optimize_for_inference)

    def _cache_params(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _has_cache(self) -> bool:
        raise NotImplementedError

    def _build_cache(self) -> None:
        raise NotImplementedError

    def _cache_key_now(self) -> tuple[tuple[int, int], ...]:
        return tuple((p.data_ptr(), p._version) for p in self._cache_params())

    def _cache_ready(self) -> bool:
        """True when an eval forward may read the cache: it exists and is current (rebuilt here
        if the parameters moved). Exporters record the cached tensors as constants."""
        if self.training or not self._has_cache():  # type: ignore[attr-defined]
            return False
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return True
        try:
            key = self._cache_key_now()
        except RuntimeError:  # torch.func transforms: parameters without storage, not the cached ones
            return False
        if key != self._cache_key:  # the parameters changed (or functional_call swapped them in)
            self._refresh_cache()
        return True

    def _use_cache(self) -> bool:
        """True when this forward may use the cache: it is ready, and no parameter needs a gradient."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self._cache_params()):
            return False  # gradients must reach the parameters: assemble from them
        return self._cache_ready()

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
