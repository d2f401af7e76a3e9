"""``scconv convert``: the plan (one record per conv), the rules, then the counts, the norms and
what was (or would be) written."""
from __future__ import annotations

from rich.console import Console, RenderableType
from rich.markup import escape

from scconv_surgery.layers import ScConvConfig
from scconv_surgery.pipeline import ConversionResult
from scconv_surgery.plan import ConvSpec, Decision, Plan

from ..layout import Column, records
from .calibrate import render_calibration
from .common import render_written
from .report import render_counts


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
    weights = result.source.weights
    if weights.entry or weights.remapping:
        read = [f"entry {weights.entry!r}" if weights.entry else "", f"keys remapped: {weights.remapping}"
                if weights.remapping else ""]
        console.print(f"weights file {escape(str(weights.name))}: {escape('; '.join(r for r in read if r))}",
                      highlight=False)
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
        yolo = f", and {result.yolo_output} in ultralytics' format" if result.yolo_output else ""
        console.print(f"[bold]dry run:[/] {target}{tensors} state_dict tensors and a manifest of "
                      f"{len(result.plan.replaced)} replaced convs{yolo}; nothing written.", highlight=False)
    else:
        render_written(console, result.output)
        if result.yolo_output:
            console.print(f"[bold]wrote[/] {result.yolo_output}  (load with ultralytics' "
                          f"YOLO({str(result.yolo_output)!r}))", highlight=False)


def _variants(plan: Plan) -> str:
    return ", ".join(sorted({d.config.variant.value for d in plan.replaced if d.config})) or "-"
