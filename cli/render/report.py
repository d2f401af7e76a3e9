"""``scconv report`` (and the counts part of ``scconv convert``): parameters and MACs before and
after, as Rich tables, GitHub Markdown or CSV."""
from __future__ import annotations

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from scconv_surgery.counting import CountReport, percent_change

from ..layout import Column, records
from .common import human


def counts_table(report: CountReport) -> Table:
    """Totals before and after, the delta and percent, with units and the counter named."""
    table = Table(title=f"Totals at {counted_size(report)}", title_justify="left")
    for column in ("", "before", "after", "delta", "delta %"):
        table.add_column(column, justify="right" if column else "left")
    for label, x, y in _total_rows(report):
        table.add_row(label, human(x), human(y), human(y - x), _percent(x, y, 2))
    return table


def _percent(before: int, after: int, digits: int) -> str:
    """The change in percent; "n/a" from 0 to something (undefined: not "+0.00%")."""
    if before == 0 and after != 0:
        return "n/a"
    return f"{percent_change(before, after):+.{digits}f}%"


def _total_rows(report: CountReport) -> list[tuple[str, int, int]]:
    b, a = report.before, report.after
    rows = [("params", b.params, a.params), ("MACs", b.macs, a.macs)]
    if a.elementwise_ops or b.elementwise_ops:
        rows.append(("elementwise ops", b.elementwise_ops, a.elementwise_ops))
    return rows


LAYER_COLUMNS = (Column("name", key=True), *(Column(h, "right") for h in (
    "params before", "params after", "MACs before", "MACs after", "MACs delta %")))


def layers_records(console: Console, report: CountReport) -> RenderableType:
    """One record per replaced conv: params and MACs before -> after at the report's input size."""
    rows = []
    for layer in report.layers:
        rows.append([escape(layer.name), f"{layer.params_before:,}", f"{layer.params_after:,}",
                     human(layer.macs_before), human(layer.macs_after),
                     _percent(layer.macs_before, layer.macs_after, 1)])
    return records(console, "Replaced layers", LAYER_COLUMNS, rows)


def counted_size(report: CountReport) -> str:
    """``input 1x3x224x224``, or what the model resized it to before its first convolution."""
    size = "input 1x" + "x".join(map(str, report.input_size))
    if report.resized_input:
        return f"{size}, which the model resizes to 1x{'x'.join(map(str, report.resized_input))} (the size counted)"
    return size


def counter_note(report: CountReport) -> str:
    """Which counter produced the numbers, and what its MACs are."""
    if report.after.counter == "fvcore":
        return "Counted by fvcore: MACs, one fused multiply-add each (fvcore's \"flop\"); M = 1e6, G = 1e9."
    return (f"Counted by {report.after.counter} (FlopCounterMode, 2 FLOPs per MAC, halved to MACs), with fvcore's "
            "operators and formulas; matrix products are named by their kernel (addmm, mm, bmm) where fvcore says "
            "linear or matmul. M = 1e6, G = 1e9.")


def render_counts(console: Console, report: CountReport, *, summary: bool = False) -> None:
    """Per-layer rows, totals, the MACs note, the counter's note and the uncounted operators
    (``summary``: no per-layer rows, the uncounted operators on one line)."""
    if report.layers and not summary:
        console.print(layers_records(console, report))
    console.print(counts_table(report))
    console.print(counter_note(report), highlight=False)
    if report.after.elementwise_ops:
        console.print("elementwise ops: one per element of sigmoid, mul, add, where, softmax, ... (output) and "
                      "mean, sum, avg_pool2d (input); not included in MACs.", highlight=False)
    notes = {counts.note for counts in (report.before, report.after) if counts.note}
    for note in sorted(notes):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if summary and report.uncounted_added:
        console.print("uncounted operators the conversion added (calls): " + ", ".join(
            f"{escape(op)} {n}" for op, n in sorted(report.uncounted_added.items())), highlight=False)
    elif not summary and (report.before.uncounted_ops or report.after.uncounted_ops):
        console.print(uncounted_records(console, report))


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def counts_markdown(report: CountReport, title: str) -> str:
    """The report as GitHub-flavoured Markdown: totals, then one row per replaced layer."""
    parts = [f"### {title}", "", f"At {counted_size(report)}. {counter_note(report)}", ""]
    totals = []
    for label, x, y in _total_rows(report):
        totals.append([label, human(x), human(y), human(y - x), _percent(x, y, 2)])
    parts += [_markdown_table(["", "before", "after", "delta", "delta %"], totals), ""]
    if report.layers:
        rows = [[f"`{l.name}`", f"{l.params_before:,}", f"{l.params_after:,}", human(l.macs_before),
                 human(l.macs_after)] for l in report.layers]
        parts += [_markdown_table(["layer", "params before", "params after", "MACs before", "MACs after"], rows), ""]
    added = report.uncounted_added
    if added:
        parts += ["Operators not counted in MACs that the conversion added (calls): "
                  + ", ".join(f"`{op}` {n}" for op, n in sorted(added.items())) + ".", ""]
    return "\n".join(parts)


def counts_csv(report: CountReport) -> str:
    """The report as CSV: a ``total`` row, then a ``layer`` row per replaced conv (raw counts)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["scope", "name", "params_before", "params_after", "macs_before", "macs_after", "input_size"])
    size = "x".join(map(str, report.input_size))
    writer.writerow(["total", "", report.before.params, report.after.params, report.before.macs, report.after.macs,
                     size])
    for l in report.layers:
        writer.writerow(["layer", l.name, l.params_before, l.params_after, l.macs_before, l.macs_after, size])
    return buffer.getvalue()


UNCOUNTED_COLUMNS = (Column("operator", key=True), Column("before", "right"), Column("after", "right"))


def uncounted_records(console: Console, report: CountReport) -> RenderableType:
    """Operators the counter does not count, before and after (what the surgery added)."""
    ops = sorted(set(report.before.uncounted_ops) | set(report.after.uncounted_ops))
    rows = [[escape(op), str(report.before.uncounted_ops.get(op, 0)), str(report.after.uncounted_ops.get(op, 0))]
            for op in ops]
    return records(console, "Uncounted operators (calls)", UNCOUNTED_COLUMNS, rows)
