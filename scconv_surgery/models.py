"""Model loading: ``timm:`` / ``torchvision:`` names to ``nn.Module``, weights, close-name hints.

A bare name is looked up in timm first, then torchvision (timm: ``parse_model_name`` in
timm/models/_factory.py; torchvision: ``get_model`` in torchvision/models/_api.py). The
:class:`ModelSource` value records how the model was built, so a checkpoint can rebuild it.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import math
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import FactoryError, ModelArgumentError, PretrainedWeightsError, ScconvError, UnknownModelError
from .weights import load_weights_file

__all__ = ["ModelSource", "create_model", "build_model", "default_input_size", "check_model_kwargs"]

LIBRARIES = ("timm", "torchvision")
# timm's model sources (timm: parse_model_name in timm/models/_factory.py): the rest of the name is
# a Hugging Face Hub repo id (read from the local cache first) or a folder with config.json.
TIMM_SOURCES = ("hf-hub:", "hf_hub:", "local-dir:")
FACTORY = "factory"  # ModelSource.library of a user's function: name = "package.module:function"
DEFAULT_INPUT_SIZE = (3, 224, 224)


@dataclass(frozen=True)
class ModelSource:
    """How a base model was built: enough to rebuild it without the weights.

    Attributes:
        library: ``"timm"``, ``"torchvision"`` or ``"factory"``.
        name: the model name in that library (a timm name may carry a ``.tag``); for a
            factory, ``"package.module:function"``.
        kwargs: constructor keyword arguments, e.g. ``{"num_classes": 10}``.
        weights: where the weights came from: ``{"kind": "random"}``,
            ``{"kind": "pretrained", "tag": ...}`` or
            ``{"kind": "file", "name": ..., "sha256": ...}``.
    """

    library: str
    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, Any] = field(default_factory=lambda: {"kind": "random"})

    def to_dict(self) -> dict[str, Any]:
        return {"library": self.library, "name": self.name, "kwargs": dict(self.kwargs),
                "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSource:
        return cls(library=d["library"], name=d["name"], kwargs=dict(d.get("kwargs", {})),
                   weights=dict(d.get("weights", {"kind": "random"})))


def _timm_names() -> list[str]:
    import timm
    return timm.list_models()


def _torchvision_names() -> list[str]:
    import torchvision
    return torchvision.models.list_models()


def _resolve(name: str) -> tuple[str, str]:
    """Split ``name`` into (library, model name); a bare name tries timm, then torchvision.

    timm's source prefixes (``hf-hub:org/repo``, ``local-dir:PATH``) go to timm as they are,
    with or without ``timm:``; a timm name with a pretrained tag (``resnet50.a1_in1k``) must
    name a tag timm knows.

    Raises:
        UnknownModelError: no library knows the name, or timm does not know its tag; carries
            close names (the known tags, for a tag).
    """
    import timm

    if name.removeprefix("timm:").startswith(TIMM_SOURCES):
        return "timm", name.removeprefix("timm:")
    library, sep, model_name = name.partition(":")
    if library == FACTORY:
        return FACTORY, model_name
    if not sep:
        library, model_name = "", name
    elif library not in LIBRARIES:
        raise UnknownModelError(name, [f"{lib}:{model_name}" for lib in LIBRARIES],
                                problem=f"{library!r} is not a library prefix (timm:, torchvision: or factory:)")
    if library in ("", "timm") and timm.is_model(model_name):
        _check_timm_tag(name, model_name)
        return "timm", model_name
    if library in ("", "torchvision") and model_name in _torchvision_names():
        return "torchvision", model_name
    pool = {"timm": _timm_names, "torchvision": _torchvision_names}
    candidates: list[str] = []
    for lib in ([library] if library else LIBRARIES):
        candidates += pool[lib]()
    problem = f"{library} does not know it" if library else "neither timm nor torchvision knows it"
    raise UnknownModelError(name, difflib.get_close_matches(model_name, sorted(set(candidates)), n=5, cutoff=0.6),
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


def _build(library: str, name: str, kwargs: Mapping[str, Any], pretrained: bool) -> nn.Module:
    if library == FACTORY:
        if pretrained:
            raise FactoryError(name, "--pretrained needs a timm or torchvision model; pass --weights FILE")
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


def _unreadable_source(name: str, err: Exception) -> UnknownModelError:
    """timm could not build a ``hf-hub:`` / ``local-dir:`` model: say what is missing."""
    cause = f"{type(err).__name__}: {err}".splitlines()[0]
    where = ("its config.json is neither in the local Hugging Face cache nor downloadable (offline?)"
             if not name.removeprefix("timm:").startswith("local-dir:") else "the folder has no readable config.json")
    return UnknownModelError(name, problem=f"timm cannot build it: {where} ({cause})")


def create_model(name: str, *, pretrained: bool = False, weights: str | os.PathLike | None = None,
                 num_classes: int | None = None,
                 model_kwargs: Mapping[str, Any] | None = None) -> tuple[nn.Module, ModelSource]:
    """Build a model by name, with pretrained weights, a local weights file, or neither.

    Args:
        name: ``resnet50`` (timm first, then torchvision), ``timm:NAME`` (with a pretrained
            tag, ``timm:resnet50.a1_in1k``), ``torchvision:NAME``, a timm source such as
            ``hf-hub:timm/resnet50.a1_in1k`` (the Hugging Face cache first, then the Hub), or
            ``factory:package.module:function`` (the function is called with the constructor
            keyword arguments and returns the model).
        pretrained: load the library's pretrained weights (from its cache, else downloaded).
        weights: a local weights file (see :func:`load_weights_file`); excludes ``pretrained``.
        num_classes: classifier size passed to the constructor.
        model_kwargs: other constructor keyword arguments, e.g. ``{"output_stride": 8}``
            (recorded, so a checkpoint rebuilds the same architecture).

    Returns:
        ``(model, source)``: the model in eval mode on CPU, and how it was built.

    Raises:
        UnknownModelError: the name is unknown (with close names).
        FactoryError: the factory cannot be imported or does not return an ``nn.Module``.
        PretrainedWeightsError: ``pretrained`` and the weights are neither cached nor
            downloadable.
        WeightsFileError: the weights file is missing, unreadable or does not fit.
        ValueError: both ``pretrained`` and ``weights``.
        ModelArgumentError: the constructor rejects a keyword argument, or one cannot be
            recorded as JSON (checked before anything is built).
    """
    if pretrained and weights is not None:
        raise ValueError("pass either pretrained=True or weights=FILE, not both")
    kwargs = dict(model_kwargs or {})
    check_model_kwargs(name, kwargs)
    library, model_name = _resolve(name)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    try:
        model = _build(library, model_name, kwargs, pretrained)
    except TypeError as err:
        if kwargs:
            raise ModelArgumentError(name, kwargs, str(err)) from err
        raise
    except FactoryError:
        raise
    except Exception as err:
        if pretrained:
            raise PretrainedWeightsError(name, f"{type(err).__name__}: {err}".splitlines()[0]) from err
        if model_name.startswith(TIMM_SOURCES):
            raise _unreadable_source(name, err) from err
        raise
    weights_info: dict[str, Any] = {"kind": "random"}
    if pretrained:
        tag = getattr(model, "pretrained_cfg", {}).get("tag") if library == "timm" else "DEFAULT"
        weights_info = {"kind": "pretrained", "tag": tag}
    elif weights is not None:
        weights_info = load_weights_file(model, weights, reinit_classifier=num_classes is not None)
    return model.eval(), ModelSource(library, model_name, kwargs, weights_info)


def build_model(source: ModelSource) -> nn.Module:
    """Rebuild the base model of ``source`` with freshly initialised weights, in eval mode.

    Raises:
        UnknownModelError: the installed timm / torchvision does not know ``source.name``, or a
            ``hf-hub:`` model's config is neither cached nor downloadable.
    """
    library, name = _resolve(f"{source.library}:{source.name}")
    try:
        return _build(library, name, source.kwargs, pretrained=False).eval()
    except Exception as err:
        if name.startswith(TIMM_SOURCES) and not isinstance(err, ScconvError):
            raise _unreadable_source(name, err) from err
        raise


def default_input_size(model: nn.Module, source: ModelSource | None = None) -> tuple[int, int, int]:
    """The model's own input size ``(C, H, W)``.

    timm's ``pretrained_cfg["input_size"]``; for torchvision, the crop size of the default
    weights' transforms (299 for inception_v3); else ``(3, 224, 224)``.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        return tuple(int(v) for v in cfg["input_size"])  # type: ignore[return-value]
    if source is not None and source.library == "torchvision":
        import torchvision

        with contextlib.suppress(Exception):
            crop = torchvision.models.get_model_weights(source.name).DEFAULT.transforms.keywords["crop_size"]
            return (3, int(crop), int(crop))
    return DEFAULT_INPUT_SIZE
