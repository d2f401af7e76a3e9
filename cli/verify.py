"""``scconv verify CHECKPOINT``: load it, run it, and optionally compare with the source weights."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scconv_surgery.verify import verify_checkpoint

from .errors import EXIT_VERIFY_FAILED
from .output import Output
from .params import CheckpointInputSizeOpt, DebugOpt, HelpOpt, JsonOpt, parse_input_size
from .render.verify import render_verification


def verify(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint written by 'scconv convert'.",
                                               dir_okay=False, show_default=False)],
    *,
    weights: Annotated[Path | None, typer.Option(
        metavar="FILE", help="The weights file the conversion started from: every untouched tensor must equal it.",
        dir_okay=False, show_default=False)] = None,
    input_size: CheckpointInputSizeOpt = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
    help_: HelpOpt = False,
) -> None:
    """Load CHECKPOINT, run a forward at its recorded input size, check the output shape and finiteness, and with --weights that untouched layers equal the source weights.
    """
    output = Output(json=json_output, debug=debug)
    with output.errors():
        with output.progress() as step:
            size = parse_input_size(input_size)
            result = verify_checkpoint(checkpoint, weights=weights, input_size=size, on_step=step)
        if json_output:
            output.emit_json(result.to_dict())
        else:
            render_verification(output.result, result)
    if not result.passed:
        raise typer.Exit(EXIT_VERIFY_FAILED)
