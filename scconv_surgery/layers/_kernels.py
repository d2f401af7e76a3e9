"""Fused C++ CPU inference kernels for SCConv (``paper`` variant, float32, no autograd).

``csrc/scconv_cpu.cpp`` holds five operators, registered with ``torch.library`` (``TORCH_LIBRARY``)
so that ``torch.compile`` and fx see each as one node (the fake kernels below give their
shapes):

- ``scconv::sru(x, scale, shift, num_groups, eps, threshold) -> Tensor``: SRU (eqs. 1-4) in two
  passes over the input (GroupNorm statistics; then normalise, gate and reconstruct, writing
  the output once), from GroupNorm's affine with eq. 2's ratio folded in;
- ``scconv::sru_squeeze(x, scale, shift, num_groups, eps, threshold, weight, groups) -> Tensor``:
  SRU followed by CRU's squeezes (1x1, ``groups`` equal groups), tile by tile, without writing
  SRU's output (what ``ScConv`` runs when both units take the kernels);
- ``scconv::sru_squeeze_split(x, ..., weight, groups, split, channels_last) -> (Tensor, Tensor)``:
  the same, the squeezed upper and lower parts as two tensors in the memory format asked for
  (channels_last: GWC's input without a copy);
- ``scconv::cru_fuse_(y1, up, low, w1, w2) -> ()``: CRU after GWC at stride 1 (eqs. 5-9): in place
  in GWC's output ``y1``, ``beta * (y1 + W1 up) + (1 - beta) * W2 low`` with ``W1`` PWC1's weight
  and ``W2`` PWC2's with identity rows, in two passes (the branch means by linearity; then the
  1x1 products tile by tile in thread-local buffers), writing neither PWC1's, PWC2's nor Y2's
  output (what ``ScConv`` runs at stride 1);
- ``scconv::fuse_(y1, pwc2, reused) -> ()``: CRU's fuse (eqs. 7-9) in two passes (the branch
  means; then ``y1 <- Y2 + beta * (y1 - Y2)`` in place), without writing ``Y2 = concat(pwc2, reused)``.

The source is compiled at the first :func:`load` (``optimize_for_inference`` calls it) with
``torch.utils.cpp_extension.load``: a C++ compiler (``$CXX`` or ``c++``) and ninja are needed;
the build takes 15-60 s (one source file) and is cached under ``torch.utils.cpp_extension``'s directory
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions/<python and CUDA tag>/``), one
build per CPU vector capability and source version (:func:`extension_name`), so later processes
only load it (about 2 s). Any failure
(no compiler, a compile error, a load error) gives one warning naming the cause, and the
PyTorch forward runs instead; it is never an error. Build ahead of time with
``python -c "from scconv_surgery.layers import _kernels; _kernels.load(verbose=True)"``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["load", "loaded", "KernelBuildWarning"]

SOURCE = Path(__file__).parent / "csrc" / "scconv_cpu.cpp"
_VECTOR_FLAGS = {  # torch.backends.cpu.get_cpu_capability() -> compiler flags
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


class KernelBuildWarning(UserWarning):
    """The fused C++ CPU kernels could not be built or loaded; the PyTorch forward runs."""


_state: dict[str, Any] = {"tried": False, "ops": None, "error": None}


def loaded() -> Any | None:
    """``torch.ops.scconv`` if :func:`load` has built or loaded the kernels, else None (never builds)."""
    return _state["ops"]


def load(verbose: bool = False) -> Any | None:
    """Build (first time on this machine) or load the kernels, once per process.

    Returns:
        ``torch.ops.scconv``, or None if they cannot be had; then one
        :class:`KernelBuildWarning` names the cause (also in ``error()``).
    """
    if _state["tried"]:
        return _state["ops"]
    _state["tried"] = True
    try:
        _build(verbose)
        _register_fakes()
        _state["ops"] = torch.ops.scconv
    except Exception as exc:  # noqa: BLE001: any failure means "use the PyTorch forward"
        _state["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        warnings.warn(f"SCConv's fused CPU kernels are not available ({_state['error']}); "
                      "the PyTorch forward runs instead", KernelBuildWarning, stacklevel=2)
    return _state["ops"]


def error() -> str | None:
    """Why the kernels are unavailable (after a failed :func:`load`), else None."""
    return _state["error"]


def _build(verbose: bool) -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler found (looked for {compiler!r}; set CXX)")
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp-simd", *_VECTOR_FLAGS.get(capability, [])]
    cpp_extension.load(name=extension_name(capability, flags), sources=[str(SOURCE)], extra_cflags=flags,
                       is_python_module=False, verbose=verbose)


def extension_name(capability: str, flags: list[str]) -> str:
    """``scconv_cpu_<capability>_<digest>``: the digest (12 hex digits of a SHA-256 of the source
    and the flags) keeps the builds of different versions of this package (two virtual
    environments, two checkouts) apart in the shared cache, so that neither rebuilds over the other."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    return f"scconv_cpu_{capability.lower()}_{digest}"


def _register_fakes() -> None:
    if getattr(_register_fakes, "done", False):
        return

    @torch.library.register_fake("scconv::sru")
    def _sru_fake(x, scale, shift, num_groups, eps, threshold):  # type: ignore[no-untyped-def]
        return torch.empty_like(x)

    @torch.library.register_fake("scconv::sru_squeeze")
    def _sru_squeeze_fake(x, scale, shift, num_groups, eps, threshold, weight, groups):  # type: ignore[no-untyped-def]
        n, _, h, w = x.shape
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return x.new_empty((n, weight.shape[0], h, w)).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    @torch.library.register_fake("scconv::sru_squeeze_split")
    def _sru_squeeze_split_fake(x, scale, shift, num_groups, eps, threshold, weight, groups, split,  # type: ignore[no-untyped-def]
                                channels_last):
        n, _, h, w = x.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return (x.new_empty((n, split, h, w)).contiguous(memory_format=fmt),
                x.new_empty((n, weight.shape[0] - split, h, w)).contiguous(memory_format=fmt))

    @torch.library.register_fake("scconv::cru_fuse_")
    def _cru_fuse_fake(y1, up, low, w1, w2):  # type: ignore[no-untyped-def]
        return None

    @torch.library.register_fake("scconv::fuse_")
    def _fuse_fake(y1, pwc2, reused):  # type: ignore[no-untyped-def]
        return None

    _register_fakes.done = True  # type: ignore[attr-defined]


def _reset_for_tests() -> None:
    """Forget the outcome of :func:`load` (the operators stay registered once loaded)."""
    _state.update(tried=False, ops=None, error=None)
