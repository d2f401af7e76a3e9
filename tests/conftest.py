"""Shared fixtures: toy models named after their edge case, and small real models."""
from __future__ import annotations

import collections
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch
from torch import nn

_YOLO_CONFIG_DIR: str | None = None


def pytest_configure(config):
    """ultralytics (the yolo tests): no online checks or downloads, settings in a scratch folder;
    SIGINT handled as usual (the Ctrl-C tests)."""
    global _YOLO_CONFIG_DIR
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if "YOLO_CONFIG_DIR" not in os.environ:
        _YOLO_CONFIG_DIR = tempfile.mkdtemp(prefix="yolo-config-")
        os.environ["YOLO_CONFIG_DIR"] = _YOLO_CONFIG_DIR
    # A suite started in the background by a non-interactive shell (`(cmd &)`) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler, here or in the subprocesses
    # the tests start. The Ctrl-C tests need the usual disposition: a handler here, which exec
    # turns back into the default in each child.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config):
    if _YOLO_CONFIG_DIR:
        shutil.rmtree(_YOLO_CONFIG_DIR, ignore_errors=True)


class TinyConvNet(nn.Module):
    """Two eligible 3x3 convs (one strided, one widening) around a 1x1 and a stem."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)  # in_channels=3: too few for SCConv
        self.block1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.block2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.proj = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.block1(x))
        x = torch.relu(self.proj(self.block2(x)))
        return self.head(x.mean((2, 3)))


class AliasedConvNet(nn.Module):
    """One conv object reachable under two names (``conv`` and ``again``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.again = self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.again(self.conv(x))


class OwnForwardConv(nn.Conv2d):
    """An nn.Conv2d subclass with a forward of its own (doubles the output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class SubclassConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = OwnForwardConv(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


LogitsAndFeatures = collections.namedtuple("LogitsAndFeatures", ["logits", "features"])


class NestedOutputNet(nn.Module):
    """Two eligible 3x3 convs (stem 3->16 excluded: too few channels); the output nests three
    tensors in a list, tuple (with a None), namedtuple or dict, as detection, segmentation,
    ``features_only`` and auxiliary-logit models do."""

    def __init__(self, kind: str = "list"):
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)
        self.aux = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor):
        features = self.body(torch.relu(self.stem(x)))
        pooled = features.mean((2, 3))
        logits, aux = self.head(pooled), self.aux(pooled)
        if self.kind == "list":
            return [logits, [features, aux]]
        if self.kind == "tuple":
            return logits, (features, None, aux)
        if self.kind == "namedtuple":
            return LogitsAndFeatures(logits, {"map": features, "aux": aux})
        return collections.OrderedDict(out=logits, features=features, aux=aux)


class LongNameNet(nn.Module):
    """Three convs, two of them eligible, under 73-character names that differ only at the end
    (as in wrapped or detection models)."""

    STAGE = "a_long_wrapper_name_from_a_detection_framework_stage"

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        stage = nn.Module()
        stage.conv_left = nn.Conv2d(16, 16, 3, padding=1)
        stage.conv_right = nn.Conv2d(16, 16, 3, padding=1)
        self.backbone_body = nn.Module()
        self.backbone_body.add_module(self.STAGE, stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stage = getattr(self.backbone_body, self.STAGE)
        return stage.conv_right(stage.conv_left(self.stem(x)))


class TridentBlock(nn.Module):
    """TridentNet-style sharing: runs ``conv``, and ``F.conv2d`` with its weight at dilation 2."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + nn.functional.conv2d(x, self.conv.weight, self.conv.bias, padding=2, dilation=2)


class TridentBlockNet(nn.Module):
    """A :class:`TridentBlock` (``block.conv`` shared) between a stem and an ordinary conv ``other``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = TridentBlock()
        self.other = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(self.block(self.stem(x)))


class TiedConvNet(nn.Module):
    """``tied.weight`` is ``conv.weight`` (the same Parameter in two modules); ``other`` is not shared."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.tied = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.tied.weight = self.conv.weight
        self.other = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(self.conv(x) + self.tied(x))


class ThresholdDetector(nn.Module):
    """A detector in miniature: one detection per position whose score passes a threshold, as a list
    of per-image dicts (torchvision's layout); keypoints built from ``len()``, as keypoint R-CNN does."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        scores = self.head(self.body(torch.relu(self.stem(x)))).flatten(1)
        out = []
        for image_scores in scores:
            keep = image_scores > 0
            kept = image_scores[keep]
            positions = keep.nonzero()[:, 0].float()
            boxes = torch.stack([positions, positions, positions + 1, positions + 1], dim=1)
            out.append({"boxes": boxes, "scores": kept, "keypoints": torch.zeros(len(kept), 17, 3),
                        "image_score": image_scores.mean().reshape(1)})
        return out


@pytest.fixture
def toy_factory(monkeypatch) -> str:
    """``factory:`` prefix of a module whose builders return toy models: ``nested(kind)``
    (:class:`NestedOutputNet`), ``long_names()`` (:class:`LongNameNet`), ``tiny()``
    (:class:`TinyConvNet`), ``resizing()`` (:class:`ResizingNet`), ``trident()``
    (:class:`TridentBlockNet`), ``detector()`` (:class:`ThresholdDetector`), ``aliased()``
    (:class:`AliasedConvNet`), ``tiny_meta()`` (on the meta device), ``tiny_dtype(dtype)``."""
    module = types.ModuleType("scconv_test_toys")
    module.nested = lambda kind="list": NestedOutputNet(kind)
    module.long_names = LongNameNet
    module.tiny = TinyConvNet
    module.resizing = lambda: ResizingNet()
    module.trident = TridentBlockNet
    module.detector = ThresholdDetector
    module.aliased = AliasedConvNet
    module.tiny_meta = lambda: TinyConvNet().to("meta")
    module.tiny_dtype = lambda dtype="float64": TinyConvNet().to(getattr(torch, dtype))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return "factory:scconv_test_toys"


@pytest.fixture
def tiny_net() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet().eval()


@pytest.fixture(scope="session")
def resnet50_bottleneck_conv2() -> set[str]:
    """The 3x3 conv of each of resnet50's 16 bottleneck blocks (stage depths 3, 4, 6, 3)."""
    return {f"layer{stage}.{block}.conv2" for stage, depth in zip((1, 2, 3, 4), (3, 4, 6, 3))
            for block in range(depth)}


class ResizingNet(nn.Module):
    """Resizes any input to 3x32x32 before its first conv, as detectors' transforms do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 16, 3, padding=1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="nearest")
        return self.block(self.body(x))


ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> types.ModuleType:
    """A script of the repository (``examples/finetune.py``, ``benchmarks/zoo.py``, ...) as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_digits(train: int, test: int) -> tuple[torch.Tensor, ...]:
    """Seeded stand-ins for scikit-learn's digits (not a test dependency), in the examples' form:
    ``(train images, train labels, test images, test labels)``, images ``(N, 1, 32, 32)``."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(train, 1, 32, 32, generator=g), torch.randint(0, 10, (train,), generator=g),
            torch.randn(test, 1, 32, 32, generator=g), torch.randint(0, 10, (test,), generator=g))


class BatchFoldingNet(nn.Module):
    """Calls its conv on twice the input's batch (each image and its mirror), as multi-view models do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, x.flip(-1)])).mean(0, keepdim=True)

