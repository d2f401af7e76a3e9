"""``scconv models``: one row per model, then why the others have nothing to replace."""
from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scconv_surgery.survey import ModelSurvey


def models_table(surveys: list[ModelSurvey]) -> Table:
    """One row per model: name, family, convs, replaced (adapted), and why not when nothing is."""
    table = Table(title=f"{sum(s.replaced > 0 for s in surveys)} of {len(surveys)} models have convs to replace",
                  title_justify="left")
    for column in ("model", "family", "convs", "replaced", "adapted", "why not"):
        table.add_column(column, justify="right" if column in ("convs", "replaced", "adapted") else "left",
                         no_wrap=column == "model", overflow="fold")
    for s in surveys:
        why = "" if s.replaced else escape(s.error or (s.coverage.value if s.coverage else ""))
        table.add_row(escape(s.name), s.family, str(s.convs), str(s.replaced) if s.replaced else "[dim]0[/]",
                      str(s.adapted) if s.adapted else "", f"[yellow]{why}[/]" if s.error else why)
    return table


def render_models(console: Console, shown: list[ModelSurvey], surveys: list[ModelSurvey], *, eligible: bool) -> None:
    """The table of ``shown``, then the coverage classes of the models of ``surveys`` with nothing
    to replace (``eligible``: they were left out of the table)."""
    console.print(models_table(shown))
    coverage = Counter(s.coverage.value for s in surveys if s.coverage and not s.replaced)
    if coverage:
        label = "not listed (--eligible), no conv to replace" if eligible else "not eligible"
        console.print(f"{label}: " + ", ".join(f"{n} {why}" for why, n in coverage.most_common()), highlight=False)
