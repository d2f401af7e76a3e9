"""Layout that never crops a name: a Rich table where it fits, a list of records where not.

Any command that prints rows keyed by a name (module names, model names, rule patterns) builds
them with :func:`records`: at the console's width the rows become a table when every name fits
on its line, else a list with each record's name as its heading; names and reasons wrap, never
get cut to "..." (module names of wrapped and detection models exceed 65 characters, and two
layers that differ only at the end must not print alike).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "records"]

MIN_WRAP_WIDTH = 30  # a wrapping column (reasons) gets at least this much in a table
MEASURE_WIDTH = 100_000  # measure tables as if the console were unbounded


@dataclass(frozen=True)
class Column:
    """One column of :func:`records`.

    Attributes:
        header: the column's title (a field label in the list layout).
        justify: alignment in the table.
        key: names the record (a module name): never cropped; the heading in the list layout.
        wrap: long text (a reason): wraps in the table; its own indented line in the list layout.
    """

    header: str
    justify: Literal["left", "right"] = "left"
    key: bool = False
    wrap: bool = False


def _table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column.header, justify=column.justify, no_wrap=not column.wrap, overflow="fold",
                         min_width=MIN_WRAP_WIDTH if column.wrap else None)
    for row in rows:
        table.add_row(*row)
    return table


def _indented(console: Console, chunks: Sequence[str], indent: int = 4) -> Text:
    """Markup ``chunks`` packed into lines of the console's width less ``indent``, every line
    indented; a chunk moves to the next line whole unless it is longer than a line (then it
    wraps), so that a field's label stays with its value."""
    width = max(console.width - indent, 20)
    lines: list[Text] = []
    for chunk in map(Text.from_markup, chunks):
        if lines and lines[-1].cell_len + 2 + chunk.cell_len <= width:
            lines[-1].append("  ").append_text(chunk)
        else:
            lines += list(chunk.wrap(console, width, overflow="fold")) if chunk.cell_len > width else [chunk]
    for line in lines:
        line.rstrip()  # in place
    return Text("\n").join(Text(" " * indent) + line for line in lines)


def _record_list(console: Console, title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> Group:
    parts: list[RenderableType] = [Text(title, style="italic")]
    for row in rows:
        cells = list(zip(columns, row))
        heading = "  ".join(cell for column, cell in cells if column.key)
        fields = [f"{column.header}: {cell}" for column, cell in cells if not column.key and not column.wrap and cell]
        parts.append(Text.from_markup(heading, style="bold", overflow="fold"))
        if fields:
            parts.append(_indented(console, fields))
        parts += [_indented(console, [cell]) for column, cell in cells if column.wrap and cell]
    return Group(*parts)


def records(console: Console, title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> RenderableType:
    """``rows`` (Rich markup, one cell per column) as a table if it fits ``console``'s width with
    every non-wrapping cell on its line, else as a list of records."""
    table = _table(title, columns, rows)
    needed = Measurement.get(console, console.options.update_width(MEASURE_WIDTH), table).minimum
    return table if needed <= console.width else _record_list(console, title, columns, rows)
