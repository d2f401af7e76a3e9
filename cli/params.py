"""Options shared by several commands, and their parsers."""
from __future__ import annotations

from typing import Annotated

import typer

from scconv_surgery import InvalidOptionError

InputSizeOpt = Annotated[str | None, typer.Option(
    "--input-size", help="Input size CxHxW to count at, e.g. 3x256x256 (or HxW, or H; at most 64x4096x4096). Default: the model's "
    "pretrained_cfg input_size (timm), the default weights' crop size (torchvision), else 3x224x224.",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Write one JSON document to stdout (progress, warnings and errors go to stderr).")]
CountElementwiseOpt = Annotated[bool, typer.Option(
    "--count-elementwise", help="Also count the elementwise operators SCConv adds (sigmoid, mul, add, where, "
    "softmax, mean, ...): one op per element, reported apart from MACs.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")]


MAX_SIDE = 4096  # larger inputs are almost surely a typo (and would not fit in memory)
MAX_CHANNELS = 64


def parse_input_size(value: str | None) -> tuple[int, int, int] | None:
    """``3x224x224`` -> (3, 224, 224); ``224x224`` and ``224`` imply 3 channels.

    Raises:
        InvalidOptionError: not a size of positive integers, or beyond 64 channels / 4096 pixels.
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
        parts = [3, *parts]
    if len(parts) != 3 or min(parts) < 1:
        raise InvalidOptionError("--input-size", f"{value!r} is not a size; use CxHxW such as 3x224x224 (or HxW, or H)")
    if parts[0] > MAX_CHANNELS or max(parts[1:]) > MAX_SIDE:
        raise InvalidOptionError("--input-size", f"{value!r} is out of range (at most {MAX_CHANNELS} channels and "
                                 f"{MAX_SIDE} pixels a side)")
    return tuple(parts)  # type: ignore[return-value]
