"""The zoo sweep: does every timm and torchvision CNN convert, and if not, why not?

Two stages, both in worker processes (``--jobs``), neither able to crash the sweep (a failure
is recorded with its step and exception type, a crashed or hung worker as ``WorkerCrash`` /
``TimeoutError``):

1. **plan**, every model: built on the meta device (no weights), planned with the default
   rules, and run once on the meta device at its own input size to count the MACs delta.
   Records the conv count, replaced and adapted convs, skip reasons, params and MACs delta,
   the coverage class (:class:`scconv_surgery.survey.Coverage`) and the time taken.
2. **convert**, a sample: the ``--convert`` smallest models of every family that have a conv
   to replace go through ``scconv convert`` for real (random weights, seed 0): plan, replace,
   the per-layer shape check at the model's own input size, fvcore counts, save. Then a forward
   on random images (finite outputs) and ``scconv_surgery.load`` of the checkpoint, whose
   outputs must equal the converted model's.

Models: every timm model, and torchvision's classification, segmentation and detection models.
Writes JSON, prints a summary table, and can write the coverage section of docs/zoo.md::

    python benchmarks/zoo.py --jobs 2 --json zoo.json --docs docs/zoo.md       # everything
    python benchmarks/zoo.py --filter 'resnet*' --filter 'torchvision:dense*' --convert 1
    python benchmarks/zoo.py --sample 100 --convert 0                          # plan only
    python benchmarks/zoo.py --from-json zoo.json --docs docs/zoo.md           # re-render only
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from scconv_surgery import load
from scconv_surgery._probe import tensor_leaves
from scconv_surgery.pipeline import WriteCheckpoint, run_conversion
from scconv_surgery.survey import ModelSurvey, list_model_names, survey_models
from scconv_surgery.survey import model_family
from scconv_surgery.workers import WorkerCrash, map_in_workers

TORCHVISION_SCOPE = ("", "segmentation", "detection")  # torchvision.models, .segmentation, .detection
SECTION_START, SECTION_END = "<!-- zoo-coverage:start -->", "<!-- zoo-coverage:end -->"
WHY_NOT = {  # Coverage value -> how docs/zoo.md names the group
    "depthwise_only": "depthwise only: every 3x3 past the stem is depthwise",
    "grouped": "grouped: SCConv would cost more than the grouped 3x3 convs",
    "no_3x3": "no 3x3 conv past the stem (patch embeddings, 1x1 convs, stems only)",
    "no_conv": "no Conv2d at all",
    "channels": "channels: no hyperparameters fit the dense 3x3 convs",
    "weight_standardized": "weight-standardised 3x3 convs with no normalisation after them",
    "padding": "unpadded ('valid') dense 3x3 convs",
    "dilated": "dilated dense 3x3 convs",
    "conv_subclass": "Conv2d subclasses with their own forward",
    "stride": "non-uniform strides",
    "other": "other",
}

WHAT_TO_DO = {  # Coverage value -> what a user can do about it
    "weight_standardized": "A rule that names the class opts them in (for example `conv_class: ScaledStdConv2d` in a rules "
                           "file); see \"Weight-standardised convs\" for what that does to the output scale.",
    "padding": "SCConv keeps the spatial size (its GWC pads by k // 2), so convs that shrink it cannot be replaced "
               "without changing the network's shapes.",
    "channels": "The skip reason names the hyperparameter change that makes them fit.",
}


def in_scope(name: str) -> bool:
    """timm, and torchvision's classification / segmentation / detection models."""
    if not name.startswith("torchvision:"):
        return True
    parts = model_family(name).split(".")  # torchvision.resnet, torchvision.detection.faster_rcnn
    return (parts[1] if len(parts) > 2 else "") in TORCHVISION_SCOPE


# -- stage 2: convert, forward, reload --------------------------------------------------------

def _leaves(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output (one tensor, or nested lists, tuples and dicts of them)."""
    return [tensor for _, tensor in tensor_leaves(output)]


def convert_and_reload(name: str, workdir: str) -> dict[str, Any]:
    """``scconv convert NAME --out ...``, a forward, and a reload with equal outputs.

    Returns a record whose ``error`` (``{"step", "type", "message"}``) names the failing step.
    """
    step = "start"
    record: dict[str, Any] = {"name": name}
    start = time.perf_counter()

    def on_step(message: str) -> None:
        nonlocal step
        step = message.split(" ")[0]  # building, planning, replacing, checking, counting, saving

    try:
        path = Path(workdir) / (re.sub(r"[^\w.-]", "_", name) + ".pt")
        result = run_conversion(name, output=WriteCheckpoint(path, overwrite=True), seed=0, on_step=on_step)
        report = result.report
        record.update(replaced=len(result.plan.replaced), adapted=len(result.plan.adapted),
                      input_size=list(report.input_size), params_before=report.before.params,
                      params_after=report.after.params, macs_before=report.before.macs,
                      macs_after=report.after.macs, counter=report.after.counter)
        step = "forward"
        x = torch.randn(1, *report.input_size, generator=torch.Generator().manual_seed(0))
        model = result.model.eval()
        with torch.no_grad():
            expected = _leaves(model(x))
        if not expected or not all(torch.isfinite(t).all() for t in expected if t.is_floating_point()):
            raise ValueError(f"the converted model's output has {len(expected)} tensors, not all finite")
        step = "reload"
        loaded = load(path)
        with torch.no_grad():
            actual = _leaves(loaded(x))
        diffs = [(a.double() - e.double()).abs().max().item() if a.numel() else 0.0
                 for a, e in zip(actual, expected) if a.shape == e.shape]
        if len(actual) != len(expected) or len(diffs) != len(expected) or max(diffs, default=0.0) > 1e-5:
            raise ValueError(f"reloaded outputs differ: {len(actual)} vs {len(expected)} tensors, "
                             f"max abs diff {max(diffs, default=math.nan):.3g}")
        record["reload_max_abs_diff"] = max(diffs, default=0.0)
        path.unlink(missing_ok=True)
    except Exception as err:
        text = str(err).strip().splitlines()
        record["error"] = {"step": step, "type": type(err).__name__, "message": text[0][:300] if text else ""}
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def pick_conversions(surveys: list[ModelSurvey], per_family: int) -> list[str]:
    """The ``per_family`` smallest models of each family that have a conv to replace."""
    by_family: dict[str, list[ModelSurvey]] = defaultdict(list)
    for s in surveys:
        if s.replaced and not s.error:
            by_family[s.family].append(s)
    return [s.name for family in sorted(by_family)
            for s in sorted(by_family[family], key=lambda s: (s.params, s.name))[:per_family]]


# -- summary -------------------------------------------------------------------------------

def summarize(surveys: list[ModelSurvey], conversions: list[dict]) -> dict[str, Any]:
    """Counts for the closing table and docs/zoo.md."""
    ok = [s for s in surveys if not s.error]
    dense = [s for s in ok if s.dense_3x3]
    why_not: dict[str, list[str]] = defaultdict(list)
    for s in ok:
        if not s.replaced:
            why_not[s.coverage.value].append(s.name)
    return {
        "models": len(surveys), "planned": len(ok), "convert": sum(s.replaced > 0 for s in ok),
        "adapted": sum(s.adapted > 0 for s in ok), "grouped_replaced": sum(s.grouped_replaced > 0 for s in ok),
        "families": len({s.family for s in surveys}),
        "with_dense_3x3": len(dense), "with_dense_3x3_convert": sum(s.replaced > 0 for s in dense),
        "with_dense_3x3_skipped": {s.name: s.coverage.value for s in dense if not s.replaced},
        "why_not": {k: sorted(v) for k, v in sorted(why_not.items(), key=lambda kv: -len(kv[1]))},
        "plan_failures": {s.name: s.error for s in surveys if s.error},
        "macs_not_counted": {s.name: s.note for s in ok if s.note},
        "converted": len(conversions),
        "conversion_failures": {c["name"]: c["error"] for c in conversions if "error" in c},
        "conversion_families": len({c["family"] for c in conversions}),
    }


def _pct(after: float, before: float) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "-"


def markdown(summary: dict[str, Any], conversions: list[dict], command: str, seconds: float) -> str:
    """The coverage section of docs/zoo.md (between the zoo-coverage markers)."""
    s = summary
    lines = [
        SECTION_START,
        f"Generated by `{command}` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{s['models']} models in {s['families']} families, {seconds / 60:.1f} min). Default rules, random weights.",
        "",
        "| | models |", "|---|---:|",
        f"| tried (every timm model; torchvision classification, segmentation, detection) | {s['models']} |",
        f"| convert (at least one conv replaced) | {s['convert']} |",
        f"| ... of which with hyperparameters adapted to some conv's channels | {s['adapted']} |",
        f"| ... of which with grouped convs replaced (SCConv cheaper) | {s['grouped_replaced']} |",
        f"| have a dense 3x3 conv past the stem | {s['with_dense_3x3']} |",
        f"| ... of which convert | {s['with_dense_3x3_convert']} |",
        f"| no eligible conv (below, by why) | {s['planned'] - s['convert']} |",
        f"| failures while planning | {len(s['plan_failures'])} |",
        f"| converted for real, forward and reload checked ({s['conversion_families']} families) | "
        f"{s['converted']} |",
        f"| failures while converting | {len(s['conversion_failures'])} |",
        "",
        f"Of the {s['with_dense_3x3']} models with a dense 3x3 conv past the stem (`in_channels > 3`), "
        f"{s['with_dense_3x3_convert']} convert; the others, by why"
        + (":" if s["with_dense_3x3_skipped"] else ": none."),
        "",
    ]
    skipped: dict[str, list[str]] = {}
    for name, why in s["with_dense_3x3_skipped"].items():
        skipped.setdefault(why, []).append(name)
    for why, names in skipped.items():
        fix = f" {WHAT_TO_DO[why]}" if why in WHAT_TO_DO else ""
        lines.append(f"- {WHY_NOT.get(why, why)} ({len(names)}): " + ", ".join(f"`{n}`" for n in names) + f".{fix}")
    lines += [
        "",
        "Models with no eligible conv, by why (a model is classed by its 3x3 convs past the stem):",
        "",
    ]
    for why, names in s["why_not"].items():
        shown = ", ".join(f"`{n}`" for n in names)
        lines += [f"<details><summary>{WHY_NOT.get(why, why)}: {len(names)}</summary>", "", shown, "", "</details>",
                  ""]
    if s["macs_not_counted"]:
        lines += [f"The MACs delta of the plan stage comes from one forward on the meta device; it could not run for "
                  f"{len(s['macs_not_counted'])} models ("
                  + ", ".join(f"`{n}`" for n in sorted(s["macs_not_counted"])[:4])
                  + (", ..." if len(s["macs_not_counted"]) > 4 else "")
                  + ": post-processing that depends on values); the JSON gives the reason for each.", ""]
    failures = [f"- `{n}` (plan): {e}" for n, e in s["plan_failures"].items()]
    failures += [f"- `{n}` ({e['step']}): {e['type']}: {e['message']}" for n, e in s["conversion_failures"].items()]
    lines += ["Failures: " + ("none." if not failures else ""), *failures, ""]
    if conversions:
        lines += ["Converted for real (the smallest eligible model of each family; fvcore counts at the model's "
                  "own input size):", "", "<details><summary>"
                  f"{len(conversions)} models</summary>", "",
                  "| family | model | replaced | params | MACs | reload |", "|---|---|---:|---:|---:|---|"]
        for c in sorted(conversions, key=lambda c: (c["family"], c["name"])):
            if "error" in c:
                lines.append(f"| {c['family']} | `{c['name']}` | | | | {c['error']['type']} at {c['error']['step']} |")
            else:
                lines.append(f"| {c['family']} | `{c['name']}` | {c['replaced']} | "
                             f"{_pct(c['params_after'], c['params_before'])} | "
                             f"{_pct(c['macs_after'], c['macs_before'])} | equal |")
        lines += ["", "</details>", ""]
    lines.append(SECTION_END)
    return "\n".join(lines)


def update_page(path: Path, section: str) -> None:
    """Replace the text between the zoo-coverage markers of ``path`` (docs/zoo.md) with ``section``;
    the page's own text around them stays."""
    text = path.read_text()
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start < 0 or end < 0:
        raise SystemExit(f"{path}: no {SECTION_START} ... {SECTION_END} markers to replace")
    path.write_text(text[:start] + section + text[end + len(SECTION_END):])


def print_table(summary: dict[str, Any]) -> None:
    s = summary
    rows = [("models tried", s["models"]), ("planned", s["planned"]), ("convert", s["convert"]),
            ("  adapted hyperparameters", s["adapted"]), ("  grouped convs replaced", s["grouped_replaced"]),
            ("with a dense 3x3 past the stem", s["with_dense_3x3"]),
            ("  of which convert", s["with_dense_3x3_convert"]),
            *((f"no eligible conv: {why}", len(names)) for why, names in s["why_not"].items()),
            ("plan failures", len(s["plan_failures"])), ("MACs not counted (meta forward)", len(s["macs_not_counted"])),
            ("converted for real", s["converted"]), ("conversion failures", len(s["conversion_failures"]))]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{label:<{width}}  {value:>6}" for label, value in rows))
    for name, why in s["with_dense_3x3_skipped"].items():
        print(f"dense 3x3 past the stem, not converted: {name} ({why})")
    for name, error in {**s["plan_failures"], **s["conversion_failures"]}.items():
        print(f"FAILED {name}: {error}")


def _progress(stage: str, every: int) -> Any:
    start = time.perf_counter()

    def report(done: int, total: int, name: str) -> None:
        if done % every == 0 or done == total:
            print(f"[{stage}] {done}/{total} ({time.perf_counter() - start:.0f} s) {name}", file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sweep timm and torchvision: plan every model, convert a sample.")
    parser.add_argument("--filter", action="append", default=[], metavar="PATTERN",
                        help="glob over model names (timm bare, 'torchvision:NAME'); repeatable; default all")
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="sweep a random sample of N of the matching models (seeded by --seed); 0: all")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes (default 1; a crash or hang of one model never ends the sweep; "
                        "0 runs in this process, where a crash does)")
    parser.add_argument("--convert", type=int, default=1, metavar="K",
                        help="convert for real the K smallest eligible models of each family (default 1; 0: plan only)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model and stage (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--json", metavar="FILE", help="write every record and the summary as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the coverage section alone to FILE")
    parser.add_argument("--docs", metavar="FILE",
                        help="replace the coverage section between the zoo-coverage markers of FILE (docs/zoo.md)")
    parser.add_argument("--from-json", metavar="FILE", help="sweep nothing: write the table, --markdown and --docs "
                        "from the JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        surveys = [ModelSurvey.from_dict(d) for d in saved["models"]]
        summary = summarize(surveys, saved["conversions"])
        summary.update({k: saved["summary"][k] for k in ("seconds", "plan_seconds", "jobs")})
        print_table(summary)
        write_outputs(args, markdown(summary, saved["conversions"], saved["command"], summary["seconds"]))
        return 0
    command = " ".join(["python benchmarks/zoo.py", *(f"--filter '{f}'" for f in args.filter),
                        *(f"--{k} {getattr(args, k)}" for k in ("sample", "seed") if getattr(args, k)),
                        f"--jobs {args.jobs} --convert {args.convert} --docs docs/zoo.md"])

    start = time.perf_counter()
    names = [n for n in list_model_names(args.filter) if in_scope(n)]
    if args.sample:
        names = sorted(random.Random(args.seed).sample(names, min(args.sample, len(names))))
    print(f"[plan] {len(names)} models, {args.jobs} jobs", file=sys.stderr)
    surveys = survey_models(names, count_macs=True, jobs=args.jobs, timeout_s=args.timeout,
                            on_progress=_progress("plan", max(1, len(names) // 20)))
    plan_seconds = time.perf_counter() - start
    chosen = pick_conversions(surveys, args.convert)
    family = {s.name: s.family for s in surveys}
    conversions: list[dict] = []
    if chosen:
        print(f"[convert] {len(chosen)} models", file=sys.stderr)
        progress = _progress("convert", 1)
        with tempfile.TemporaryDirectory(prefix="scconv-zoo-") as workdir:
            def record(name: str, result: Any) -> None:
                if not isinstance(result, dict):  # the worker crashed or timed out
                    step = "worker" if isinstance(result, WorkerCrash) else "timeout"
                    result = {"name": name, "error": {"step": step, "type": type(result).__name__,
                                                      "message": str(result)[:300]}}
                conversions.append({**result, "family": family[name]})
                progress(len(conversions), len(chosen), name)

            map_in_workers(functools.partial(convert_and_reload, workdir=workdir), chosen, jobs=args.jobs,
                           timeout_s=args.timeout, on_result=record)
    seconds = time.perf_counter() - start
    summary = summarize(surveys, conversions)
    summary.update(seconds=round(seconds, 1), plan_seconds=round(plan_seconds, 1), jobs=args.jobs)
    print_table(summary)
    print(f"plan stage {plan_seconds / 60:.1f} min, total {seconds / 60:.1f} min ({args.jobs} jobs)")
    if args.json:
        Path(args.json).write_text(json.dumps({"schema_version": 1, "command": command, "torch": torch.__version__,
                                               "summary": summary, "models": [s.to_dict() for s in surveys],
                                               "conversions": conversions}, indent=1))
    write_outputs(args, markdown(summary, conversions, command, seconds))
    return 0


def write_outputs(args: argparse.Namespace, section: str) -> None:
    if args.markdown:
        Path(args.markdown).write_text(section + "\n")
    if args.docs:
        update_page(Path(args.docs), section)


if __name__ == "__main__":
    sys.exit(main())
