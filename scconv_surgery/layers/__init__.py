"""SCConv: Spatial and Channel Reconstruction Convolution.

Li, Wen and He, "SCConv: Spatial and Channel Reconstruction Convolution for Feature
Redundancy", CVPR 2023, pp. 6153-6162. ``ScConv = CRU(SRU(x))``:

- :class:`SRU` (spatial reconstruction unit, eqs. 1-4) gates the input by how informative
  each position is, judged from GroupNorm's per-channel scale, and cross-adds the
  informative and the less informative halves;
- :class:`CRU` (channel reconstruction unit, eqs. 5-9) splits the channels in two, squeezes
  both parts, transforms the upper part richly (group-wise + point-wise conv) and the lower
  part cheaply (point-wise conv + reuse), and fuses the two by a per-channel softmax.

Two variants (:class:`Variant`), each its own pair of classes, built by :func:`make_sru` and
:func:`make_cru`: ``paper`` (:class:`SRU`, :class:`CRU`) follows the equations; ``seed``
(:class:`SeedSRU`, :class:`SeedCRU`) reproduces, to float tolerance, the unofficial ScConv
implementation that circulates in blog posts (hand-written group norm, hard masks, a softmax
over all 2C channels of the fuse). Both are generalised, beyond the paper, to
``in_channels != out_channels`` and ``stride > 1`` (:class:`StridePolicy`) so that a
:class:`ScConv` is a drop-in for a dense k x k convolution.

One module per concept: ``config`` (hyperparameters, constraints, :class:`MergePolicy`),
``reference`` (the equations, stated once), ``sru``, ``cru``, ``scconv``; ``_execution``
chooses, per forward, between the reference (hooks, tracers), the lean export graph
(``_deploy``), the fused C++ CPU kernels (``_kernels``) and the fast ATen forward (``_fused``).
"""
from .config import MergePolicy, ScConvConfig, StridePolicy, Variant, gn_group_count, scconv_constraint_error
from .cru import CRU, SeedCRU, make_cru, merged_gwc_pwc1_weight
from .reference import GAMMA_SUM_EPS, gamma_ratio, reconstruct
from .scconv import ScConv
from .sru import SRU, SeedGroupNorm, SeedSRU, make_sru

__all__ = [
    "Variant", "StridePolicy", "MergePolicy", "ScConvConfig", "ScConv", "SRU", "CRU", "SeedSRU", "SeedCRU",
    "SeedGroupNorm", "make_sru", "make_cru", "scconv_constraint_error", "gn_group_count", "gamma_ratio",
    "reconstruct", "merged_gwc_pwc1_weight", "GAMMA_SUM_EPS",
]
