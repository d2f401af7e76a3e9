"""ultralytics YOLO models: build by YAML name, read a YOLO ``.pt``, fuse, and write one.

Imported only when a model asks for ultralytics (``ultralytics:yolov8n.yaml``), which is the
optional extra ``yolo`` (``pip install 'scconv-surgery[yolo]'``; ultralytics is AGPL-3.0).
Nothing here downloads: YAMLs come from the installed ultralytics or a local path, and YOLO
``.pt`` files are local.

- :func:`build_yolo_model`: a model YAML (detection, segmentation, pose, oriented boxes,
  classification) -> ultralytics' model of that task as a ``ScConv*Model`` (:data:`MODELS`),
  whose ``fuse()`` also folds the BatchNorm after each SCConv (:mod:`scconv_surgery.fuse`);
  same state_dict keys as ultralytics' class.
- :func:`read_yolo_checkpoint`: a YOLO ``.pt`` (a pickle: reading it runs code, so only with
  ``trust_pickle=True``) -> its YAML and state_dict.
- :func:`save_yolo_checkpoint`: a converted model in ultralytics' own ``.pt`` format, which
  ``YOLO(path)`` loads, predicts, trains, validates and exports. Its YAML records the
  conversion (:func:`record_conversion`); ultralytics' trainer rebuilds a model from its YAML,
  so importing this module makes its trainers (:class:`ScConvDetectionTrainer` and one per
  task), which read that record, those of ``YOLO``'s tasks (models without the record train
  as before).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import difflib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics' first import: no online checks

import ultralytics  # noqa: E402
from ultralytics.models.yolo import classify, detect, obb, pose, segment  # noqa: E402
from ultralytics.nn.modules import Conv  # noqa: E402
from ultralytics.nn.tasks import (  # noqa: E402
    BaseModel,
    ClassificationModel,
    DetectionModel,
    OBBModel,
    PoseModel,
    SegmentationModel,
    yaml_model_load,
)

from .checkpoint import check_output_path  # noqa: E402
from .errors import (  # noqa: E402
    ModelArgumentError,
    OutputPathError,
    PretrainedWeightsError,
    UnknownModelError,
    WeightsFileError,
)


def _restore_pil_open() -> None:
    """Undo ultralytics' replacement of ``PIL.Image.open`` (ultralytics/utils/patches.py), which on an
    image Pillow cannot identify pip-installs ``pi-heif`` at run time (and, offline, raises
    ModuleNotFoundError): scconv installs nothing while it runs, and names an unreadable
    calibration image instead. ultralytics keeps PIL's original as ``patches._image_open``."""
    from PIL import Image
    from ultralytics.utils import patches

    original = getattr(patches, "_image_open", None)
    if original is not None and getattr(Image.open, "__module__", None) == patches.__name__:
        Image.open = original


_restore_pil_open()

from .fuse import fold_batchnorm  # noqa: E402
from .layers import ScConv  # noqa: E402
from .weights import WeightsKind, WeightsSource, file_sha256  # noqa: E402

__all__ = ["ScConvDetectionModel", "ScConvSegmentationModel", "ScConvPoseModel", "ScConvOBBModel",
           "ScConvClassificationModel", "ScConvDetectionTrainer", "ScConvSegmentationTrainer", "ScConvPoseTrainer",
           "ScConvOBBTrainer", "ScConvClassificationTrainer", "MODELS", "task_of", "yolo_input_size",
           "yolo_transform", "find_model_yaml", "build_yolo_model", "read_yolo_checkpoint", "record_conversion", "apply_record",
           "as_scconv_model", "YAML_KEY", "fuse_scconv_convs", "save_yolo_checkpoint", "check_yolo_output_path",
           "YOLO_INPUT_SIZE"]

YOLO_INPUT_SIZE = (3, 640, 640)  # ultralytics' default imgsz
_KWARGS = ("nc", "num_classes", "ch", "cfg")  # what build_yolo_model takes


@contextlib.contextmanager
def _logs_to_stderr() -> Iterator[None]:
    """Point ultralytics' log handler (stdout) at stderr meanwhile: stdout keeps one JSON document."""
    handlers = [h for h in logging.getLogger("ultralytics").handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(sys.stderr) for h in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams):
            if stream is not None:
                handler.setStream(stream)


def fuse_scconv_convs(model: nn.Module) -> int:
    """Fold the BatchNorm of each ultralytics ``Conv`` whose conv is an SCConv, in place.

    ``Conv`` computes ``act(bn(conv(x)))``; its ``conv`` becomes a
    :class:`~scconv_surgery.fuse.FusedScConv`, its ``bn`` is removed and it runs
    ``forward_fuse``, exactly as ultralytics' ``BaseModel.fuse`` treats a dense ``Conv``.

    Returns:
        How many were folded.
    """
    folded = 0
    for module in model.modules():
        if isinstance(module, Conv) and isinstance(module.conv, ScConv) and hasattr(module, "bn"):
            module.conv = fold_batchnorm(module.conv, module.bn)
            delattr(module, "bn")
            module.forward = module.forward_fuse  # type: ignore[method-assign]
            folded += 1
    return folded


class _FusesScConv:
    """``fuse`` for ultralytics models that hold SCConv: ultralytics' ``fuse`` folds each
    ``Conv``'s BatchNorm into ``conv.weight``, which an SCConv does not have; this one first
    folds those into a per-channel affine (:func:`fuse_scconv_convs`), then lets ultralytics
    fuse the rest."""

    def fuse(self, *args: Any, **kwargs: Any) -> Any:
        was_training = self.training
        self.eval()  # folding reads the running statistics
        fuse_scconv_convs(self)
        self.train(was_training)
        return super().fuse(*args, **kwargs)


class ScConvDetectionModel(_FusesScConv, DetectionModel):
    """ultralytics' ``DetectionModel`` whose ``fuse()`` handles SCConv; everything else, the
    state_dict keys included, is ``DetectionModel``'s."""


class ScConvSegmentationModel(_FusesScConv, SegmentationModel):
    """ultralytics' ``SegmentationModel`` whose ``fuse()`` handles SCConv."""


class ScConvPoseModel(_FusesScConv, PoseModel):
    """ultralytics' ``PoseModel`` whose ``fuse()`` handles SCConv."""


class ScConvOBBModel(_FusesScConv, OBBModel):
    """ultralytics' ``OBBModel`` whose ``fuse()`` handles SCConv."""


class ScConvClassificationModel(_FusesScConv, ClassificationModel):
    """ultralytics' ``ClassificationModel`` whose ``fuse()`` handles SCConv."""


HEADS = {"Detect": "detect", "v10Detect": "detect", "Segment": "segment", "Segment26": "segment", "Pose": "pose",
         "Pose26": "pose", "OBB": "obb", "OBB26": "obb", "Classify": "classify"}  # a YAML's last module -> task
MODELS: dict[str, type[BaseModel]] = {"detect": ScConvDetectionModel, "segment": ScConvSegmentationModel,
                                      "pose": ScConvPoseModel, "obb": ScConvOBBModel,
                                      "classify": ScConvClassificationModel}
_BASES = {cls: cls.__mro__[2] for cls in MODELS.values()}  # ScConv class -> ultralytics' own


def task_of(cfg: Mapping[str, Any], name: str = "the model") -> str:
    """The ultralytics task (``detect``, ``segment``, ``pose``, ``obb``, ``classify``) of a model YAML,
    from its last module, as ultralytics' ``guess_model_task`` reads it.

    Raises:
        UnknownModelError: another head (YOLO-World, YOLOE, RT-DETR, depth, semantic segmentation).
    """
    try:
        head = str(cfg["head"][-1][2])
    except (KeyError, IndexError, TypeError):
        raise UnknownModelError(name, problem="it has no 'head' list of [from, repeats, module, args] entries: not "
                                "an ultralytics model YAML", advice="", what="invalid model") from None
    if head not in HEADS:
        raise UnknownModelError(name, problem=f"its head is {head!r}; supported: detection, segmentation, pose, "
                                "oriented boxes and classification models (a Detect, Segment, Pose, OBB or "
                                "Classify head)", advice="", what="unsupported model")
    return HEADS[head]


def yolo_input_size(model: nn.Module) -> tuple[int, int, int]:
    """ultralytics' default ``imgsz`` for the model's task, as ``(C, H, W)``: 224 for classification,
    else 640."""
    return (3, 224, 224) if isinstance(model, ClassificationModel) else YOLO_INPUT_SIZE


def _model_yamls() -> list[Path]:
    return sorted((Path(ultralytics.__file__).parent / "cfg" / "models").rglob("*.yaml"))


def yolo_transform(model: nn.Module, size: tuple[int, int, int]) -> Any:
    """ultralytics' own evaluation preprocessing for ``model``: an RGB PIL image to a ``(3, H, W)``
    float tensor in [0, 1] (no mean / std normalisation).

    Classification: ultralytics' ``classify_transforms`` (resize, centre crop). The other tasks:
    its ``LetterBox`` (resize keeping the aspect ratio, padded with grey 114 to ``H x W``), as
    ``YOLO.predict`` prepares an image.
    """
    import numpy as np
    from ultralytics.data.augment import LetterBox, classify_transforms

    if isinstance(model, ClassificationModel):
        return classify_transforms(size=tuple(size[1:]))
    letterbox = LetterBox(new_shape=tuple(size[1:]), auto=False)

    def transform(image: Any) -> torch.Tensor:
        pixels = letterbox(image=np.ascontiguousarray(np.asarray(image.convert("RGB"))))
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float() / 255.0

    return transform


def find_model_yaml(name: str) -> Path:
    """The model YAML ``name`` means: a path that exists, or a YAML ultralytics ships.

    A shipped name may carry a scale, as ultralytics' own names do (``yolov8n.yaml`` is
    ``yolov8.yaml`` at scale ``n``); the returned path then names the scale (it need not exist:
    ultralytics' ``yaml_model_load`` reads it).

    Raises:
        UnknownModelError: no such file, and ultralytics ships no such YAML (with close names).
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = _model_yamls()
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", path.stem) + path.suffix
    if path.parent == Path(".") and path.suffix in (".yaml", ".yml"):
        for candidate in (path.name, unified):
            found = [p for p in shipped if p.name == candidate]
            if found:
                return found[0].with_name(path.name)
    if path.parent != Path(".") or path.is_absolute():  # a path, not a shipped name
        raise UnknownModelError(f"ultralytics:{name}", problem="no such file" if not path.exists() else
                                "not a regular file", advice="")
    names = sorted({p.name for p in shipped})
    problem = ("no such file, and ultralytics ships no model YAML of that name" if path.suffix in (".yaml", ".yml")
               else "expected a model YAML (.yaml) or, with trust_pickle=True, a YOLO checkpoint (.pt)")
    raise UnknownModelError(f"ultralytics:{name}", [f"ultralytics:{n}" for n in
                                                    difflib.get_close_matches(path.name, names, n=5, cutoff=0.6)],
                            problem=problem)


def _nc(name: str, kwargs: Mapping[str, Any]) -> int | None:
    unknown = sorted(set(kwargs) - set(_KWARGS))
    if unknown:
        raise ModelArgumentError(name, dict(kwargs), f"a YOLO model takes {', '.join(_KWARGS)}; not {unknown}",
                                 key=unknown[0])
    if "nc" in kwargs and "num_classes" in kwargs and kwargs["nc"] != kwargs["num_classes"]:
        raise ModelArgumentError(name, dict(kwargs), "nc and num_classes differ; give one", key="num_classes")
    nc = kwargs.get("nc", kwargs.get("num_classes"))
    return None if nc is None else int(nc)


def build_yolo_model(name: str, kwargs: Mapping[str, Any]) -> BaseModel:
    """A YOLO model from a model YAML, with fresh weights, in eval mode.

    Returns:
        The ``ScConv*Model`` of the YAML's task (:data:`MODELS`): ultralytics' own class with a
        ``fuse()`` that handles SCConv.

    Args:
        name: a YAML ultralytics ships (``yolov8n.yaml``, ``yolo11n-seg.yaml``, a scale in the
            name) or a path to one; ignored when ``kwargs["cfg"]`` holds the YAML's contents.
        kwargs: ``nc`` (or ``num_classes``): the class count; ``ch``: input channels;
            ``cfg``: the YAML's contents as a dict (recorded from a YOLO ``.pt``).

    Raises:
        UnknownModelError: the YAML does not exist (see :func:`find_model_yaml`), or its task is
            not supported (:func:`task_of`).
        ModelArgumentError: another keyword argument.
    """
    nc = _nc(f"ultralytics:{name}", kwargs)
    if "cfg" in kwargs:
        cfg = copy.deepcopy(dict(kwargs["cfg"]))
    else:
        path = find_model_yaml(name)
        try:
            cfg = yaml_model_load(path)
        except Exception as err:  # ultralytics' YAML reader: a syntax error, a file that is not text
            raise UnknownModelError(f"ultralytics:{name}", problem=f"not a valid YAML file ({type(err).__name__}: "
                                    f"{str(err).splitlines()[0] if str(err) else ''})", advice="",
                                    what="invalid model") from err
    model_class = MODELS[task_of(cfg, f"ultralytics:{name}")]
    if nc is not None:
        cfg["nc"] = nc  # what the model's nc= does, without its log line
    with _logs_to_stderr():
        model = model_class(cfg, ch=int(kwargs.get("ch", 3)), verbose=False).eval()
    names = cfg.get("names")
    if isinstance(names, Mapping) and len(names) == len(model.names):  # a YOLO .pt's class names (keys: JSON strings)
        model.names = {int(k): str(v) for k, v in names.items()}
    return model


def read_yolo_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The YAML and the weights of a YOLO ``.pt`` (ultralytics' training or release checkpoint) of a
    detection, segmentation, pose, oriented-box or classification model.

    A YOLO ``.pt`` pickles the model: reading it runs code from the file, so it is read only
    with ``trust_pickle=True``, for a file you trust.

    Returns:
        ``(yaml, state_dict)``: the model's YAML as a dict (``model.yaml``, with the model's class
        ``names``) and its float32 weights (the EMA's when the file has one, as ultralytics reads it).

    Raises:
        WeightsFileError: ``trust_pickle`` is not set; the file is missing or unreadable; it is
            not a YOLO checkpoint, or of a task not supported (:func:`task_of`); or its model
            already holds SCConv layers.
    """
    path = Path(path)
    if not trust_pickle:
        raise WeightsFileError(str(path), "is a YOLO checkpoint, a pickle: reading it runs code from the file. "
                               "Read it only if you trust it (trust_pickle=True)", untrusted_pickle=True)
    if not path.is_file():
        raise WeightsFileError(str(path), "no such file" if not path.exists() else "not a regular file")
    try:
        with _logs_to_stderr():
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise WeightsFileError(str(path), f"cannot be read as a YOLO checkpoint ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from err
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, Mapping) else None
    if not isinstance(model, BaseModel) or not isinstance(getattr(model, "yaml", None), Mapping):
        what = type(model).__name__ if model is not None else f"a {type(ckpt).__name__} without a 'model'"
        raise WeightsFileError(str(path), f"is not a YOLO checkpoint (it holds {what}); expected a .pt written by "
                               "ultralytics (YOLO.train / YOLO.save)")
    try:
        task_of(model.yaml)
    except UnknownModelError as err:
        raise WeightsFileError(str(path), f"holds a {type(model).__name__}: {err.problem}") from err
    if any(isinstance(m, ScConv) for m in model.modules()):
        raise WeightsFileError(str(path), "already holds SCConv layers; load it with YOLO(path), or convert the "
                               "original model")
    yaml = copy.deepcopy(dict(model.yaml))
    names = getattr(model, "names", None)
    if isinstance(names, (Mapping, list, tuple)):  # the class names live on the model, not in its YAML
        pairs = names.items() if isinstance(names, Mapping) else enumerate(names)
        yaml["names"] = {str(k): str(v) for k, v in pairs}  # string keys: recorded as JSON in the manifest
    return yaml, {k: v.float() for k, v in model.state_dict().items()}


def rebuild_yolo_base(source: Any, *, trust_pickle: bool = False) -> tuple[BaseModel, Any]:
    """:func:`~scconv_surgery.models.rebuild_base` for ``library == "ultralytics"``.

    A ``.yaml`` name builds fresh weights (or loads a state_dict file); a ``.pt`` name is read
    (:func:`read_yolo_checkpoint`), its YAML recorded in the kwargs as ``cfg`` and its weights
    carried over (recorded by name and sha256). With another class count (``nc``), the head's
    class layers keep their fresh initialisation and are listed as re-initialised.

    Raises:
        UnknownModelError, ModelArgumentError: see :func:`build_yolo_model`.
        WeightsFileError: see :func:`read_yolo_checkpoint`.
        PretrainedWeightsError: pretrained weights are asked for (ultralytics downloads them).
    """
    from .models import ModelSource, _seeded
    from .weights import load_weights_file

    weights = source.weights
    kwargs = dict(source.kwargs)
    if weights.kind is WeightsKind.PRETRAINED:
        raise PretrainedWeightsError(source.display_name, "", problem="ultralytics' pretrained weights are "
                                     "downloads, which this tool does not make; start from a local YOLO .pt instead "
                                     "(named 'ultralytics:FILE.pt', read with trust_pickle=True)")
    path = source.yolo_checkpoint
    if path is not None:
        yaml, state_dict = read_yolo_checkpoint(path, trust_pickle=trust_pickle)
        kwargs = {"cfg": yaml, **kwargs}
        with _seeded(weights.seed):
            model = build_yolo_model(source.name, kwargs)
        record = replace(_carry_over(model, state_dict, path), seed=weights.seed)
        return model.eval(), ModelSource("ultralytics", path.name, kwargs, record)
    if weights.kind is WeightsKind.FILE:
        weights.checked_file()  # before any work
    with _seeded(weights.seed):
        model = build_yolo_model(source.name, kwargs)
    if weights.kind is WeightsKind.FILE:
        try:
            reinit = "nc" in kwargs or "num_classes" in kwargs  # another class count: the class branch starts fresh
            weights = replace(load_weights_file(model, weights.path, reinit_classifier=reinit), seed=weights.seed)
        except WeightsFileError as err:
            if "pickled" not in err.problem:
                raise
            if "cfg" in kwargs and trust_pickle:  # a conversion of a YOLO .pt, rebuilt: that .pt's weights again
                _, state_dict = read_yolo_checkpoint(weights.path, trust_pickle=True)
                weights = replace(_carry_over(model, state_dict, Path(weights.path)), seed=weights.seed)
                return model.eval(), ModelSource("ultralytics", source.name, kwargs, weights)
            how = "allow reading the pickle" if "cfg" in kwargs else \
                f"name it 'ultralytics:{weights.path}' and allow reading the pickle"
            raise WeightsFileError(err.path, f"{err.problem}. A YOLO checkpoint (.pt) is read as the model itself: "
                                   f"{how} (trust_pickle=True)", untrusted_pickle=True) from err
    return model.eval(), ModelSource("ultralytics", source.name, kwargs, weights)


YAML_KEY = "scconv_surgery"  # in a converted model's YAML: the replaced convs, so a trainer can rebuild it


def record_conversion(model: BaseModel, replaced: Any) -> None:
    """Record in ``model.yaml`` (under :data:`YAML_KEY`) which convs were replaced, and how.

    ultralytics' trainer builds a new model from ``model.yaml`` and copies the weights that fit;
    with this record, the trainers of this module (which ``YOLO(path).train()`` uses once it is
    imported) build the converted architecture instead (:func:`apply_record`).

    Args:
        model: a converted ultralytics model; its ``yaml`` dict is replaced by a copy with the record.
        replaced: the replaced convs' decisions (:class:`~scconv_surgery.plan.Decision` or their
            dicts, as in a manifest's ``replaced``).
    """
    decisions = [d if isinstance(d, Mapping) else d.to_dict() for d in replaced]
    model.yaml = {**model.yaml, YAML_KEY: {"replaced": copy.deepcopy(decisions)}}


def as_scconv_model(model: BaseModel) -> BaseModel:
    """Give an ultralytics model of a supported task its ``ScConv*Model`` class (:data:`MODELS`), in
    place: the same state, plus a ``fuse()`` that handles SCConv, and a pickle that names this
    module, so that loading it makes this module's trainers ultralytics' (see :func:`record_conversion`)."""
    for scconv_class, base in _BASES.items():
        if type(model) is base:
            model.__class__ = scconv_class
    return model


def apply_record(model: BaseModel) -> BaseModel:
    """Replay the replacements recorded in ``model.yaml`` (:func:`record_conversion`) on a model
    ultralytics built from that YAML, in place (new layers drawn from the global RNG, as
    ultralytics initialises its own), and give it its ``ScConv*Model`` class.

    Raises:
        ValueError: the YAML has no record, or a recorded conv does not fit the model (a head
            conv whose width depends on the class count: convert with this ``nc``, or keep the
            head dense, as the ``yolo`` preset does).
    """
    from .apply import apply_plan
    from .errors import PlanMismatchError
    from .plan import Decision, Plan

    record = model.yaml.get(YAML_KEY)
    if record is None:
        raise ValueError(f"the model's YAML has no {YAML_KEY!r} record of an SCConv conversion")
    plan = Plan(tuple(Decision.from_dict(d) for d in record["replaced"]))
    try:
        apply_plan(model, plan, seed=None)
    except PlanMismatchError as err:
        raise ValueError(f"the converted model's layer {err.name!r} does not fit ({err.problem}); with "
                         f"nc={model.yaml.get('nc')} the head's class branch changes width. Convert the model "
                         "with this class count (num_classes), or with a placement that keeps the head dense "
                         "(the 'yolo' preset)") from err
    return as_scconv_model(model)


def _carry_over(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path) -> WeightsSource:
    """Load a YOLO ``.pt``'s weights into ``model`` (built from its YAML); tensors of other shapes (a
    head for another class count) keep their fresh initialisation and are recorded as re-initialised."""
    own = model.state_dict()
    fresh = sorted(k for k in own if k not in state_dict or state_dict[k].shape != own[k].shape)
    model.load_state_dict({k: (own[k] if k in fresh else state_dict[k]) for k in own}, strict=True)
    return WeightsSource(WeightsKind.FILE, name=path.name, sha256=file_sha256(path), reinitialized=tuple(fresh))


class _TrainsScConv:
    """``get_model`` for ultralytics' trainers: a YAML with an SCConv record builds the converted model."""

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        if not isinstance(cfg, Mapping) or YAML_KEY not in cfg:
            source = (weights.get("ema") or weights.get("model")) if isinstance(weights, Mapping) else weights
            if isinstance(source, nn.Module) and any(isinstance(m, ScConv) for m in source.modules()):
                raise ValueError("the model holds SCConv layers but its YAML does not record them, so training "
                                 "would build and train the dense model; write it with "
                                 "scconv_surgery.yolo.save_yolo_checkpoint (scconv convert --yolo-out), which "
                                 "records them")
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)  # type: ignore[misc]
        from ultralytics.utils import RANK

        with _logs_to_stderr():
            model = apply_record(super().get_model(cfg=cfg, weights=None, verbose=False))  # type: ignore[misc]
        if verbose and RANK == -1:
            model.info()  # ultralytics' summary line, of the converted model
        if weights:
            model.load(weights)
        return model


class ScConvDetectionTrainer(_TrainsScConv, detect.DetectionTrainer):
    """ultralytics' ``DetectionTrainer`` that builds the converted model, SCConv layers included.

    ultralytics' trainer builds a fresh model from ``model.yaml`` and copies the weights that
    fit; a converted model's YAML carries the record of :func:`record_conversion`, from which
    this trainer builds the converted architecture (:func:`apply_record`) before copying the
    weights, exactly as ultralytics does for its own models (``pretrained=False``: fresh
    weights; another class count: the head's class layers fresh). A YAML without the record
    trains as ultralytics' own trainer does; a model with SCConv layers but no record raises
    ValueError rather than train the dense model.

    Importing this module makes it (and the segmentation, pose, OBB and classification
    trainers below) the trainer ``YOLO(...).train()`` uses: it replaces
    ``ultralytics.models.yolo.detect.DetectionTrainer``, of which it is a subclass. Loading a
    converted YOLO ``.pt`` imports this module, so ``YOLO("model_yolo.pt").train(data=...)``
    trains the SCConv model. ``trainer=ScConvDetectionTrainer`` says so explicitly.
    """


class ScConvSegmentationTrainer(_TrainsScConv, segment.SegmentationTrainer):
    """ultralytics' ``SegmentationTrainer``, building the converted model (see :class:`ScConvDetectionTrainer`)."""


class ScConvPoseTrainer(_TrainsScConv, pose.PoseTrainer):
    """ultralytics' ``PoseTrainer``, building the converted model (see :class:`ScConvDetectionTrainer`)."""


class ScConvOBBTrainer(_TrainsScConv, obb.OBBTrainer):
    """ultralytics' ``OBBTrainer``, building the converted model (see :class:`ScConvDetectionTrainer`)."""


class ScConvClassificationTrainer(_TrainsScConv, classify.ClassificationTrainer):
    """ultralytics' ``ClassificationTrainer``, building the converted model (see :class:`ScConvDetectionTrainer`)."""


_TRAINERS = ((detect, "DetectionTrainer", ScConvDetectionTrainer),
             (segment, "SegmentationTrainer", ScConvSegmentationTrainer), (pose, "PoseTrainer", ScConvPoseTrainer),
             (obb, "OBBTrainer", ScConvOBBTrainer), (classify, "ClassificationTrainer", ScConvClassificationTrainer))


def _register_trainers() -> None:
    """Make this module's trainers those of ``YOLO``'s tasks (``YOLO.task_map`` reads them from
    ``ultralytics.models.yolo.<task>`` at train time); models without an SCConv record train
    unchanged."""
    for module, name, trainer in _TRAINERS:
        if not issubclass(getattr(module, name), trainer):
            setattr(module, name, trainer)


_register_trainers()


def check_yolo_output_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check that a YOLO ``.pt`` can be written at ``path``, before any work.

    Raises:
        OutputPathError: the suffix is not ``.pt``, or the path exists (without ``overwrite``),
            is a directory, its directory does not exist, or no file can be created there (the
            checks of :func:`~scconv_surgery.checkpoint.check_output_path`).
    """
    return check_output_path(path, overwrite=overwrite, suffixes=(".pt",), example="model_yolo.pt")


def save_yolo_checkpoint(path: str | os.PathLike, model: nn.Module, manifest: Mapping[str, Any], *,
                         overwrite: bool = True) -> Path:
    """Write ``model`` in ultralytics' own ``.pt`` format (pickled), atomically.

    ``YOLO(path)`` loads it and can predict, train (:class:`ScConvDetectionTrainer`), validate
    and export. The dict holds what ultralytics' trainer writes
    (``model``, ``train_args``, ``date``, ``version``, ...), the model in float32, and under
    ``scconv_surgery`` the conversion's manifest (what was replaced). Loading it needs
    scconv-surgery installed (the pickle names its classes).

    Args:
        path: a ``.pt`` file.
        model: a converted ultralytics model (detection, segmentation, pose, OBB, classification).
        manifest: the manifest's dict (:meth:`~scconv_surgery.manifest.Manifest.to_dict`).

    Raises:
        OutputPathError: see :func:`check_yolo_output_path`, or the write failed (nothing is
            left at ``path``).
    """
    path = check_yolo_output_path(path, overwrite=overwrite)
    if not isinstance(model, BaseModel) or not isinstance(getattr(model, "yaml", None), Mapping):
        raise TypeError(f"expected an ultralytics model built from a YAML, got {type(model).__name__}")
    task = task_of(model.yaml)
    saved = as_scconv_model(copy.deepcopy(model).float().eval())
    for p in saved.parameters():
        p.requires_grad_(False)
    saved.task = task
    record_conversion(saved, manifest["replaced"])
    ckpt = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "version": ultralytics.__version__,
            "license": "AGPL-3.0 License (https://ultralytics.com/license)", "epoch": -1, "best_fitness": None,
            "model": saved, "ema": None, "updates": None, "optimizer": None,
            "train_args": {"task": task, "model": path.name}, "train_metrics": None, "train_results": None,
            "scconv_surgery": dict(manifest)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except Exception as err:
        Path(tmp).unlink(missing_ok=True)
        raise OutputPathError(str(path), f"writing failed ({type(err).__name__}: {str(err).splitlines()[0]}); "
                              "nothing was written") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
