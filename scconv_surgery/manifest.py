"""The manifest: what a checkpoint records about its conversion, as one typed value.

A checkpoint (:mod:`scconv_surgery.checkpoint`) holds a manifest beside its state_dict. The
manifest says how to rebuild the base model (:class:`~scconv_surgery.models.ModelSource`), the
exact list of replaced convs (:class:`~scconv_surgery.plan.Decision`, with each conv's spec,
aliases and SCConv hyperparameters), the rules as given, the seed, the counts, the library
versions, and what was done to the BatchNorms and by calibration. :meth:`Manifest.to_dict`
gives the JSON-ready form stored in the file; :meth:`Manifest.from_dict` reads it back,
manifests of every release included (keys added later are optional).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch

from .models import DEFAULT_INPUT_SIZE, ModelSource
from .plan import Decision, Plan
from .rules import Rule

__all__ = ["Manifest", "library_versions", "UntouchedComparison", "untouched_tensors"]

_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def library_versions() -> dict[str, str]:
    """Installed versions of this package and of what a checkpoint depends on."""
    versions = {}
    for dist in ("scconv-surgery", "torch", "torchvision", "timm", "fvcore"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint records about its conversion.

    Attributes:
        source: how to rebuild the base model (for random weights, ``source.weights.seed`` is
            :attr:`seed`).
        replaced: the replaced convs' decisions, in module order.
        seed: the initialisation seed of the new modules (and of a random base model).
        input_size: ``(C, H, W)`` the counts were made at (older manifests without one:
            :data:`~scconv_surgery.models.DEFAULT_INPUT_SIZE`).
        rules: the rules as given (empty: the default rule).
        counts: the report's totals (``CountReport.to_dict()``), or None.
        versions: the library versions that wrote it.
        new_parameters: names of the parameters the replacements added.
        gradient_free_parameters: names of the parameters no gradient reaches (frozen when
            loaded for fine-tuning).
        stale_batchnorms: norms right after a replaced conv (their statistics are stale).
        reset_bn_stats: whether those statistics were reset before saving.
        calibration: how the new layers were calibrated (``CalibrationRun.to_dict()``), or None.
        extra: keys this release does not model, kept as they are (e.g. a training script's
            ``finetune`` record).
    """

    source: ModelSource
    replaced: tuple[Decision, ...]
    seed: int | None = 0
    input_size: tuple[int, int, int] = DEFAULT_INPUT_SIZE
    rules: tuple[Rule, ...] = ()
    counts: Mapping[str, Any] | None = None
    versions: Mapping[str, str] = field(default_factory=library_versions)
    new_parameters: tuple[str, ...] = ()
    gradient_free_parameters: tuple[str, ...] = ()
    stale_batchnorms: tuple[str, ...] = ()
    reset_bn_stats: bool = False
    calibration: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def plan(self) -> Plan:
        """The recorded plan: the replaced convs, as decisions (skipped convs are not recorded)."""
        return Plan(self.replaced)

    @property
    def replaced_prefixes(self) -> tuple[str, ...]:
        """``"name."`` for every name of every replaced conv, aliases included: a module under
        two names has its tensors under both in a state_dict."""
        return tuple(f"{n}." for d in self.replaced for n in (d.name, *d.aliases))

    @property
    def renewed_statistics(self) -> frozenset[str]:
        """Norms whose running statistics no longer come from the base weights: reset before
        saving, or re-estimated by calibration."""
        reset = set(self.stale_batchnorms) if self.reset_bn_stats else set()
        return frozenset(reset | set((self.calibration or {}).get("batchnorms", [])))

    def is_untouched(self, key: str) -> bool:
        """Whether the state_dict entry ``key`` must still equal the base weights: outside the
        replaced modules (under any of their names), not a classifier key re-initialised for
        ``num_classes``, and not the running statistics of a norm that was reset or re-estimated."""
        module, _, leaf = key.rpartition(".")
        if key.startswith(self.replaced_prefixes):
            return False
        if key in self.source.weights.reinitialized:
            return False
        return not (leaf in _STATISTICS and module in self.renewed_statistics)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stored in a checkpoint (the keys of every release since 1)."""
        return {
            "source": self.source.to_dict(),
            "versions": dict(self.versions),
            "seed": self.seed,
            "input_size": list(self.input_size),
            "rules": [r.to_dict() for r in self.rules],
            "replaced": [d.to_dict() for d in self.replaced],
            "counts": dict(self.counts) if self.counts is not None else None,
            "new_parameters": list(self.new_parameters),
            "gradient_free_parameters": list(self.gradient_free_parameters),
            "stale_batchnorms": list(self.stale_batchnorms),
            "reset_bn_stats": self.reset_bn_stats,
            "calibration": dict(self.calibration) if self.calibration is not None else None,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Read :meth:`to_dict`'s form; every key but ``source`` and ``replaced`` is optional.

        Raises:
            KeyError, TypeError, ValueError: the mapping is not a manifest (the checkpoint
                reader turns these into a ``CheckpointError`` naming the file).
        """
        known = {"source", "versions", "seed", "input_size", "rules", "replaced", "counts", "new_parameters",
                 "gradient_free_parameters", "stale_batchnorms", "reset_bn_stats", "calibration"}
        seed = d.get("seed")
        return cls(
            source=ModelSource.from_dict(d["source"], seed=seed),
            replaced=tuple(Decision.from_dict(x) for x in d["replaced"]),
            seed=seed,
            input_size=tuple(d.get("input_size") or DEFAULT_INPUT_SIZE),  # type: ignore[arg-type]
            rules=tuple(Rule.from_dict(r) for r in d.get("rules") or ()),
            counts=d.get("counts"),
            versions=dict(d.get("versions") or {}),
            new_parameters=tuple(d.get("new_parameters") or ()),
            gradient_free_parameters=tuple(d.get("gradient_free_parameters") or ()),
            stale_batchnorms=tuple(d.get("stale_batchnorms") or ()),
            reset_bn_stats=bool(d.get("reset_bn_stats", False)),
            calibration=d.get("calibration"),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True)
class UntouchedComparison:
    """The untouched tensors of a converted model compared with the base weights.

    Attributes:
        compared: how many tensors were compared.
        differ: keys whose values differ.
        missing: untouched keys the reference lacks.
    """

    compared: int
    differ: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def equal(self) -> bool:
        return not self.differ and not self.missing


def untouched_tensors(manifest: Manifest, state_dict: Mapping[str, torch.Tensor],
                      reference: Mapping[str, torch.Tensor]) -> UntouchedComparison:
    """Compare the entries of ``state_dict`` that the conversion left alone
    (:meth:`Manifest.is_untouched`) with ``reference`` (the base weights), exactly.

    Args:
        manifest: the conversion's manifest.
        state_dict: the converted model's tensors.
        reference: the base model's tensors (a weights file, or the rebuilt original).
    """
    compared, differ, missing = 0, [], []
    for key in state_dict:
        if not manifest.is_untouched(key):
            continue
        value = state_dict[key]
        if key not in reference:
            missing.append(key)
        elif not torch.equal(value, reference[key].to(device=value.device, dtype=value.dtype)):
            differ.append(key)
        compared += 1
    return UntouchedComparison(compared, tuple(differ), tuple(missing))
