"""Rich renderers: pure functions from library values to tables (no decisions here)."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from scconv_surgery.calibration_run import CalibrationRun
from scconv_surgery.counting import CountReport, percent_change
from scconv_surgery.layers import ScConvConfig
from scconv_surgery.pipeline import ConversionResult
from scconv_surgery.plan import ConvSpec, Decision, Plan

from .layout import Column, records


def human(n: float, unit: str = "") -> str:
    """``25557032 -> '25.56 M'``, ``4111512576 -> '4.112 G'`` (decimal prefixes)."""
    for scale, prefix, digits in ((1e9, "G", 3), (1e6, "M", 2), (1e3, "K", 1)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _pair(values: tuple[int, int] | list[int]) -> str:
    a, b = values
    return str(a) if a == b else f"{a}x{b}"


PLAN_COLUMNS = (Column("name", key=True), Column("class"), Column("conv"), Column("rule", "right"),
                Column("decision"), Column("reason / hyperparameters", wrap=True), Column("params", "right"))


def plan_records(console: Console, plan: Plan, *, title: str | None = None) -> RenderableType:
    """One record per conv: name (and aliases), class, conv shape, deciding rule, decision,
    reason, params before -> after. ``title`` defaults to "N of M convs replaced"."""
    title = title or f"{len(plan.replaced)} of {len(plan.decisions)} convs replaced"
    return records(console, title, PLAN_COLUMNS, [_decision_row(d) for d in plan.decisions])


def conv_summary(spec: ConvSpec) -> str:
    """``64->128 3x3 s2``, with ``d2`` / ``g32`` only where dilation / groups are not 1."""
    text = f"{spec.in_channels}->{spec.out_channels} {spec.kernel_size[0]}x{spec.kernel_size[1]} s{_pair(spec.stride)}"
    if spec.dilation != (1, 1):
        text += f" d{_pair(spec.dilation)}"
    if spec.groups != 1:
        text += f" g{spec.groups}"
    return text


def _decision_row(d: Decision) -> list[str]:
    name = d.name + "".join(f"\n  = {alias}" for alias in d.aliases)
    decision = "[green]replace[/]" if d.is_replaced else "skip"
    reason = escape(d.detail) if not d.is_replaced else _config_summary(d)
    params = (f"{d.params_before:,} -> {d.params_after:,}" if d.is_replaced else f"{d.params_before:,}")
    rule = "-" if d.rule_index is None else str(d.rule_index)
    return [escape(name), d.class_name, conv_summary(d.spec), rule, decision, reason, params]


def _config_summary(d: Decision) -> str:
    """What differs from the paper's defaults in a replacement's hyperparameters."""
    if d.config is None:
        return ""
    default = ScConvConfig().to_dict()
    why = {a.key: a for a in d.adapted}
    changed = [f"{k}={v}" + (f" [yellow](adapted from {why[k].configured}: {escape(why[k].why)})[/]" if k in why else "")
               for k, v in d.config.to_dict().items() if v != default[k] or k in why]
    return ", ".join(changed)


RULE_COLUMNS = (Column("#", "right"), Column("action"), Column("pattern", key=True),
                Column("filters / hyperparameters", wrap=True), Column("matched", "right"))


def rules_records(console: Console, plan: Plan) -> RenderableType:
    """Each rule as given, and how many convs it matched."""
    rows = []
    for index, (rule, matched) in enumerate(zip(plan.rules, plan.rule_matches)):
        extra = {k: v for k, v in rule.to_dict().items() if k not in ("include", "exclude")}
        rows.append([str(index), rule.action.value, escape(rule.pattern),
                     escape(", ".join(f"{k}={v}" for k, v in extra.items())),
                     f"[red]{matched}[/]" if matched == 0 else str(matched)])
    return records(console, "Rules (in order; exclude wins, later includes override)", RULE_COLUMNS, rows)


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


def render_conversion(console: Console, result: ConversionResult, *, summary: bool = False) -> None:
    """The human report of ``scconv convert`` (``summary``: no row per conv, layer or rule)."""
    source = result.source
    console.print(f"[bold]{escape(source.display_name)}[/]  weights: {source.weights.kind.value}"
                  f"  variant: {_variants(result.plan)}  seed: {result.seed}", highlight=False)
    if summary:
        console.print(f"{len(result.plan.replaced)} of {len(result.plan.decisions)} convs replaced", highlight=False)
    else:
        console.print(plan_records(console, result.plan))
        console.print("conv: in->out channels, kernel, s=stride, d=dilation, g=groups (shown when not 1); "
                      "rule: the rule that decided (- = none)", style="dim", highlight=False)
    if result.plan.rules and not summary:
        console.print(rules_records(console, result.plan))
    skips = result.plan.skip_summary()
    if skips:
        console.print("skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(skips.items())),
                      highlight=False)
    render_counts(console, result.report, summary=summary)
    stripped = result.source.weights.stripped_prefixes
    if stripped:
        console.print(f"weights file {escape(str(result.source.weights.name))}: key prefixes stripped: "
                      f"{escape(', '.join(stripped))}", highlight=False)
    reinitialized = result.source.weights.reinitialized
    if reinitialized:
        console.print(f"[yellow]classifier re-initialised[/] (its shape differs from the weights file): "
                      f"{', '.join(reinitialized)}", highlight=False)
    if result.stale_batchnorms:
        state = "reset" if result.reset_bn_stats else "kept (pass --reset-bn-stats to reset them)"
        console.print(f"BatchNorm statistics after a replaced conv, {state}: {len(result.stale_batchnorms)} "
                      f"layers ({', '.join(result.stale_batchnorms[:4])}{', ...' if len(result.stale_batchnorms) > 4 else ''})",
                      highlight=False)
    if result.calibration is not None:
        render_calibration(console, result.calibration)
    if result.dry_run:
        target = f"would write {result.output}: " if result.output else "with --out FILE.pt it would write "
        tensors = len(result.model.state_dict())
        console.print(f"[bold]dry run:[/] {target}{tensors} state_dict tensors and a manifest of "
                      f"{len(result.plan.replaced)} replaced convs; nothing written.", highlight=False)
    else:
        render_written(console, result.output)


def _variants(plan: Plan) -> str:
    return ", ".join(sorted({d.config.variant.value for d in plan.replaced if d.config})) or "-"


def calibration_table(run: CalibrationRun) -> Table:
    """One row per calibrated layer: its relative output error before and after the fit."""
    result = run.result
    where = f"{result.held_out} held-out" if result.held_out else f"all {result.num_images} (none held out)"
    table = Table(title=f"Calibration on {result.num_images} images from {escape(str(run.data))} "
                  f"({result.strategy.value}, {result.steps} steps per layer, batch {result.batch_size}, "
                  f"{result.device}, {result.seconds:.0f} s); relative error on {where} images",
                  title_justify="left")
    for column in ("layer", "error before", "error after", "after / before", "final loss", "seconds"):
        table.add_column(column, justify="left" if column == "layer" else "right", no_wrap=True)
    for layer in result.layers:
        ratio = (f"{layer.error_after / layer.error_before:.3f}" if layer.error_before and layer.error_after is not None
                 else "-")
        table.add_row(escape(layer.name), _error(layer.error_before), _error(layer.error_after), ratio,
                      "-" if layer.loss is None else f"{layer.loss:.4g}", f"{layer.seconds:.1f}")
    return table


def _error(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def render_calibration(console: Console, run: CalibrationRun) -> None:
    """The calibration table, the BatchNorm update, and the layers that could not be fitted (the
    run's warnings are the command's: ``ConversionResult.warnings``, ``CalibrationRun.warnings``)."""
    result = run.result
    if run.available < run.requested:
        console.print(f"[yellow]note:[/] {escape(str(run.data))} holds {run.available} images, fewer than the "
                      f"{run.requested} asked for: all were used", highlight=False)
    console.print(calibration_table(run))
    console.print("relative error = sum((SCConv(x) - conv(x))^2) / sum(conv(x)^2) on the replaced conv's "
                  "input x", style="dim", highlight=False)
    if result.batchnorms:
        console.print(f"BatchNorm statistics re-estimated on the {result.num_images} images: "
                      f"{len(result.batchnorms)} layers", highlight=False)
    if result.uncalled:
        console.print(f"[yellow]not calibrated[/] (the forward never calls them): {escape(', '.join(result.uncalled))}",
                      highlight=False)


def render_written(console: Console, path: Path) -> None:
    """The line that names a checkpoint just written and how to load it."""
    console.print(f"[bold]wrote[/] {path}  (load with scconv_surgery.load({str(path)!r}))", highlight=False)
