"""Surveying the model zoos: which timm / torchvision models SCConv converts, planned without weights.

Each model is built on the meta device (``torch.device("meta")``: shapes, no storage) with
parameter initialisation skipped, then planned with :func:`~scconv_surgery.plan.plan_conversion`.
That takes a fraction of a second even for billion-parameter models, so ``scconv models`` can
plan all of timm. Results are cached per model in a JSON file keyed by the versions of torch,
timm, torchvision and this package's planning code, so a second listing reads the cache.

Note:
    The survey's plan runs no forward before planning, so of the ways a conv's parameters can be
    shared (:mod:`scconv_surgery.sharing`) it finds only a ``Parameter`` object that another
    module also holds (tied weights); a parameter read by another module's forward
    (``F.conv2d(x, self.conv.weight)``) and shared storage (meta tensors have none) are found
    only when converting (``scconv convert``, ``convert(..., input_size=...)``), where the base
    model runs once before the plan is made. A surveyed model may therefore convert fewer convs.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import importlib.metadata
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._capture import probe_calls
from ._files import atomic_write
from .fitting import conv_cost, scconv_macs
from .layers import ScConvConfig
from .models import ModelSource, build_model, default_input_size
from .plan import Decision, Plan, plan_conversion
from .workers import map_in_workers

__all__ = ["Coverage", "coverage_of", "ModelSurvey", "list_model_names", "model_family", "build_model_on_meta",
           "survey_model", "survey_models", "default_cache_dir", "SURVEY_SCHEMA_VERSION"]

SURVEY_SCHEMA_VERSION = 1
TORCHVISION = "torchvision:"
# in-place tensor methods that change shape or metadata: never skipped
_KEEP_IN_PLACE = frozenset({"resize_", "resize_as_", "squeeze_", "unsqueeze_", "t_", "transpose_", "swapdims_",
                            "swapaxes_", "as_strided_", "set_", "requires_grad_", "share_memory_", "detach_"})


class _SkipInit(TorchFunctionMode):
    """Skip in-place initialisation (``uniform_``, ``trunc_normal_``, ``zero_``...) of parameters
    and of meta tensors while a model is built: the planner reads shapes, never values."""

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Mapping | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("_") and name not in _KEEP_IN_PLACE:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and (target.is_meta or isinstance(target, nn.Parameter)):
                return target
        return func(*args, **kwargs)


@functools.lru_cache(maxsize=1)
def _timm_families() -> dict[str, str]:
    import timm

    return {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}


def _all_model_names(cache_dir: Path | None) -> list[str]:
    """timm's and torchvision's names; read from ``cache_dir`` when cached for the installed
    versions (importing timm's models takes seconds)."""
    path = cache_dir / f"names-{_versions_key()}.json" if cache_dir is not None else None
    with contextlib.suppress(OSError, ValueError, TypeError):
        if path is not None:
            return list(json.loads(path.read_text())["names"])
    import timm
    import torchvision

    names = sorted(timm.list_models()) + [TORCHVISION + n for n in sorted(torchvision.models.list_models())]
    if path is not None:
        _write_json(path, {"schema_version": SURVEY_SCHEMA_VERSION, "names": names})
    return names


def list_model_names(patterns: Sequence[str] = (), *, cache_dir: Path | None = None) -> list[str]:
    """Every model ``scconv convert`` can build by name: timm's (bare names, e.g. ``resnet50``),
    then torchvision's (``torchvision:resnet50``), each sorted.

    Args:
        patterns: globs (``fnmatch``, case-insensitive) over those names; a name is kept when one
            matches. ``resnet*`` matches timm's ResNets, ``timm:*`` all of timm (a timm name
            also matches as ``timm:NAME``), ``torchvision:*`` all of torchvision. Empty keeps
            every name.
        cache_dir: read the names from a cache there, or write them to it
            (:func:`default_cache_dir`); None: ask timm and torchvision.
    """
    names = _all_model_names(cache_dir)
    if not patterns:
        return names
    lowered = [p.lower() for p in patterns]

    def matches(name: str) -> bool:
        spellings = (name.lower(),) if name.startswith(TORCHVISION) else (name.lower(), "timm:" + name.lower())
        return any(fnmatch.fnmatchcase(n, p) for n in spellings for p in lowered)

    return [n for n in names if matches(n)]


def model_family(name: str) -> str:
    """The module that defines a model: ``timm.resnet``, ``torchvision.detection.faster_rcnn``."""
    if name.startswith(TORCHVISION):
        import torchvision

        module = torchvision.models.get_model_builder(name[len(TORCHVISION):]).__module__
        return "torchvision." + module.removeprefix("torchvision.models.")
    return "timm." + _timm_families().get(name.removeprefix("timm:"), "unknown")


def _source(name: str) -> ModelSource:
    """The :class:`~scconv_surgery.models.ModelSource` of a name from :func:`list_model_names`
    (``resnet50``, ``timm:resnet50`` or ``torchvision:resnet50``), without weights."""
    library, _, short = name.rpartition(":")
    return ModelSource(library=library or "timm", name=short)


def build_model_on_meta(name: str) -> nn.Module:
    """Build a timm or torchvision model without weights, for planning and shape inference.

    On the meta device with parameter initialisation skipped; a model whose constructor needs
    real tensors (torchvision's RegNets compute their widths with tensors) is built on the CPU
    with parameter initialisation skipped instead (memory is reserved but never written).

    Args:
        name: a name from :func:`list_model_names`.

    Returns:
        The model in eval mode; its parameters hold no meaningful values.

    Raises:
        Exception: whatever the model's constructor raises on both devices.
    """
    try:
        with torch.device("meta"), _SkipInit():
            return build_model(_source(name), require_data=False)
    except (NotImplementedError, RuntimeError) as err:
        if "meta" not in str(err):
            raise
    with _SkipInit():
        return build_model(_source(name))


class Coverage(str, Enum):
    """Whether a model converts with the default rules and, if not, why (in the words of its convs).

    A model that replaces nothing is classed by its 3x3 convs past the stem (``in_channels > 3``):
    the skip reason its dense ones share most (``channels``, ``weight_standardized``,
    ``padding``, ``dilated``, ``conv_subclass``, ``stride``: :class:`~scconv_surgery.plan.SkipReason`
    values); else ``grouped`` when it has grouped ones (SCConv costs more), ``depthwise_only``
    when they are all depthwise; ``no_3x3`` when it has none (vision transformers, MLPs), and
    ``no_conv`` when it has no ``nn.Conv2d`` at all.
    """

    CONVERTS = "converts"
    NO_CONV = "no_conv"
    NO_3X3 = "no_3x3"
    DEPTHWISE_ONLY = "depthwise_only"
    GROUPED = "grouped"
    CHANNELS = "channels"
    WEIGHT_STANDARDIZED = "weight_standardized"
    PADDING = "padding"
    DILATED = "dilated"
    CONV_SUBCLASS = "conv_subclass"
    STRIDE = "stride"
    OTHER = "other"


def _is_3x3_past_stem(decision: Decision) -> bool:
    return decision.spec.kernel_size == (3, 3) and decision.spec.in_channels > 3


def coverage_of(plan: Plan) -> Coverage:
    """How :class:`Coverage` classes a model from its plan."""
    if plan.replaced:
        return Coverage.CONVERTS
    if not plan.decisions:
        return Coverage.NO_CONV
    past_stem = [d for d in plan.decisions if _is_3x3_past_stem(d)]
    dense = Counter(d.reason.value for d in past_stem if d.spec.groups == 1 and d.reason)
    if dense:
        reason = dense.most_common(1)[0][0]
        return Coverage(reason) if reason in Coverage._value2member_map_ else Coverage.OTHER
    if any(d.spec.groups != d.spec.in_channels for d in past_stem):
        return Coverage.GROUPED
    return Coverage.DEPTHWISE_ONLY if past_stem else Coverage.NO_3X3


@dataclass(frozen=True)
class ModelSurvey:
    """What the default rules would do to one model.

    Attributes:
        name: as :func:`list_model_names` gives it.
        family: the defining module (:func:`model_family`).
        coverage: whether it converts, or why not (:class:`Coverage`); None with ``error``.
        params: the model's parameter count.
        convs: its distinct ``nn.Conv2d`` count.
        dense_3x3: dense 3x3 convs past the stem (``in_channels > 3``), replaced or not.
        replaced: convs the default rules replace.
        adapted: of those, how many get hyperparameters adapted to their channels.
        grouped_replaced: of those, how many are grouped convs.
        params_delta: parameters after minus before, over the replaced convs.
        skip_reasons: skip reason -> conv count.
        input_size: ``(C, H, W)`` the MACs are counted at (the model's own), with ``count_macs``.
        macs_delta: conv multiply-adds after minus before at ``input_size`` (from the shapes of
            a meta-device forward and :func:`~scconv_surgery.fitting.scconv_cost`; fvcore's
            totals also count GroupNorm), or None when not counted or the forward failed.
        note: why ``macs_delta`` is None although asked for.
        seconds: wall time of building and planning (and the forward).
        error: why the model could not be planned (``"build: ExceptionType: message"``), else None.
    """

    name: str
    family: str
    coverage: Coverage | None = None
    params: int = 0
    convs: int = 0
    dense_3x3: int = 0
    replaced: int = 0
    adapted: int = 0
    grouped_replaced: int = 0
    params_delta: int = 0
    skip_reasons: Mapping[str, int] = field(default_factory=dict)
    input_size: tuple[int, ...] | None = None
    macs_delta: int | None = None
    note: str = ""
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coverage"] = self.coverage.value if self.coverage else None
        d["skip_reasons"] = dict(self.skip_reasons)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSurvey:
        values = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        values["coverage"] = Coverage(d["coverage"]) if d.get("coverage") else None
        values["input_size"] = tuple(d["input_size"]) if d.get("input_size") else None
        return cls(**values)


def _macs_delta(model: nn.Module, name: str, plan: Plan) -> tuple[tuple[int, int, int], int]:
    """The model's own input size, and the conv MACs its replaced convs add at it (negative:
    saved), from the output shapes of one forward on the meta device."""
    size = default_input_size(model, _source(name))
    calls = probe_calls(model.to("meta"), [d.name for d in plan.replaced], torch.empty(1, *size, device="meta"))
    shapes = {c.name: (c.input_shapes[0][-2:], c.output_shapes[0][-2:]) for c in calls}  # first call, (H, W)
    delta = 0
    for d in plan.replaced:
        if d.name not in shapes:  # not called by the forward
            continue
        spec, (input_hw, output_hw) = d.spec, shapes[d.name]
        dense = conv_cost(spec.in_channels, spec.out_channels, spec.kernel_size[0], groups=spec.groups)
        ours = scconv_macs(spec.in_channels, spec.out_channels, spec.kernel_size[0], d.config,
                           input_hw=input_hw, output_hw=output_hw)
        delta += ours - dense.macs_per_position * output_hw[0] * output_hw[1]
    return size, delta


def survey_model(name: str, *, strict_paper: bool = False, config: ScConvConfig | None = None,
                 count_macs: bool = False) -> ModelSurvey:
    """Plan one model with the default rules, on the meta device.

    Never raises: a model that cannot be built or planned comes back with ``error`` set, one
    whose meta forward fails with ``macs_delta`` None and a ``note``.

    Args:
        name: from :func:`list_model_names`.
        strict_paper, config: as for :func:`~scconv_surgery.plan.plan_conversion`.
        count_macs: also run one forward on the meta device at the model's own input size to
            count the MACs delta (slower).
    """
    start = time.perf_counter()
    step, family = "build", "unknown"
    try:
        family = model_family(name)
        model = build_model_on_meta(name)
        step = "plan"
        plan = plan_conversion(model, config=config, strict_paper=strict_paper)
    except Exception as err:
        return ModelSurvey(name=name, family=family, seconds=round(time.perf_counter() - start, 3),
                           error=f"{step}: {_describe(err)}")
    replaced = plan.replaced
    survey = ModelSurvey(
        name=name, family=family, coverage=coverage_of(plan), params=sum(p.numel() for p in model.parameters()),
        convs=len(plan.decisions), dense_3x3=sum(d.spec.groups == 1 for d in plan.decisions if _is_3x3_past_stem(d)),
        replaced=len(replaced), adapted=len(plan.adapted), grouped_replaced=sum(d.spec.groups > 1 for d in replaced),
        params_delta=sum(d.params_after - d.params_before for d in replaced), skip_reasons=plan.skip_summary())
    if count_macs and replaced:
        try:
            size, macs = _macs_delta(model, name, plan)
            survey = replace(survey, input_size=size, macs_delta=macs)
        except Exception as err:
            survey = replace(survey, note=f"meta forward failed: {_describe(err)}")
    return replace(survey, seconds=round(time.perf_counter() - start, 3))


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def default_cache_dir() -> Path:
    """``$SCCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/scconv-surgery``, else ``~/.cache/scconv-surgery``."""
    if os.environ.get("SCCONV_CACHE_DIR"):
        return Path(os.environ["SCCONV_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scconv-surgery"


def _versions_key() -> str:
    """A hash of the installed versions of torch, timm and torchvision (read without importing them)."""
    digest = hashlib.sha256()
    for dist in ("torch", "timm", "torchvision"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            digest.update(f"{dist}={importlib.metadata.version(dist)};".encode())
    return digest.hexdigest()[:16]


def _cache_key(strict_paper: bool, config: ScConvConfig | None, count_macs: bool) -> str:
    """Versions of what decides a survey: the libraries that build models, this package's code, the options."""
    digest = hashlib.sha256(_versions_key().encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):  # this package's code: any change plans afresh
        digest.update(path.read_bytes())
    digest.update(json.dumps([strict_paper, count_macs, (config or ScConvConfig()).to_dict()], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically; a cache that cannot be written is not an error."""
    text = json.dumps(document).encode()
    with contextlib.suppress(OSError):  # no temporary file is left behind, even on Ctrl-C (atomic_write)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(text))


@contextlib.contextmanager
def _cache(cache_dir: Path | None, key: str) -> Iterator[dict[str, dict]]:
    """The cached surveys (name -> dict), written back atomically afterwards if any were added."""
    path = cache_dir / f"models-{key}.json" if cache_dir is not None else None
    entries: dict[str, dict] = {}
    if path is not None and path.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            entries = dict(json.loads(path.read_text()).get("models", {}))
    count = len(entries)
    try:
        yield entries
    finally:
        if path is not None and len(entries) > count:
            _write_json(path, {"schema_version": SURVEY_SCHEMA_VERSION, "models": entries})


def survey_models(names: Sequence[str], *, cache_dir: Path | None = None, strict_paper: bool = False,
                  config: ScConvConfig | None = None, count_macs: bool = False, jobs: int | None = 0,
                  timeout_s: float | None = None,
                  on_progress: Callable[[int, int, str], None] | None = None) -> list[ModelSurvey]:
    """:func:`survey_model` for each name, reading and filling a cache, in worker processes.

    Args:
        names: from :func:`list_model_names`.
        cache_dir: where the cache file lives (:func:`default_cache_dir`); None: no cache. A
            cache file holds the surveys made with one set of library versions and planning
            code (its name carries their hash), so an upgrade starts a new one.
        strict_paper, config, count_macs: as for :func:`survey_model`.
        jobs: worker processes (:func:`map_in_workers`; 0: this process); None: every CPU when
            more than 100 models are not cached (starting workers costs a few seconds), else 0.
        timeout_s: per-model limit (a model that takes longer gets ``error`` set), or None.
        on_progress: called as ``(done, total, name)`` as each model that was not cached is
            surveyed.

    Returns:
        One :class:`ModelSurvey` per name, in the order of ``names``.
    """
    key = _cache_key(strict_paper, config, count_macs)
    with _cache(cache_dir, key) as cached:
        todo = [n for n in dict.fromkeys(names) if n not in cached]
        if jobs is None:
            jobs = (os.cpu_count() or 1) if len(todo) > 100 else 0
        done = 0

        def record(name: str, result: Any) -> None:
            nonlocal done
            if not isinstance(result, ModelSurvey):  # a crash or a timeout in the worker
                result = ModelSurvey(name=name, family="unknown", error=f"build: {_describe(result)}")
            cached[name] = result.to_dict()
            done += 1
            if on_progress is not None:
                on_progress(done, len(todo), name)

        work = functools.partial(survey_model, strict_paper=strict_paper, config=config, count_macs=count_macs)
        map_in_workers(work, todo, jobs=jobs, timeout_s=timeout_s, on_result=record)
        return [ModelSurvey.from_dict(cached[name]) for name in names]
