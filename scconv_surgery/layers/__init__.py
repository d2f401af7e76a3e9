"""SCConv: Spatial and Channel Reconstruction Convolution.

Li, Wen and He, "SCConv: Spatial and Channel Reconstruction Convolution for Feature
Redundancy", CVPR 2023, pp. 6153-6162. ``ScConv = CRU(SRU(x))``:

- :class:`SRU` (spatial reconstruction unit, eqs. 1-4) gates the input by how informative
  each position is, judged from GroupNorm's per-channel scale, and cross-adds the
  informative and the less informative halves;
- :class:`CRU` (channel reconstruction unit, eqs. 5-9) splits the channels in two, squeezes
  both parts, transforms the upper part richly (group-wise + point-wise conv) and the lower
  part cheaply (point-wise conv + reuse), and fuses the two by a per-channel softmax.

Two variants (:class:`Variant`), each its own pair of classes: ``paper`` (:class:`SRU`,
:class:`CRU`) follows the equations; ``seed`` (:class:`SeedSRU`, :class:`SeedCRU`) reproduces,
to float tolerance, the unofficial ScConv implementation that circulates in blog posts (hand-written group norm, hard
masks, a softmax over all 2C channels of the fuse). Both are generalised, beyond the paper,
to ``in_channels != out_channels`` and ``stride > 1`` (:class:`StridePolicy`) so that a
:class:`ScConv` is a drop-in for a dense k x k convolution.

One module per concept: ``config`` (hyperparameters and constraints), ``sru``, ``cru``,
``scconv``; ``_execution`` says when a unit runs its fast forward and when it calls its
submodules one by one (hooks, tracing), and keeps the inference cache.
"""
from .config import ScConvConfig, StridePolicy, Variant, gn_group_count, scconv_constraint_error
from .cru import CRU, SeedCRU, merged_gwc_pwc1_weight
from .scconv import ScConv
from .sru import GAMMA_SUM_EPS, SRU, SeedGroupNorm, SeedSRU, gamma_ratio, reconstruct

__all__ = [
    "Variant", "StridePolicy", "ScConvConfig", "ScConv", "SRU", "CRU", "SeedSRU", "SeedCRU", "SeedGroupNorm",
    "scconv_constraint_error", "gn_group_count", "gamma_ratio", "reconstruct", "merged_gwc_pwc1_weight",
    "GAMMA_SUM_EPS",
]
