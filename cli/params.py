"""Options shared by several commands, and their parsers."""
from __future__ import annotations

import difflib
from enum import Enum
from typing import Annotated, Any

import typer

from .errors import InvalidOptionError

FLAG = ""  # metavar of a flag: it takes no value, so the help shows none (Typer would show <bool>)


def _show_help(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(ctx.get_help())
        raise typer.Exit()


# Every command (and the root) declares `help_: HelpOpt = False`: the app turns off Typer's own help
# option, whose row reads "--help <bool>". tests/cli/test_help.py checks that every command has it.
HelpOpt = Annotated[bool, typer.Option(
    "--help", "-h", help="Show this message and exit.", is_eager=True, expose_value=False, callback=_show_help,
    metavar=FLAG)]

def choices(kind: type[Enum], noun: str, metavar: str | None = None) -> dict[str, Any]:
    """``typer.Option`` settings of an option that takes one of ``kind``'s values: the help shows
    them (``[paper|seed]``) and a wrong value is refused with them in plain words, the closest
    first: "'papr' is not a variant; choose paper or seed (did you mean 'paper'?)" (Typer's own
    enum check words it "Value error, 'papr' is not one of"). The function gets the member.
    ``metavar``: a word instead of the list, where the help text names the values.
    Declare the parameter as ``str`` (its default a value), typed by the callback."""
    values = [member.value for member in kind]

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, kind):
            return value
        for member in kind:
            if value == member.value:
                return member
        close = difflib.get_close_matches(str(value), values, n=1, cutoff=0.5)
        listed = ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]
        raise typer.BadParameter(f"{value!r} is not a {noun}; choose {listed}"
                                 + (f" (did you mean {close[0]!r}?)" if close else ""))
    return {"metavar": metavar or f"[{'|'.join(values)}]", "callback": convert}


_SIZE_HELP = "Input size CxHxW, e.g. 3x256x256 (or HxW, or H; at most 64x4096x4096)."
InputSizeOpt = Annotated[str | None, typer.Option(
    "--input-size", metavar="CxHxW", help=f"{_SIZE_HELP} Default: the model's pretrained_cfg input_size (timm), "
    "the default weights' crop size (torchvision), else 3x224x224.", show_default=False)]
CheckpointInputSizeOpt = Annotated[str | None, typer.Option(
    "--input-size", metavar="CxHxW", help=f"{_SIZE_HELP} Default: the size recorded in the checkpoint.",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option(
    "--json", metavar=FLAG, help="Write one JSON document to stdout (progress, warnings and errors go to stderr).")]
CountElementwiseOpt = Annotated[bool, typer.Option(
    "--count-elementwise", metavar=FLAG, help="Also count the elementwise operators SCConv adds (sigmoid, mul, add, "
    "where, softmax, mean, ...): one op per element, reported apart from MACs.")]
DebugOpt = Annotated[bool, typer.Option("--debug", metavar=FLAG, help="Show tracebacks of unexpected errors.")]
SummaryOpt = Annotated[bool, typer.Option(
    "--summary", metavar=FLAG, help="Human report: only the totals and the counts per reason, not one row per "
    "conv or layer.")]
StrictPaperOpt = Annotated[bool, typer.Option(
    "--strict-paper", metavar=FLAG, help="Keep SCConv's hyperparameters exactly as configured: a conv whose channels "
    "they do not fit is skipped ('channels', with the change that would fit) instead of getting a larger "
    "squeeze_ratio or a smaller gwc_groups. A rule's strict_paper key overrides it for the convs it includes.")]

ForceOpt = Annotated[bool, typer.Option("--force", metavar=FLAG, help="Overwrite an existing --out file.")]

# calibration: `convert --calibrate-*` and `calibrate` take the same settings
CALIBRATE_IMAGES_HELP = "How many images to calibrate on (a seeded random choice; all if the folder has fewer)."
CALIBRATE_STEPS_HELP = "Optimizer steps per replaced layer (Adam, cosine schedule)."
CALIBRATE_BATCH_HELP = "Images per step and per forward pass."
CALIBRATE_DEVICE_HELP = "Where to compute: cpu, cuda, cuda:1, ... (default: cpu)."
CALIBRATE_STRATEGY_HELP = (
    "'sequential': each layer learns from the input the converted network feeds it, earlier layers already "
    "calibrated (most accurate). 'independent': from the original network's activations (fewer forward passes: "
    "faster on large models).")
TrustPickleOpt = Annotated[bool, typer.Option(
    "--trust-pickle", metavar=FLAG, help="Allow reading a YOLO checkpoint (an 'ultralytics:FILE.pt' model, or such a "
    "file as --weights): it is a pickle, and reading it RUNS CODE from the file. Only for files you trust.")]

AllowRandomWeightsOpt = Annotated[bool, typer.Option(
    "--allow-random-weights", metavar=FLAG, help="Calibrate even when the base model has random weights (the SCConvs "
    "then imitate random convs: for tests and timing only).")]


MAX_SEED = 2**63 - 1  # torch.manual_seed takes at most this
MAX_SIDE = 4096  # larger inputs are almost surely a typo (and would not fit in memory)
MAX_CHANNELS = 64


def parse_input_size(value: str | None) -> tuple[int, int, int] | None:
    """``3x224x224`` -> (3, 224, 224); ``224x224`` and ``224`` imply 3 channels.

    Raises:
        InvalidOptionError: not a size of positive integers, beyond 64 channels / 4096 pixels,
            channels last (``224x224x3``), or an HxW whose H looks like a channel count and W like a
            side (``3x224``: at most 4 high and wider than 4; give ``3x224x224``), or the reverse
            (``224x3``).
    """
    if value is None:
        return None
    try:
        parts = [int(p) for p in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    elif len(parts) == 2:
        if parts[0] <= 4 < parts[1]:  # 3x224: a channel count and a side, not HxW = 3x224
            raise InvalidOptionError("--input-size", f"{value!r} reads as HxW, an image {parts[0]} pixels high and "
                                     f"{parts[1]} wide; for {parts[0]} channels give CxHxW: "
                                     f"{parts[0]}x{parts[1]}x{parts[1]} (or HxW such as {parts[1]}x{parts[1]})")
        if parts[1] <= 4 < parts[0]:  # 224x3: a side and a channel count, channels last
            raise InvalidOptionError("--input-size", f"{value!r} reads as HxW, an image {parts[0]} pixels high and "
                                     f"{parts[1]} wide; sizes are CxHxW, channels first: "
                                     f"{parts[1]}x{parts[0]}x{parts[0]}")
        parts = [3, *parts]
    if len(parts) != 3 or min(parts) < 1:
        raise InvalidOptionError("--input-size", f"{value!r} is not a size; use CxHxW such as 3x224x224 (or HxW, or H)")
    if parts[2] <= 4 < min(parts[:2]):  # 224x224x3: channels last, as images are stored
        raise InvalidOptionError("--input-size", f"{value!r} puts the channels last; sizes are CxHxW, channels first: "
                                 f"{parts[2]}x{parts[0]}x{parts[1]}")
    if parts[0] > MAX_CHANNELS or max(parts[1:]) > MAX_SIDE:
        raise InvalidOptionError("--input-size", f"{value!r} is out of range (at most {MAX_CHANNELS} channels and "
                                 f"{MAX_SIDE} pixels a side)")
    return tuple(parts)  # type: ignore[return-value]


def check_seed(seed: int) -> None:
    """Raises:
        InvalidOptionError: ``seed`` is above :data:`MAX_SEED` (Typer has checked it is >= 0).
    """
    if seed > MAX_SEED:
        raise InvalidOptionError("--seed", f"{seed} is above the largest seed, 2**63 - 1")


def check_device_option(option: str, value: str | None) -> None:
    """Check a device option before any work: it names a device this machine has.

    Raises:
        InvalidOptionError: not a device, or absent here (e.g. ``cuda`` without CUDA), naming ``option``.
    """
    if value is None:
        return
    from scconv_surgery.calibration import check_device
    from scconv_surgery.errors import CalibrationError

    try:
        check_device(value)
    except CalibrationError as err:
        raise InvalidOptionError(option, err.problem) from err
