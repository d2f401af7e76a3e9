"""``scconv models [PATTERN]``: the timm / torchvision models, with how many convs SCConv replaces."""
from __future__ import annotations

import difflib
from typing import Annotated, Any

import typer

from scconv_surgery.survey import ModelSurvey, default_cache_dir, list_model_names, survey_models

from .output import Output
from .params import FLAG, DebugOpt, HelpOpt, JsonOpt
from .render.models import render_models

MODELS_SCHEMA_VERSION = 1


def models(
    pattern: Annotated[str | None, typer.Argument(
        help="A glob over the names, e.g. 'resnet*', 'timm:*', 'torchvision:*' or 'regnetx_00[24]' "
        "(case-insensitive). Default: every model.", metavar="PATTERN", show_default=False)] = None,
    *,
    eligible: Annotated[bool, typer.Option(
        "--eligible", metavar=FLAG, help="Only models with at least one conv the default rules replace.")] = False,
    json_output: JsonOpt = False,
    strict_paper: Annotated[bool, typer.Option(
        "--strict-paper", metavar=FLAG, help="Count as 'scconv convert --strict-paper' would: convs whose channels "
        "the configured hyperparameters do not fit are skipped instead of adapted.")] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", metavar=FLAG, help="Plan every model again; neither read nor write the cache.")] = False,
    jobs: Annotated[int | None, typer.Option(
        metavar="N", help="Worker processes that plan models; 0 plans in this process (default: every CPU when more than 100 "
        "models are not cached, else 0).", min=0, max=256, show_default=False)] = None,
    debug: DebugOpt = False,
    help_: HelpOpt = False,
) -> None:
    """List the models 'scconv convert' can build by name, with the convs the default rules would replace.

    timm names come bare, torchvision names as 'torchvision:NAME'. Each model is built on the meta device (no weights, no memory) and planned; results are cached per library version in $SCCONV_CACHE_DIR (default $XDG_CACHE_HOME/scconv-surgery, else ~/.cache/scconv-surgery), so listings after the first read the cache. A pattern that matches no name is not an error: it warns and exits 0.
    """
    output = Output(json=json_output, debug=debug)
    with output.errors(), output.progress() as step:
        step("listing models")
        cache_dir = None if no_cache else default_cache_dir()
        names = list_model_names([pattern] if pattern else (), cache_dir=cache_dir)
        surveys = survey_models(names, cache_dir=cache_dir, strict_paper=strict_paper,
                                jobs=jobs, on_progress=lambda done, total, name: step(f"planned {done}/{total}: {name}"))
    with output.errors():
        _show(output, pattern, names, surveys, eligible=eligible, strict_paper=strict_paper, cache_dir=cache_dir)


def _show(output: Output, pattern: str | None, names: list[str], surveys: list[ModelSurvey], *, eligible: bool,
          strict_paper: bool, cache_dir: Any) -> None:
    """The listing: one JSON document, or the table and the counts of models not eligible (stdout)."""
    json_output = output.json
    shown = [s for s in surveys if s.replaced > 0] if eligible else surveys
    if not names:  # a warning on stderr, with --json too (stdout keeps its one document)
        close = difflib.get_close_matches(pattern or "", list_model_names(cache_dir=cache_dir), n=5, cutoff=0.6)
        output.warn(f"no model name matches {pattern!r}"
                    + (f"; did you mean {', '.join(close)}?" if close else "; try a glob such as 'resnet*'"))
    if json_output:
        output.emit_json({"schema_version": MODELS_SCHEMA_VERSION, "pattern": pattern,
                          "eligible_only": eligible, "strict_paper": strict_paper, "count": len(shown),
                          "models": [s.to_dict() for s in shown]})
        return
    if not names:
        return
    render_models(output.result, shown, surveys, eligible=eligible)
