"""ultralytics YOLO models: build by YAML name, read a YOLO ``.pt``, fuse, and write one.

Imported only when a model asks for ultralytics (``ultralytics:yolov8n.yaml``), which is the
optional extra ``yolo`` (``pip install 'scconv-surgery[yolo]'``; ultralytics is AGPL-3.0).
Nothing here downloads: YAMLs come from the installed ultralytics or a local path, and YOLO
``.pt`` files are local.

- :func:`build_detection_model`: a model YAML -> :class:`ScConvDetectionModel`, an
  ultralytics ``DetectionModel`` whose ``fuse()`` also folds the BatchNorm after each SCConv
  (:mod:`scconv_surgery.fuse`); same state_dict keys as ``DetectionModel``.
- :func:`read_yolo_checkpoint`: a YOLO ``.pt`` (a pickle: reading it runs code, so only with
  ``trust_pickle=True``) -> its YAML and state_dict.
- :func:`save_yolo_checkpoint`: a converted model in ultralytics' own ``.pt`` format, which
  ``YOLO(path)`` loads, predicts, trains, validates and exports. Its YAML records the
  conversion (:func:`record_conversion`); ultralytics' trainer rebuilds a model from its YAML,
  so importing this module makes :class:`ScConvDetectionTrainer`, which reads that record,
  the trainer of ``YOLO``'s detect task (models without the record train as before).
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
from pathlib import Path
from typing import Any

import torch
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics' first import: no online checks

import ultralytics  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.modules import Conv  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, yaml_model_load  # noqa: E402

from .checkpoint import check_output_path  # noqa: E402
from .errors import ModelArgumentError, OutputPathError, UnknownModelError, WeightsFileError  # noqa: E402


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

__all__ = ["ScConvDetectionModel", "ScConvDetectionTrainer", "find_model_yaml", "build_detection_model",
           "build_converted", "record_conversion", "YAML_KEY", "read_yolo_checkpoint", "fuse_scconv_convs", "save_yolo_checkpoint", "check_yolo_output_path",
           "YOLO_INPUT_SIZE"]

YOLO_INPUT_SIZE = (3, 640, 640)  # ultralytics' default imgsz
_KWARGS = ("nc", "num_classes", "ch", "cfg")  # what build_detection_model takes


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


class ScConvDetectionModel(DetectionModel):
    """ultralytics' ``DetectionModel`` whose :meth:`fuse` handles SCConv.

    ultralytics' ``fuse`` folds each ``Conv``'s BatchNorm into ``conv.weight``, which an
    SCConv does not have; this one first folds those into a per-channel affine
    (:func:`fuse_scconv_convs`), then lets ultralytics fuse the rest. Everything else,
    the state_dict keys included, is ``DetectionModel``'s.
    """

    def fuse(self, *args: Any, **kwargs: Any) -> ScConvDetectionModel:
        was_training = self.training
        self.eval()  # folding reads the running statistics
        fuse_scconv_convs(self)
        self.train(was_training)
        return super().fuse(*args, **kwargs)


def _model_yamls() -> list[Path]:
    return sorted((Path(ultralytics.__file__).parent / "cfg" / "models").rglob("*.yaml"))


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


def build_detection_model(name: str, kwargs: Mapping[str, Any]) -> ScConvDetectionModel:
    """A YOLO detection model from a model YAML, with fresh weights, in eval mode.

    Args:
        name: a YAML ultralytics ships (``yolov8n.yaml``, ``yolo11n.yaml``, a scale in the
            name) or a path to one; ignored when ``kwargs["cfg"]`` holds the YAML's contents.
        kwargs: ``nc`` (or ``num_classes``): the class count; ``ch``: input channels;
            ``cfg``: the YAML's contents as a dict (recorded from a YOLO ``.pt``).

    Raises:
        UnknownModelError: the YAML does not exist (see :func:`find_model_yaml`), or is not a
            detection model.
        ModelArgumentError: another keyword argument.
    """
    nc = _nc(f"ultralytics:{name}", kwargs)
    cfg = copy.deepcopy(dict(kwargs["cfg"])) if "cfg" in kwargs else yaml_model_load(find_model_yaml(name))
    head = str((cfg.get("head") or [[None, None, ""]])[-1][2])
    if head not in ("Detect", "v10Detect"):
        raise UnknownModelError(f"ultralytics:{name}", problem=f"its head is {head!r}; only detection models "
                                "(a Detect head) are supported")
    if nc is not None:
        cfg["nc"] = nc  # what DetectionModel(nc=) does, without its log line
    with _logs_to_stderr():
        return ScConvDetectionModel(cfg, ch=int(kwargs.get("ch", 3)), verbose=False).eval()


def read_yolo_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The YAML and the weights of a YOLO ``.pt`` (ultralytics' training or release checkpoint).

    A YOLO ``.pt`` pickles the model: reading it runs code from the file, so it is read only
    with ``trust_pickle=True``, for a file you trust.

    Returns:
        ``(yaml, state_dict)``: the model's YAML as a dict (``model.yaml``) and its float32
        weights (the EMA's when the file has one, as ultralytics reads it).

    Raises:
        WeightsFileError: ``trust_pickle`` is not set; the file is missing or unreadable; it is
            not a YOLO detection checkpoint; or its model already holds SCConv layers.
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
    if not isinstance(model, DetectionModel):
        what = type(model).__name__ if model is not None else f"a {type(ckpt).__name__} without a 'model'"
        raise WeightsFileError(str(path), f"is not a YOLO detection checkpoint (it holds {what}); expected a .pt "
                               "written by ultralytics (YOLO.train / YOLO.save) for a detection model")
    if any(isinstance(m, ScConv) for m in model.modules()):
        raise WeightsFileError(str(path), "already holds SCConv layers; load it with YOLO(path), or convert the "
                               "original model")
    return copy.deepcopy(dict(model.yaml)), {k: v.float() for k, v in model.state_dict().items()}


def rebuild_yolo_base(source: Any, *, trust_pickle: bool = False) -> tuple[ScConvDetectionModel, Any]:
    """:func:`~scconv_surgery.models.rebuild_base` for ``library == "ultralytics"``.

    A ``.yaml`` name builds fresh weights (or loads a state_dict file); a ``.pt`` name is read
    (:func:`read_yolo_checkpoint`), its YAML recorded in the kwargs as ``cfg`` and its weights
    carried over (recorded by name and sha256). With another class count (``nc``), the head's
    class layers keep their fresh initialisation and are listed as re-initialised.

    Raises:
        UnknownModelError, ModelArgumentError: see :func:`build_detection_model`.
        WeightsFileError: see :func:`read_yolo_checkpoint`; or pretrained weights are asked for.
    """
    from dataclasses import replace

    from .models import ModelSource, _seeded
    from .weights import load_weights_file

    weights = source.weights
    kwargs = dict(source.kwargs)
    if weights.kind is WeightsKind.PRETRAINED:
        raise WeightsFileError(source.display_name, "ultralytics' pretrained weights are downloads; start from a "
                               "local YOLO .pt instead (trust_pickle=True)")
    path = source.yolo_checkpoint
    if path is not None:
        yaml, state_dict = read_yolo_checkpoint(path, trust_pickle=trust_pickle)
        kwargs = {"cfg": yaml, **kwargs}
        with _seeded(weights.seed):
            model = build_detection_model(source.name, kwargs)
        own = model.state_dict()
        fresh = sorted(k for k in own if k not in state_dict or state_dict[k].shape != own[k].shape)
        model.load_state_dict({k: (own[k] if k in fresh else state_dict[k]) for k in own}, strict=True)
        model.names = yaml.get("names") or model.names
        record = WeightsSource(WeightsKind.FILE, seed=weights.seed, name=path.name, sha256=file_sha256(path),
                               reinitialized=tuple(fresh))
        return model.eval(), ModelSource("ultralytics", path.name, kwargs, record)
    with _seeded(weights.seed):
        model = build_detection_model(source.name, kwargs)
    if weights.kind is WeightsKind.FILE:
        if weights.path is None:
            raise WeightsFileError(str(weights.name), "the model was built from this weights file, which is needed "
                                   "again to rebuild it; pass its path")
        try:
            weights = replace(load_weights_file(model, weights.path), seed=weights.seed)
        except WeightsFileError as err:
            if "pickled" not in err.problem:
                raise
            raise WeightsFileError(err.path, f"{err.problem}. A YOLO checkpoint (.pt) is read as the model itself: name "
                                   f"it 'ultralytics:{weights.path}' and allow reading the pickle (trust_pickle=True)",
                                   untrusted_pickle=True) from err
    return model.eval(), ModelSource("ultralytics", source.name, kwargs, weights)


YAML_KEY = "scconv_surgery"  # in a converted model's YAML: the replaced convs, so a trainer can rebuild it


def record_conversion(model: DetectionModel, replaced: Any) -> None:
    """Record in ``model.yaml`` (under :data:`YAML_KEY`) which convs were replaced, and how.

    ultralytics' trainer builds a new model from ``model.yaml`` and copies the weights that fit;
    with this record, :class:`ScConvDetectionTrainer` (which ``YOLO(path).train()`` uses once
    this module is imported) builds the converted architecture instead.

    Args:
        model: a converted ``DetectionModel``; its ``yaml`` dict is replaced by a copy with the record.
        replaced: the replaced convs' decisions (:class:`~scconv_surgery.plan.Decision` or their
            dicts, as in a manifest's ``replaced``).
    """
    decisions = [d if isinstance(d, Mapping) else d.to_dict() for d in replaced]
    model.yaml = {**model.yaml, YAML_KEY: {"replaced": copy.deepcopy(decisions)}}


def build_converted(cfg: Mapping[str, Any], *, nc: int | None = None, ch: int = 3,
                    verbose: bool = False) -> ScConvDetectionModel:
    """The converted model a YAML with a :func:`record_conversion` record describes, fresh weights.

    Builds ultralytics' model from the YAML (with ``nc`` classes, ``ch`` input channels), then
    replays the recorded replacements by exact name (new layers drawn from the global RNG, as
    ultralytics initialises its own layers).

    Raises:
        ValueError: the YAML has no record, or a recorded conv does not fit the model built (a
            Detect head conv whose width depends on the class count: convert with this ``nc``, or
            keep the head dense, as the ``yolo`` preset does).
    """
    from .errors import PlanMismatchError
    from .plan import Decision, Plan
    from .apply import apply_plan

    if YAML_KEY not in cfg:
        raise ValueError(f"the model YAML has no {YAML_KEY!r} record of an SCConv conversion")
    plan = Plan(tuple(Decision.from_dict(d) for d in cfg[YAML_KEY]["replaced"]))
    with _logs_to_stderr():
        model = ScConvDetectionModel(copy.deepcopy(dict(cfg)), nc=nc, ch=ch, verbose=False)
    try:
        apply_plan(model, plan, seed=None)
    except PlanMismatchError as err:
        raise ValueError(f"the converted model's layer {err.name!r} does not fit ({err.problem}); with nc={nc} (the YAML's: {cfg.get('nc')}) the "
                         "Detect head's class branch changes width. Convert the model with this class count "
                         "(num_classes), or with a placement that keeps the head dense (the 'yolo' preset)") from err
    if verbose:
        model.info()  # ultralytics' summary line, of the converted model
    return model


class ScConvDetectionTrainer(DetectionTrainer):
    """ultralytics' ``DetectionTrainer`` that builds the converted model, SCConv layers included.

    ultralytics' trainer builds a fresh model from ``model.yaml`` and copies the weights that
    fit; a converted model's YAML carries the record of :func:`record_conversion`, from which
    this trainer builds the converted architecture (:func:`build_converted`) before copying the
    weights, exactly as ultralytics does for its own models (``pretrained=False``: fresh
    weights; another class count: the head's class layers fresh). A YAML without the record
    trains as ultralytics' own trainer does.

    Importing this module makes it the detection trainer ``YOLO(...).train()`` uses (it replaces
    ``ultralytics.models.yolo.detect.DetectionTrainer``, of which it is a subclass): loading a
    converted YOLO ``.pt`` imports this module, so ``YOLO("model_yolo.pt").train(data=...)``
    trains the SCConv model. ``trainer=ScConvDetectionTrainer`` says so explicitly.
    """

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        if not isinstance(cfg, Mapping) or YAML_KEY not in cfg:
            source = (weights.get("ema") or weights.get("model")) if isinstance(weights, Mapping) else weights
            if isinstance(source, nn.Module) and any(isinstance(m, ScConv) for m in source.modules()):
                raise ValueError("the model holds SCConv layers but its YAML does not record them, so training "
                                 "would build and train the dense model; write it with "
                                 "scconv_surgery.yolo.save_yolo_checkpoint (scconv convert --yolo-out), which "
                                 "records them")
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        from ultralytics.utils import RANK

        model = self.set_model_names_for_load(build_converted(cfg, nc=self.data["nc"], ch=self.data["channels"],
                                                              verbose=verbose and RANK == -1))
        if weights:
            model.load(weights)
        return model


def _register_trainer() -> None:
    """Make :class:`ScConvDetectionTrainer` the trainer of ``YOLO``'s detect task (read at train time
    from ``ultralytics.models.yolo.detect``); models without an SCConv record train unchanged."""
    from ultralytics.models.yolo import detect

    if not issubclass(detect.DetectionTrainer, ScConvDetectionTrainer):
        detect.DetectionTrainer = ScConvDetectionTrainer


_register_trainer()


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

    ``YOLO(path)`` loads it and can predict, validate, export and (with
    :class:`ScConvDetectionTrainer`) train. The dict holds what ultralytics' trainer writes
    (``model``, ``train_args``, ``date``, ``version``, ...), the model in float32, and under
    ``scconv_surgery`` the conversion's manifest (what was replaced). Loading it needs
    scconv-surgery installed (the pickle names its classes).

    Args:
        path: a ``.pt`` file.
        model: a converted ultralytics ``DetectionModel``.
        manifest: the manifest's dict (:meth:`~scconv_surgery.manifest.Manifest.to_dict`).

    Raises:
        OutputPathError: see :func:`check_yolo_output_path`, or the write failed (nothing is
            left at ``path``).
    """
    path = check_yolo_output_path(path, overwrite=overwrite)
    if not isinstance(model, DetectionModel):
        raise TypeError(f"expected an ultralytics DetectionModel, got {type(model).__name__}")
    saved = copy.deepcopy(model).float().eval()
    for p in saved.parameters():
        p.requires_grad_(False)
    if type(saved) is DetectionModel:  # its pickle then names this module, which loading imports (the trainer)
        saved.__class__ = ScConvDetectionModel
    saved.task = "detect"
    record_conversion(saved, manifest["replaced"])
    ckpt = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "version": ultralytics.__version__,
            "license": "AGPL-3.0 License (https://ultralytics.com/license)", "epoch": -1, "best_fitness": None,
            "model": saved, "ema": None, "updates": None, "optimizer": None,
            "train_args": {"task": "detect", "model": path.name}, "train_metrics": None, "train_results": None,
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
