"""The exception hierarchy of scconv-surgery.

Every error the library raises on purpose derives from :class:`ScconvError` and carries the
offending input as fields, so the CLI can build its message, JSON and exit code from them.
Where a caller would naturally expect a built-in type, that type is a second base (as PEFT's
``NoMatchingPeftModuleError(PeftError, ValueError)`` does).
"""
from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ScconvError",
    "UnknownModelError",
    "PretrainedWeightsError",
    "WeightsFileError",
    "NothingSelectedError",
    "UnmatchedRuleError",
    "InvalidRuleError",
    "RuleFieldError",
    "OutputPathError",
    "CheckpointError",
    "ShapeMismatchError",
    "PlanMismatchError",
    "RulesFileError",
    "ModelArgumentError",
    "FactoryError",
    "ModelForwardError",
    "ImageDataError",
    "CalibrationError",
    "DeviceError",
    "SelectionError",
    "ProfileMismatchError",
    "MissingExtraError",
    "ModelDataError",
]


class ScconvError(Exception):
    """Base class of every error raised by scconv-surgery on purpose.

    Attributes:
        problem: what is wrong, in words, without the offending input's name (the message,
            ``str(err)``, puts the two together). Messages name Python arguments, never the
            CLI's flags: the CLI adds those (``scconv_surgery.cli.errors``).
    """

    problem: str = ""

    def __init__(self, message: str, problem: str | None = None):
        self.problem = message if problem is None else problem
        super().__init__(message)


class UnknownModelError(ScconvError, LookupError):
    """A model name that neither timm nor torchvision knows (or a model file that does not exist,
    is not a valid model YAML, or is of a kind not supported; ``what`` heads the message).

    Attributes:
        name: the name as given.
        suggestions: close known names (``difflib``), best first.
    """

    def __init__(self, name: str, suggestions: Sequence[str] = (), problem: str = "neither timm nor torchvision knows it",
                 *, advice: str | None = None, what: str = "unknown model"):
        self.name = name
        self.suggestions = tuple(dict.fromkeys(suggestions))  # unique, order kept
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        if advice is None:
            advice = ("Name a model YAML that ultralytics ships (e.g. 'ultralytics:yolov8n.yaml') or a path to one."
                      if name.startswith("ultralytics:") else
                      "Use 'timm:NAME' or 'torchvision:NAME' to pick a library, or 'factory:package.module:function' "
                      "for your own model.")
        super().__init__(f"{what} {name!r}: {problem}.{hint} {advice}".rstrip(), problem)


class PretrainedWeightsError(ScconvError, OSError):
    """Pretrained weights could not be found in the local cache nor downloaded.

    Attributes:
        name: the model name.
    """

    def __init__(self, name: str, cause: str, *, problem: str | None = None):
        self.name = name
        problem = problem or (f"{cause.rstrip().rstrip('.')}. They are not in the local cache and could not be "
                              "downloaded (offline?); start from a local weights file instead")
        super().__init__(f"could not load pretrained weights for {name!r}: {problem}", problem)


class WeightsFileError(ScconvError, ValueError):
    """A ``--weights`` file that is missing, unreadable, or does not fit the model.

    Attributes:
        path: the file as given.
        missing_keys: model keys the file lacks (empty when the file itself is the problem).
        unexpected_keys: file keys the model lacks.
        classifier_only: only the classifier's shapes differ (another ``num_classes``).
        untrusted_pickle: the file is a pickle (a YOLO ``.pt``) that is read only on request
            (``trust_pickle=True``).
        entries: when the entry asked for is missing, the entries of the training checkpoint
            that hold a state_dict (possibly none); else None.
    """

    def __init__(self, path: str, problem: str, missing_keys: Sequence[str] = (),
                 unexpected_keys: Sequence[str] = (), *, classifier_only: bool = False,
                 untrusted_pickle: bool = False, entries: Sequence[str] | None = None):
        self.path = path
        self.missing_keys = tuple(missing_keys)
        self.unexpected_keys = tuple(unexpected_keys)
        self.classifier_only = classifier_only
        self.untrusted_pickle = untrusted_pickle
        self.entries = tuple(entries) if entries is not None else None
        super().__init__(f"weights file {path!r}: {problem}", problem)


class NothingSelectedError(ScconvError, ValueError):
    """The rules selected no conv to replace.

    Attributes:
        reasons: skip reason -> number of convs skipped for it.
        plan: the plan, whose decisions give each conv's reason.
        by_selection: a measured selection (:mod:`scconv_surgery.selection`) chose none of the
            convs the rules allowed.
    """

    def __init__(self, reasons: dict[str, int], plan: object = None, *, by_selection: bool = False):
        self.reasons = dict(reasons)
        self.plan = plan
        self.by_selection = by_selection
        summary = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items(), key=lambda x: -x[1]))
        super().__init__(f"no conv was selected for replacement (skipped: {summary or 'no convs found'})")


class UnmatchedRuleError(ScconvError, ValueError):
    """An include rule matched no conv of the model.

    Attributes:
        patterns: the include patterns that matched nothing.
        suggestions: patterns that would match (e.g. ``*.conv2`` for ``conv2``).
        plan: the plan, whose decisions list every conv's name.
    """

    def __init__(self, patterns: Sequence[str], suggestions: Sequence[str] = (), plan: object = None):
        self.patterns = tuple(patterns)
        self.suggestions = tuple(suggestions)
        self.plan = plan
        hint = f" Did you mean {', '.join(map(repr, self.suggestions))}?" if self.suggestions else ""
        if any("," in p for p in self.patterns):
            hint += " A comma is part of a pattern, not a separator: give each pattern a rule of its own."
        super().__init__(
            f"include pattern(s) matched no conv: {', '.join(map(repr, self.patterns))}.{hint} "
            "Patterns match the full dotted module name (glob, or 're:' for a regex), never a suffix; "
            "a dry run lists the conv names (or allow unmatched rules to go on)."
        )


class InvalidRuleError(ScconvError, ValueError):
    """A rule that cannot be used (for example a bad regex).

    Attributes:
        pattern: the rule's pattern.
        index: the rule's position (0-based) among the rules given, or None for a lone rule.
        key: the offending field, where one is to blame (``"pattern"``, a filter, a
            hyperparameter, ``"strict_paper"``), else None.
    """

    def __init__(self, pattern: str, index: int | None, problem: str, *, key: str | None = None):
        self.pattern = pattern
        self.index = index
        self.key = key
        where = f"rule {index} ({pattern!r})" if index is not None else f"rule {pattern!r}"
        super().__init__(f"{where}: {problem}", problem)


class RuleFieldError(InvalidRuleError):
    """A :class:`~scconv_surgery.rules.Rule` field that is invalid on its own or contradicts
    another; raised by ``Rule`` itself, which does not know its position among other rules (the
    rules-file reader and the CLI add the file and the index).

    Attributes:
        pattern: the rule's pattern.
        index: None.
        key: the offending field.
    """

    def __init__(self, pattern: str, key: str, problem: str):
        super().__init__(pattern, None, problem, key=key)


class OutputPathError(ScconvError, OSError):
    """An output path that cannot be written.

    Attributes:
        path: the path as given.
        exists: the only problem is that a file is there (overwriting it would do).
    """

    def __init__(self, path: str, problem: str, *, exists: bool = False):
        self.path = path
        self.exists = exists
        super().__init__(f"output {path!r}: {problem}", problem)


class CheckpointError(ScconvError, ValueError):
    """A file that is not a loadable scconv checkpoint, or one that does not fit its model.

    Attributes:
        path: the checkpoint path.
        missing_keys: keys the rebuilt model expects but the file lacks.
        unexpected_keys: keys in the file that the rebuilt model lacks.
        found: what the file is instead, when it is not an scconv checkpoint at all.
    """

    def __init__(self, path: str, problem: str, missing_keys: Sequence[str] = (),
                 unexpected_keys: Sequence[str] = (), *, found: str | None = None):
        self.path = path
        self.missing_keys = tuple(missing_keys)
        self.unexpected_keys = tuple(unexpected_keys)
        self.found = found
        super().__init__(f"checkpoint {path!r}: {problem}", problem)


class ShapeMismatchError(ScconvError, RuntimeError):
    """A replacement whose output shape differs from the conv it replaced.

    Attributes:
        name: the module name.
        expected: the conv's output shape.
        actual: the replacement's output shape.
    """

    def __init__(self, name: str, expected: tuple[int, ...], actual: tuple[int, ...]):
        self.name = name
        self.expected = tuple(expected)
        self.actual = tuple(actual)
        super().__init__(f"replacement for {name!r} returns shape {self.actual}, the conv returned {self.expected}")


class PlanMismatchError(ScconvError, ValueError):
    """A plan that names a module the model does not hold as the planned conv.

    Attributes:
        name: the planned module name.
    """

    def __init__(self, name: str, problem: str):
        self.name = name
        super().__init__(f"{name!r}: {problem}", problem)


class RulesFileError(ScconvError, ValueError):
    """A rules file that cannot be used.

    Attributes:
        path: the file.
        index: the rule's position (0-based) in the file's ``rules`` list, or None for the file.
        key: the offending key, or None.
    """

    def __init__(self, path: str, index: int | None, key: str | None, problem: str):
        self.path = path
        self.index = index
        self.key = key
        where = "".join([f", rule {index}" if index is not None else "", f", key {key!r}" if key is not None else ""])
        super().__init__(f"rules file {path!r}{where}: {problem}", problem)


class ModelArgumentError(ScconvError, TypeError):
    """The model's constructor rejected the keyword arguments given, or one cannot be recorded.

    Attributes:
        name: the model name.
        kwargs: the keyword arguments passed.
        key: the offending argument, where one is to blame (a value that JSON cannot carry).
    """

    def __init__(self, name: str, kwargs: dict, problem: str, key: str | None = None):
        self.name = name
        self.kwargs = dict(kwargs)
        self.key = key
        if key is None:
            super().__init__(f"model {name!r} rejected the constructor arguments {self.kwargs}: {problem}", problem)
        else:
            super().__init__(f"model {name!r}, constructor argument {key!r}: {problem}", problem)


class FactoryError(ScconvError, LookupError):
    """A ``--factory package.module:function`` that cannot be imported or does not build a model.

    Attributes:
        factory: the factory as given.
    """

    def __init__(self, factory: str, problem: str):
        self.factory = factory
        super().__init__(f"factory {factory!r}: {problem}", problem)


class ModelForwardError(ScconvError, RuntimeError):
    """The model's forward failed on a dummy image batch: wrong input size, or not an image model.

    Attributes:
        name: the model.
        input_shape: the shape of the dummy input.
    """

    def __init__(self, name: str, input_shape: tuple[int, ...], problem: str):
        self.name = name
        self.input_shape = tuple(input_shape)
        super().__init__(
            f"the forward of {name!r} failed on a dummy input of shape {self.input_shape}: {problem}. "
            "scconv needs a model that takes one image tensor; check the input size (C must match the model).",
            problem)


class ImageDataError(ScconvError, ValueError):
    """A folder of calibration images that cannot be used: missing, empty, or holding an unreadable file.

    Attributes:
        path: the folder, or the offending file.
    """

    def __init__(self, path: str, problem: str):
        self.path = path
        super().__init__(f"images {path!r}: {problem}", problem)


class CalibrationError(ScconvError, ValueError):
    """Calibration that cannot run: the models do not correspond, or an option is out of range.

    Attributes:
        name: the layer (or option) at fault, or None for the call as a whole.
    """

    def __init__(self, problem: str, name: str | None = None):
        self.name = name
        super().__init__(f"calibration: {f'{name!r}: ' if name else ''}{problem}", problem)


class DeviceError(ScconvError, ValueError):
    """A device that cannot be used: not a device name, or absent from this machine.

    Attributes:
        device: the device as given (``"cuda:1"``).
    """

    def __init__(self, device: str, problem: str):
        self.device = device
        super().__init__(f"device {device!r}: {problem}", problem)


class SelectionError(ScconvError, ValueError):
    """A measured selection that cannot be made: a budget outside (0, 1] or out of reach, sensitivity
    asked of random weights, an unknown criterion.

    Attributes:
        name: the Python argument at fault (``"target_macs"``, ``"weights"``), or None.
    """

    def __init__(self, problem: str, name: str | None = None):
        self.name = name
        super().__init__(f"selection: {f'{name}: ' if name else ''}{problem}", problem)


class ProfileMismatchError(ScconvError, ValueError):
    """A saved profile that does not fit the conversion: another model, device, or its convs differ
    (other convs, or the same convs measured with other SCConv hyperparameters).

    Attributes:
        path: the profile file, or ``"<profile>"`` for one given as a value.
        layer: the first conv that does not fit, when the problem is one conv's (else None).
        hyperparameters: the SCConv hyperparameters that differ for ``layer`` (``("variant",)``, ...), all
            of them for a profile that does not record them; empty when the problem is not one of
            hyperparameters.
    """

    def __init__(self, path: str, problem: str, *, layer: str | None = None, hyperparameters: tuple[str, ...] = ()):
        self.path = path
        self.layer = layer
        self.hyperparameters = tuple(hyperparameters)
        super().__init__(f"profile {path!r}: {problem}", problem)


class MissingExtraError(ScconvError, ImportError):
    """An optional dependency that a request needs is not installed.

    Attributes:
        name: the optional extra that installs it, e.g. ``"yolo"``.
        package: the missing package, e.g. ``"ultralytics"``.
        install: the command that installs the extra.
    """

    def __init__(self, name: str, package: str, needed_for: str):
        self.name = name
        self.package = package
        self.install = f"pip install 'scconv-surgery[{name}]'"
        problem = f"{needed_for} needs the package {package!r}, which is not installed; install it with: {self.install}"
        super().__init__(problem, problem)


class ModelDataError(ScconvError, ValueError):
    """A model whose tensors cannot be converted, counted or saved as they are: tensors without
    data (built on the ``meta`` device), or quantised tensors.

    Attributes:
        name: the model.
        tensors: the offending parameters and buffers (the first few).
    """

    def __init__(self, name: str, problem: str, tensors: Sequence[str] = ()):
        self.name = name
        self.tensors = tuple(tensors)
        super().__init__(f"model {name!r}: {problem}", problem)
