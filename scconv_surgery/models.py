"""Model loading: ``timm:`` / ``torchvision:`` names to ``nn.Module``, weights, close-name hints.

A bare name is looked up in timm first, then torchvision (timm: ``parse_model_name`` in
timm/models/_factory.py; torchvision: ``get_model`` in torchvision/models/_api.py). The
:class:`ModelSource` value records how the model was built, so a checkpoint can rebuild it.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import io
import math
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from .errors import (
    FactoryError,
    MissingExtraError,
    ModelArgumentError,
    ModelDataError,
    PretrainedWeightsError,
    ScconvError,
    UnknownModelError,
    WeightsFileError,
)
from .weights import WeightsKind, WeightsSource, load_weights_file

__all__ = ["WeightsKind", "WeightsSource", "ModelSource", "create_model", "rebuild_base", "build_model",
           "default_input_size", "check_model_kwargs", "check_model_data", "DEFAULT_INPUT_SIZE"]

LIBRARIES = ("timm", "torchvision")
ULTRALYTICS = "ultralytics"  # YOLO model YAMLs and .pt files (the optional extra "yolo"; never a bare name)
# timm's model sources (timm: parse_model_name in timm/models/_factory.py): the rest of the name is
# a Hugging Face Hub repo id (read from the local cache first) or a folder with config.json.
TIMM_SOURCES = ("hf-hub:", "hf_hub:", "local-dir:")
FACTORY = "factory"  # ModelSource.library of a user's function: name = "package.module:function"
DEFAULT_INPUT_SIZE = (3, 224, 224)


@dataclass(frozen=True)
class ModelSource:
    """How a base model is (or was) built: enough to rebuild it.

    As a request (:meth:`parse`, :meth:`factory`), ``library`` may be None: a bare name is
    looked up in timm first, then torchvision. As a record (what :func:`rebuild_base` returns
    and a manifest stores), ``library`` is set and ``weights`` says what was loaded.

    Attributes:
        library: ``"timm"``, ``"torchvision"``, ``"ultralytics"``, ``"factory"``, or None
            (resolve the name).
        name: the model name in that library (a timm name may carry a ``.tag``; a timm source
            such as ``hf-hub:org/repo``); for a factory, ``"package.module:function"``.
        kwargs: constructor keyword arguments, e.g. ``{"num_classes": 10}``.
        weights: where the weights come from (:class:`WeightsSource`).
        trust_pickle: a request only (not recorded): an ``ultralytics:FILE.pt`` may be read,
            which runs code from the file.
    """

    library: str | None
    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: WeightsSource = field(default_factory=WeightsSource)
    trust_pickle: bool = field(default=False, compare=False)  # a request may read a pickled YOLO .pt (runs code)

    @classmethod
    def parse(cls, text: str, *, weights: WeightsSource | None = None,
              kwargs: Mapping[str, Any] | None = None, trust_pickle: bool = False) -> ModelSource:
        """A request from a model name: ``resnet50``, ``timm:NAME``, ``torchvision:NAME``,
        ``hf-hub:ORG/REPO`` / ``local-dir:PATH`` (timm's sources) or
        ``factory:package.module:function``, or ``ultralytics:MODEL.yaml`` (a YOLO model YAML that
        ultralytics ships, or a path to one) / ``ultralytics:FILE.pt`` (a YOLO checkpoint: a
        pickle, read only with ``trust_pickle=True``).

        Raises:
            UnknownModelError: a prefix that is not a library (``foo:bar``).
        """
        weights = weights or WeightsSource()
        kwargs = dict(kwargs or {})
        if text.startswith(f"{ULTRALYTICS}:"):
            return cls(ULTRALYTICS, text.partition(":")[2], kwargs, weights, trust_pickle)
        if text.removeprefix("timm:").startswith(TIMM_SOURCES):
            return cls("timm", text.removeprefix("timm:"), kwargs, weights)
        library, sep, model_name = text.partition(":")
        if not sep:
            return cls(None, text, kwargs, weights)
        if library not in (*LIBRARIES, FACTORY, ULTRALYTICS):
            raise _unknown_prefix(text, library, model_name)
        return cls(library, model_name, kwargs, weights)

    @classmethod
    def factory(cls, function: str, *, weights: WeightsSource | None = None,
                kwargs: Mapping[str, Any] | None = None) -> ModelSource:
        """A request for the user's own model: ``function`` is ``package.module:function``."""
        return cls(FACTORY, function, dict(kwargs or {}), weights or WeightsSource())

    @property
    def yolo_checkpoint(self) -> Path | None:
        """The YOLO ``.pt`` this request reads its model and weights from (``ultralytics:FILE.pt``,
        not yet read: a record holds the file's YAML as ``kwargs["cfg"]``), or None."""
        if self.library == ULTRALYTICS and Path(self.name).suffix == ".pt" and "cfg" not in self.kwargs:
            return Path(self.name)
        return None

    @property
    def weights_file(self) -> Path | None:
        """The local file the base weights are read from (a weights file, or a YOLO ``.pt``), or None."""
        return Path(self.weights.path) if self.weights.path is not None else self.yolo_checkpoint

    @property
    def trained(self) -> bool:
        """Whether the base model gets trained weights (pretrained, a weights file, a YOLO ``.pt``)."""
        return self.weights.trained or self.yolo_checkpoint is not None

    @property
    def display_name(self) -> str:
        """``library:name``, or the bare name of an unresolved request."""
        return f"{self.library}:{self.name}" if self.library else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"library": self.library, "name": self.name, "kwargs": dict(self.kwargs),
                "weights": self.weights.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, seed: int | None = None) -> ModelSource:
        """Read :meth:`to_dict`'s form; ``seed``: the manifest's, for random weights."""
        return cls(library=d["library"], name=d["name"], kwargs=dict(d.get("kwargs", {})),
                   weights=WeightsSource.from_dict(d.get("weights") or {}, seed=seed))


def _timm_names() -> list[str]:
    import timm
    return timm.list_models()


def _torchvision_names() -> list[str]:
    import torchvision
    return torchvision.models.list_models()


def _unknown_prefix(name: str, library: str, model_name: str) -> UnknownModelError:
    """The error for ``name`` whose prefix ``library`` names no library; suggests timm's and
    torchvision's spelling of ``model_name``."""
    return UnknownModelError(name, [f"{lib}:{model_name}" for lib in LIBRARIES],
                             problem=f"{library!r} is not a library prefix (timm:, torchvision:, ultralytics: or "
                             "factory:)")


def _resolve(source: ModelSource) -> tuple[str, str]:
    """The (library, model name) a request names; a bare name tries timm, then torchvision.

    A timm name with a pretrained tag (``resnet50.a1_in1k``) must name a tag timm knows; timm's
    sources (``hf-hub:``, ``local-dir:``) and factories are taken as they are.

    Raises:
        UnknownModelError: no library knows the name, or timm does not know its tag; carries
            close names (the known tags, for a tag).
    """
    import timm

    library, model_name = source.library or "", source.name
    if library in (FACTORY, ULTRALYTICS) or (library == "timm" and model_name.startswith(TIMM_SOURCES)):
        return library, model_name
    if library and library not in LIBRARIES:
        raise _unknown_prefix(source.display_name, library, model_name)
    if library in ("", "timm") and timm.is_model(model_name):
        _check_timm_tag(source.display_name, model_name)
        return "timm", model_name
    if library in ("", "torchvision") and model_name in _torchvision_names():
        return "torchvision", model_name
    pool = {"timm": _timm_names, "torchvision": _torchvision_names}
    candidates: list[str] = []
    for lib in ([library] if library else LIBRARIES):
        candidates += pool[lib]()
    problem = f"{library} does not know it" if library else "neither timm nor torchvision knows it"
    raise UnknownModelError(source.display_name,
                            difflib.get_close_matches(model_name, sorted(set(candidates)), n=5, cutoff=0.6),
                            problem=problem)


def _check_timm_tag(name: str, model_name: str) -> None:
    """Refuse a pretrained tag that timm does not know for the architecture (timm raises a bare
    RuntimeError only when the model is built)."""
    from timm.models import get_arch_pretrained_cfgs

    arch, _, tag = model_name.partition(".")
    if not tag:
        return
    known = list(get_arch_pretrained_cfgs(arch))
    if model_name not in known:
        raise UnknownModelError(name, [f"timm:{k}" for k in known],
                                problem=f"timm knows {arch!r} but not its pretrained tag {tag!r}")


@contextlib.contextmanager
def _hf_hub_offline() -> Iterator[None]:
    """Make huggingface_hub read only its local cache (fails fast instead of retrying)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _import_factory(factory: str) -> Any:
    """The function ``package.module:function`` names; the working directory is searched too."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise FactoryError(factory, "expected 'package.module:function'")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())  # console scripts do not put the working directory on sys.path
            module = importlib.import_module(module_name)
    except Exception as err:
        raise FactoryError(factory, f"cannot import {module_name!r} ({type(err).__name__}: {err})") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise FactoryError(factory, f"module {module_name!r} has no function {attr!r}")
    return fn


def _yolo() -> Any:
    """The ultralytics module (:mod:`scconv_surgery.yolo`), imported on first use.

    Raises:
        MissingExtraError: ultralytics is not installed (the optional extra ``yolo``).
    """
    if importlib.util.find_spec("ultralytics") is None:
        raise MissingExtraError("yolo", "ultralytics", "an 'ultralytics:' model")
    from . import yolo

    return yolo


def _build(library: str, name: str, kwargs: Mapping[str, Any], pretrained: bool) -> nn.Module:
    if library == FACTORY:
        if pretrained:
            raise FactoryError(name, "pretrained weights exist only for timm and torchvision models; start from a "
                               "weights file instead")
        model = _import_factory(name)(**kwargs)
        if not isinstance(model, nn.Module):
            raise FactoryError(name, f"returned {type(model).__name__}, not an nn.Module")
        return model
    if library == "timm":
        import timm

        if not pretrained and not name.startswith(("hf-hub:", "hf_hub:")):
            return timm.create_model(name, pretrained=False, **kwargs)
        try:  # the Hub's cache first: no network wait when the config and weights are cached
            with _hf_hub_offline():
                return timm.create_model(name, pretrained=pretrained, **kwargs)
        except Exception:
            from huggingface_hub import constants
            if constants.HF_HUB_OFFLINE or not _hub_reachable():
                raise  # offline: fail now rather than after huggingface_hub's retries
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    import torchvision

    builder_args = inspect.signature(torchvision.models.get_model_builder(name)).parameters
    if "weights_backbone" in builder_args and "weights_backbone" not in kwargs:
        kwargs = {**kwargs, "weights_backbone": None}  # detection/segmentation: no hidden backbone download
    return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (a name lookup fails at once offline)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _json_problem(value: Any) -> str | None:
    """Why ``value`` does not survive a JSON round trip, or None: only finite numbers, bools,
    strings, None, and lists and string-keyed dicts of those do."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, (list, tuple)):
        return next((p for p in map(_json_problem, value) if p), None)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            return f"the mapping {value!r} has keys that are not strings"
        return next((p for p in map(_json_problem, value.values()) if p), None)
    return f"{value!r} is a {type(value).__name__}"


def check_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse constructor arguments that the manifest (JSON) cannot record exactly.

    Raises:
        ModelArgumentError: a value is not a finite number, bool, string, None, or a list or
            string-keyed dict of those (a date, NaN, infinity, an object); names the key.
    """
    for key, value in kwargs.items():
        problem = _json_problem(value)
        if problem:
            raise ModelArgumentError(name, {k: repr(v) for k, v in kwargs.items()},
                                     f"{problem}; the checkpoint records constructor arguments as JSON, which "
                                     "holds finite numbers, true/false, text, null, and lists and dicts of these",
                                     key=key)


def check_model_data(model: nn.Module, name: str) -> None:
    """Refuse a model whose tensors hold no values or are quantised, before any work is done.

    Every parameter and buffer must hold data: a model built on the ``meta`` device (or with
    ``torch.device("meta")`` around its constructor) has shapes but no values, so converting it
    would save a checkpoint of nothing. Quantised tensors (``torch.ao.quantization``'s converted
    modules) are refused too: quantise after conversion and fine-tuning, from the float model.
    Other dtypes (float16, bfloat16, float64, a mix) and devices (CUDA) are followed instead: each
    step creates its inputs on the model's device and in its floating dtype.

    Args:
        model: the model as built.
        name: the model's name, for the message.

    Raises:
        ModelDataError: a parameter or buffer is on the meta device or quantised (names the first few).
    """
    import torch

    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    meta = [key for key, t in tensors if isinstance(t, torch.Tensor) and t.is_meta]
    if meta:
        raise ModelDataError(name, f"{len(meta)} of its {len(tensors)} tensors have no data (the meta device, e.g. "
                             f"{', '.join(meta[:3])}): build it on a real device (cpu, cuda), or load weights into it "
                             "with load_state_dict(..., assign=True), before converting", meta[:5])
    quantised = [key for key, t in tensors if isinstance(t, torch.Tensor) and t.is_quantized] or [
        key or "(the model)" for key, m in model.named_modules()
        if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))]
    if quantised:
        raise ModelDataError(name, f"it is quantised ({', '.join(quantised[:3])}): SCConv replaces float convs; "
                             "convert the float model, then quantise", quantised[:5])


def _unreadable_source(name: str, err: Exception) -> UnknownModelError:
    """timm could not build a ``hf-hub:`` / ``local-dir:`` model: say what is missing."""
    cause = f"{type(err).__name__}: {err}".splitlines()[0]
    where = ("its config.json is neither in the local Hugging Face cache nor downloadable (offline?)"
             if not name.removeprefix("timm:").startswith("local-dir:") else "the folder has no readable config.json")
    return UnknownModelError(name, problem=f"timm cannot build it: {where} ({cause})")


def create_model(name: str, *, weights: WeightsSource | str | os.PathLike | None = None,
                 num_classes: int | None = None,
                 model_kwargs: Mapping[str, Any] | None = None) -> tuple[nn.Module, ModelSource]:
    """Build a model by name, with random, pretrained or file weights.

    Args:
        name: ``resnet50`` (timm first, then torchvision), ``timm:NAME`` (with a pretrained
            tag, ``timm:resnet50.a1_in1k``), ``torchvision:NAME``, a timm source such as
            ``hf-hub:timm/resnet50.a1_in1k`` (the Hugging Face cache first, then the Hub), or
            ``factory:package.module:function`` (the function is called with the constructor
            keyword arguments and returns the model).
        weights: :class:`WeightsSource` (``WeightsSource.pretrained()``,
            ``WeightsSource.file(path)``, ``WeightsSource.random(seed)``), or a path for a file;
            None: the constructor's random initialisation.
        num_classes: classifier size passed to the constructor (a classifier whose shape then
            differs from a weights file's is re-initialised, as timm does).
        model_kwargs: other constructor keyword arguments, e.g. ``{"output_stride": 8}``
            (recorded, so a checkpoint rebuilds the same architecture).

    Returns:
        ``(model, source)``: the model in eval mode on CPU, and how it was built.

    Raises:
        UnknownModelError: the name is unknown (with close names).
        FactoryError: the factory cannot be imported or does not return an ``nn.Module``.
        PretrainedWeightsError: the pretrained weights are neither cached nor downloadable.
        WeightsFileError: the weights file is missing, unreadable or does not fit.
        ModelArgumentError: the constructor rejects a keyword argument, or one cannot be
            recorded as JSON (checked before anything is built).
    """
    if weights is not None and not isinstance(weights, WeightsSource):
        weights = WeightsSource.file(weights)
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    return rebuild_base(ModelSource.parse(name, weights=weights, kwargs=kwargs))


def rebuild_base(source: ModelSource) -> tuple[nn.Module, ModelSource]:
    """Build the base model a source describes, with the weights it names.

    The constructor runs seeded by ``source.weights.seed`` (when set, without touching the
    caller's RNG), so a random base model (or a re-initialised classifier) is rebuilt exactly; pretrained weights come from the
    library (cache first); a file is read from ``source.weights.path`` and, when the source
    records a sha256, must have it. A classifier whose shape differs from a weights file's is
    re-initialised when ``num_classes`` is among the constructor arguments.

    Args:
        source: a request (:meth:`ModelSource.parse`) or a record (a manifest's source, with
            ``weights.path`` set for a file).

    Returns:
        ``(model, record)``: the model in eval mode on CPU, and the source as recorded: the
        library resolved, and for a file its name, sha256, re-initialised keys and stripped
        prefixes.

    Raises:
        UnknownModelError, FactoryError, PretrainedWeightsError, ModelArgumentError: see
            :func:`create_model`.
        WeightsFileError: no file is given for file weights, or it is unreadable, not the
            recorded file (sha256), or does not fit.
        ModelDataError: the model's tensors have no data (built on the meta device) or are
            quantised (:func:`check_model_data`), checked before its weights are loaded.
    """
    weights = source.weights
    kwargs = dict(source.kwargs)
    check_model_kwargs(source.display_name, kwargs)
    if source.library == ULTRALYTICS:
        return _yolo().rebuild_yolo_base(source, trust_pickle=source.trust_pickle)
    library, model_name = _resolve(source)
    if weights.kind is WeightsKind.FILE:
        weights.checked_file()  # before any work
    pretrained = weights.kind is WeightsKind.PRETRAINED
    build_name = model_name
    if pretrained and weights.tag and library == "timm" and "." not in model_name \
            and not model_name.startswith(TIMM_SOURCES):
        build_name = f"{model_name}.{weights.tag}"  # the recorded tag, on a name recorded without one
    try:
        with _seeded(weights.seed):
            model = _build(library, build_name, kwargs, pretrained)
    except TypeError as err:
        if kwargs:
            raise ModelArgumentError(source.display_name, kwargs, str(err)) from err
        raise
    except FactoryError:
        raise
    except Exception as err:
        if pretrained:
            raise PretrainedWeightsError(source.display_name, f"{type(err).__name__}: {err}".splitlines()[0]) from err
        if model_name.startswith(TIMM_SOURCES):
            raise _unreadable_source(source.display_name, err) from err
        raise
    check_model_data(model, source.display_name)
    if pretrained:
        tag = getattr(model, "pretrained_cfg", {}).get("tag") if library == "timm" else "DEFAULT"
        weights = replace(WeightsSource.pretrained(tag), seed=weights.seed)
    elif weights.kind is WeightsKind.FILE:
        assert weights.path is not None  # checked above
        try:
            weights = replace(load_weights_file(model, weights.path, reinit_classifier="num_classes" in kwargs,
                                                entry=weights.entry), seed=weights.seed)
        except WeightsFileError as err:
            common = len(model.state_dict().keys() - set(err.missing_keys))
            if not (err.missing_keys or err.unexpected_keys) or library not in LIBRARIES or common < len(err.missing_keys):
                raise  # not a key mismatch, or too little in common for a variant of this model
            fits = fitting_variants(library, model_name, kwargs, weights.path, entry=weights.entry)
            if not fits:
                raise
            raise WeightsFileError(err.path, f"{err.problem}. It fits {', '.join(fits)}: build that model instead",
                                   err.missing_keys, err.unexpected_keys) from err
    return model.eval(), ModelSource(library, model_name, kwargs, weights)


def fitting_variants(library: str, name: str, kwargs: Mapping[str, Any], path: str | os.PathLike, *,
                     entry: str | None = None, limit: int = 30) -> list[str]:
    """The first model of ``name``'s family in ``library`` whose state_dict a weights file fits.

    The family is the models whose names start as ``name``'s does up to its first digit or
    separator (``resnet`` for ``resnet18``: ``resnet34``, ``resnet50``, ...); each is built on
    the meta device (no memory, no initialisation) with ``kwargs``, the names closest to
    ``name`` first, and compared by keys and shapes (the classifier's shapes may differ when
    ``num_classes`` is given). For the message of a file that does not fit: "It fits
    torchvision:resnet34".

    Returns:
        ``[library:name]`` of the first fitting model (at most ``limit`` candidates are built),
        or an empty list.
    """
    import re

    import torch

    from .weights import read_weights

    family = re.match(r"[A-Za-z]+", name)
    if family is None:
        return []
    names = _timm_names() if library == "timm" else _torchvision_names()
    candidates = sorted((n for n in names if n.startswith(family.group(0)) and n != name),
                        key=lambda n: -difflib.SequenceMatcher(None, n, name).ratio())[:limit]  # the closest first
    try:
        shapes = {k: tuple(v.shape) for k, v in read_weights(path, entry=entry).state_dict.items()}
    except ScconvError:
        return []
    allowed = 2 if "num_classes" in kwargs else 0  # the classifier's weight and bias
    for candidate in candidates:
        try:
            with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
                own = _build(library, candidate, kwargs, False).state_dict()
        except Exception:  # a family member that does not take these arguments
            continue
        if own.keys() == shapes.keys() and sum(tuple(v.shape) != shapes[k] for k, v in own.items()) <= allowed:
            return [f"{library}:{candidate}"]
    return []


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's CPU generator meanwhile, restoring the caller's state after (no-op for None)."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(source: ModelSource, *, require_data: bool = True) -> nn.Module:
    """Rebuild the architecture of ``source`` with freshly initialised weights, in eval mode
    (no weights loaded: the caller loads a state_dict).

    Args:
        source: the model to build.
        require_data: refuse a model whose tensors have no data (:func:`check_model_data`);
            False for a shape-only survey on the meta device.

    Raises:
        UnknownModelError: the installed timm / torchvision does not know ``source.name``, or a
            ``hf-hub:`` model's config is neither cached nor downloadable.
        ModelDataError: ``require_data`` and the model has tensors without data, or quantised ones.
    """
    if source.library == ULTRALYTICS:
        return _yolo().build_yolo_model(source.name, source.kwargs)
    library, name = _resolve(source)
    try:
        model = _build(library, name, source.kwargs, pretrained=False).eval()
    except Exception as err:
        if name.startswith(TIMM_SOURCES) and not isinstance(err, ScconvError):
            raise _unreadable_source(name, err) from err
        raise
    if require_data:
        check_model_data(model, source.display_name)
    return model


def default_input_size(model: nn.Module, source: ModelSource | None = None) -> tuple[int, int, int]:
    """The model's own input size ``(C, H, W)``.

    timm's ``pretrained_cfg["input_size"]``; for torchvision, the crop size of the default
    weights' transforms (299 for inception_v3); else ``(3, 224, 224)``.
    """
    if source is not None and source.library == ULTRALYTICS:
        return _yolo().yolo_input_size(model)  # ultralytics' default imgsz: 640, 224 for classification
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        return tuple(int(v) for v in cfg["input_size"])  # type: ignore[return-value]
    if source is not None and source.library == "torchvision":
        import torchvision

        with contextlib.suppress(Exception):
            crop = torchvision.models.get_model_weights(source.name).DEFAULT.transforms.keywords["crop_size"]
            return (3, int(crop), int(crop))
    return DEFAULT_INPUT_SIZE
