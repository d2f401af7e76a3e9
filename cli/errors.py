"""Exit codes, the one table of what they mean, and how library errors reach the user.

:data:`EXIT_CODES` is the single source: the commands' ``--help`` epilogs, docs/exit-codes.md
(written by ``scripts/gen_cli_docs.py``) and the tests read it. Library errors carry their
problem and the offending input as fields; :func:`hint` adds what to do in the CLI's own terms
(its flags), which the library never names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scconv_surgery.errors import (
    CalibrationError,
    CheckpointError,
    DeviceError,
    FactoryError,
    ModelForwardError,
    NothingSelectedError,
    OutputPathError,
    PretrainedWeightsError,
    ProfileMismatchError,
    ScconvError,
    SelectionError,
    ShapeMismatchError,
    UnknownModelError,
    UnmatchedRuleError,
    WeightsFileError,
)

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_NOTHING_SELECTED = 3
EXIT_VERIFY_FAILED = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a Unix tool whose reader went away
EXIT_TERMINATED = 143


@dataclass(frozen=True)
class ExitCode:
    """One exit code: its number, a few words for ``--help``, what it means in full (the docs),
    and the commands that use it."""

    code: int
    brief: str
    meaning: str
    commands: tuple[str, ...] = ("convert", "report", "verify", "calibrate", "models", "profile")


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EXIT_OK, "success",
             "success (verify: every check passed)"),
    ExitCode(EXIT_UNEXPECTED, "unexpected failure (--debug shows the traceback)",
             "unexpected failure (a bug or the environment: run again with --debug for the "
             "traceback), or a replacement whose output shape differs from its conv's (named; nothing saved)"),
    ExitCode(EXIT_BAD_INPUT, "bad input (named; nothing written)",
             "bad input, named: unknown model, unreadable or invalid file (checkpoint, weights, "
             "rules, images), bad option value, output path not writable, pretrained weights unavailable, "
             "calibration of random weights without --allow-random-weights, a weights file that is not the "
             "recorded one, a device that does not exist, a budget outside (0, 1] or out of reach, a profile of "
             "another model or device, sensitivity without trained weights, a model without data (built on the meta device) or quantised; "
             "nothing is written"),
    ExitCode(EXIT_NOTHING_SELECTED, "an --include matched no conv, or no conv was selected",
             "an --include pattern matched no conv, or the rules selected none (the plan "
             "is printed; with --json it is in the error document)", ("convert",)),
    ExitCode(EXIT_VERIFY_FAILED, "a check failed",
             "a check failed (including a checkpoint whose state_dict or plan does not fit "
             "its rebuilt model)", ("verify",)),
    ExitCode(EXIT_INTERRUPTED, "Ctrl-C",
             "interrupted (Ctrl-C); nothing is left at the output path. During the checkpoint's write, the "
             "write into a temporary file finishes, then the temporary file is removed (a file that was at "
             "the output path stays as it was)"),
    ExitCode(EXIT_BROKEN_PIPE, "stdout closed early",
             "the reader of stdout closed it early (`scconv models | head`): the rest of the result is "
             "dropped silently, as a Unix tool killed by SIGPIPE"),
    ExitCode(EXIT_TERMINATED, "SIGTERM",
             "terminated (SIGTERM); nothing is left at the output path, as for Ctrl-C (also during the write)"),
)


def exit_codes_epilog(command: str) -> str:
    """The ``Exit codes:`` paragraph of a command's help, from :data:`EXIT_CODES`."""
    codes = "; ".join(f"{e.code} {e.brief}" for e in EXIT_CODES if command in e.commands)
    return f"Exit codes: {codes}. Details: docs/exit-codes.md."


def exit_codes_markdown() -> str:
    """docs/exit-codes.md's table, from :data:`EXIT_CODES`."""
    rows = [f"| {e.code} | {e.meaning} | {', '.join(e.commands)} |" for e in EXIT_CODES]
    return "\n".join(["| code | meaning | commands |", "|---|---|---|", *rows]) + "\n"


class InvalidOptionError(ScconvError, ValueError):
    """An option value that cannot be used (the CLI's own checks, after Typer's parsing).

    Attributes:
        option: the option, e.g. ``"--input-size"``.
    """

    def __init__(self, option: str, problem: str):
        self.option = option
        super().__init__(f"{option}: {problem}", problem)


# Looked up along the exception's MRO, so the most specific class wins whatever the order.
ERROR_EXIT_CODES: dict[type[BaseException], int] = {
    UnmatchedRuleError: EXIT_NOTHING_SELECTED,
    NothingSelectedError: EXIT_NOTHING_SELECTED,
    ShapeMismatchError: EXIT_UNEXPECTED,
    ScconvError: EXIT_BAD_INPUT,
}

# Library argument -> the flag that sets it (the same on every command that has it).
ARGUMENT_FLAGS = {
    "weights": "--weights FILE",
    "allow_random_weights": "--allow-random-weights",
    "num_images": "the number of images (--calibrate-images / --images)",
    "steps": "the steps (--calibrate-steps / --steps)",
    "batch_size": "the batch size (--calibrate-batch-size / --batch-size)",
    "device": "the device (--calibrate-device / --device)",
    "target_macs": "--target-macs F",
    "target_params": "--target-params F",
    "target_latency": "--target-latency F",
    "margin": "--select-margin F",
}

_FIELDS = ("name", "device", "suggestions", "path", "patterns", "pattern", "index", "key", "reasons",
           "missing_keys", "unexpected_keys", "expected", "actual", "factory", "kwargs", "option", "input_shape",
           "tensors", "problem", "layer", "hyperparameters")


def exit_code_for(err: BaseException) -> int:
    """The exit code of an exception: the first class of its MRO in :data:`ERROR_EXIT_CODES`."""
    for cls in type(err).__mro__:
        if cls in ERROR_EXIT_CODES:
            return ERROR_EXIT_CODES[cls]
    return EXIT_UNEXPECTED


def hint(err: BaseException) -> str | None:
    """What to do about a library error, in the CLI's terms (its flags), or None."""
    if isinstance(err, PretrainedWeightsError):
        if err.name.startswith("ultralytics:"):
            return "instead of --pretrained, name your YOLO .pt as 'ultralytics:FILE.pt' and pass --trust-pickle"
        return "pass a local weights file with --weights FILE instead of --pretrained"
    if isinstance(err, UnmatchedRuleError):
        text = "--dry-run lists the conv names; --allow-unmatched goes on without the rule"
        if any("," in p for p in err.patterns):
            text += "; give each pattern its own --include"
        return text
    if isinstance(err, UnknownModelError):
        if err.name.startswith("ultralytics:"):
            return None
        return "for your own model, pass --factory package.module:function"
    if isinstance(err, FactoryError) and isinstance(err.__cause__, ModuleNotFoundError):
        module = err.factory.partition(":")[0]
        top = module.split(".")[0]
        return (f"{module!r} is imported from the working directory or PYTHONPATH: run the command from the "
                f"directory that holds {top}/ or {top}.py (where 'scconv convert' ran), or set "
                f"PYTHONPATH=/path/to/that/directory")
    if isinstance(err, ModelForwardError):
        return "check --input-size (its C must match the model's input channels)"
    if isinstance(err, OutputPathError) and err.exists:
        return "pass --force to overwrite it"
    if isinstance(err, CheckpointError) and err.found == "a YOLO checkpoint":
        return f"convert it with 'scconv convert ultralytics:{err.path} --trust-pickle --out FILE'"
    if isinstance(err, CheckpointError) and err.found == "a converted YOLO checkpoint":
        return None
    if isinstance(err, CheckpointError) and err.found is not None:
        return "create a checkpoint with 'scconv convert MODEL --out FILE'"
    if isinstance(err, WeightsFileError) and err.untrusted_pickle:
        return "pass --trust-pickle if you trust the file (reading it runs code from it)"
    if isinstance(err, WeightsFileError) and err.entries is not None:
        return "pass --weights-key with one of the entries listed, or leave it out to pick as timm does"
    if isinstance(err, WeightsFileError) and err.classifier_only:
        return "pass --num-classes N to re-initialise the classifier"
    if isinstance(err, NothingSelectedError) and err.by_selection:
        return ("the measured selection chose no conv: SCConv is not faster on this device by --select-margin; "
                "try a smaller margin, a --target-* budget, or another --device")
    if isinstance(err, NothingSelectedError):
        return ("each conv's reason is in the plan above (--summary shortens it); 'scconv models --eligible' lists "
                "the models with convs to replace")
    if isinstance(err, DeviceError):
        return "pass --device cpu, or cuda:N for a CUDA device this machine has"
    if isinstance(err, SelectionError) and err.name == "weights":
        return "start from --pretrained or --weights FILE to score sensitivity (--data)"
    if isinstance(err, SelectionError) and err.name in ARGUMENT_FLAGS:
        return f"see {ARGUMENT_FLAGS[err.name]}"
    if isinstance(err, ProfileMismatchError) and err.hyperparameters:
        return ("measure the SCConvs this conversion builds: profile again with the same --variant, --stride-policy "
                "and --rules ('scconv profile MODEL --variant V --out FILE'), or drop --profile so that convert "
                "measures them itself")
    if isinstance(err, ProfileMismatchError):
        return "profile this model on this device again ('scconv profile MODEL --device DEV --out FILE')"
    if isinstance(err, CalibrationError) and err.name in ARGUMENT_FLAGS:
        if err.name == "allow_random_weights":
            return "start from --pretrained or --weights FILE, or pass --allow-random-weights"
        return f"see {ARGUMENT_FLAGS[err.name]}"
    return None


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and anything JSON cannot hold exactly (NaN, objects) as text."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def error_document(err: BaseException, code: int) -> dict[str, Any]:
    """The JSON form of an error (written to stderr under ``--json``).

    Errors that carry a plan (exit 3: nothing selected, an include matched nothing) include it
    whole under ``plan``: every conv with its decision and reason, as ``--dry-run --json`` has.
    """
    fields = {f: _jsonable(getattr(err, f)) for f in _FIELDS if hasattr(err, f)}
    plan = getattr(err, "plan", None)
    if plan is not None:
        fields["plan"] = plan.to_dict()
    advice = hint(err)
    if advice:
        fields["hint"] = advice
    return {"error": {"type": type(err).__name__, "message": str(err), "exit_code": code, **fields}}
