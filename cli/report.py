"""``scconv report CHECKPOINT``: re-count a saved checkpoint against its base model."""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from scconv_surgery.pipeline import recount_checkpoint

from .errors import InvalidOptionError
from .output import Output
from .params import (
    CheckpointInputSizeOpt,
    CountElementwiseOpt,
    DebugOpt,
    HelpOpt,
    JsonOpt,
    SummaryOpt,
    choices,
    parse_input_size,
)
from .render.report import counts_csv, counts_markdown, render_counts


class ReportFormat(str, Enum):
    """Output formats of ``scconv report``."""

    TABLE = "table"  # Rich tables on stderr
    JSON = "json"  # one JSON document on stdout
    MARKDOWN = "markdown"  # GitHub-flavoured Markdown on stdout
    CSV = "csv"  # CSV on stdout


def report(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint written by 'scconv convert'.",
                                               dir_okay=False, show_default=False)],
    *,
    input_size: CheckpointInputSizeOpt = None,
    output_format: Annotated[str, typer.Option(
        "--format", **choices(ReportFormat, "format"), help="table (Rich), json, markdown or csv; on stdout.")] = ReportFormat.TABLE.value,
    json_output: JsonOpt = False,
    count_elementwise: CountElementwiseOpt = False,
    summary: SummaryOpt = False,
    debug: DebugOpt = False,
    help_: HelpOpt = False,
) -> None:
    """Re-count a checkpoint's parameters and MACs against its base model, at any input size.

    The default input size is the one recorded in the checkpoint.
    """
    fmt = ReportFormat.JSON if json_output else output_format
    output = Output(json=fmt is ReportFormat.JSON, debug=debug)
    with output.errors():
        with output.progress() as step:
            if json_output and output_format not in (ReportFormat.TABLE, ReportFormat.JSON):
                raise InvalidOptionError("--json", f"conflicts with --format {output_format.value}; give one")
            size = parse_input_size(input_size)
            result = recount_checkpoint(checkpoint, input_size=size, count_elementwise=count_elementwise,
                                        on_step=step)
        source = result.source
        if fmt is ReportFormat.JSON:
            output.emit_json(result.to_dict())
        elif fmt is ReportFormat.MARKDOWN:
            sys.stdout.write(counts_markdown(result.report, f"{source.display_name} -> SCConv ({checkpoint.name})"))
        elif fmt is ReportFormat.CSV:
            sys.stdout.write(counts_csv(result.report))
        else:
            output.result.print(f"[bold]{escape(str(checkpoint))}[/]: {escape(source.display_name)}, "
                                f"{len(result.plan.replaced)} convs replaced", highlight=False)
            render_counts(output.result, result.report, summary=summary)
