"""Measured selection's targets: never slower with ``faster``, on budget with ``target_macs``, fast profiles.

    python benchmarks/selection.py                       # the four models, the issue's targets
    python benchmarks/selection.py --models resnet50 --repeats 7 --e2e-repeats 7 --json out.json

For each model: profile its eligible convs on the CPU (thread CPU time on one thread, a fresh
cache), select ``faster``, convert, and time the converted network against the original end to
end, interleaved (the same clock); the table gives the end-to-end ratio and the MACs / params saved.
For ResNet-50 also: the cached rerun's time, and ``target_macs 0.75`` chosen by latency against the
first convs by name that meet the same budget, both timed end to end against each other.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # examples.yolo_c2f, when run from anywhere

from scconv_surgery.apply import apply_plan, copy_model  # noqa: E402
from scconv_surgery.models import ModelSource, default_input_size, rebuild_base  # noqa: E402
from scconv_surgery.plan import plan_conversion  # noqa: E402
from scconv_surgery.profiling import ProfileSettings, profile_plan, time_models  # noqa: E402
from scconv_surgery.selection import exact_rules, select_layers  # noqa: E402

MODELS = {
    "resnet50": (ModelSource.parse("timm:resnet50"), None),
    "regnety_016": (ModelSource.parse("timm:regnety_016"), None),
    "densenet121": (ModelSource.parse("timm:densenet121"), None),
    "yolo_c2f": (ModelSource.factory("examples.yolo_c2f:yolo_c2f"), (3, 320, 320)),
}


def converted_with(base, names, plan):
    return apply_plan(copy_model(base), plan_conversion(base, exact_rules(plan, names)), seed=0)


def first_by_name(profile, macs_ratio):
    """The first convs by name until the MACs are at most ``macs_ratio`` of the original (a hand-written
    rule's choice of the same budget)."""
    chosen, macs = [], profile.model_macs
    for layer in sorted(profile.layers, key=lambda lp: lp.name):
        if macs <= macs_ratio * profile.model_macs + 1e-9 * profile.model_macs:
            break
        chosen.append(layer.name)
        macs -= layer.macs_before - layer.macs_after
    return chosen, macs / profile.model_macs


def run(label, source, size, args, cache_dir):
    base, source = rebuild_base(source)
    size = size or default_input_size(base, source)
    plan = plan_conversion(base)
    settings = ProfileSettings(repeats=args.repeats)
    started = time.perf_counter()
    profile = profile_plan(base, source, plan, size, settings, cache_dir=cache_dir)
    row = {"model": label, "input": list(size), "eligible": len(profile.layers),
           "profile_seconds": time.perf_counter() - started}
    if label == "resnet50":
        started = time.perf_counter()
        again = profile_plan(base, source, plan, size, settings, cache_dir=cache_dir)
        row["cached_profile_seconds"] = time.perf_counter() - started
        row["cached_layers"] = again.cached_layers
    e2e = ProfileSettings(repeats=args.e2e_repeats)
    faster = select_layers(profile, plan, "faster", margin=args.margin)
    row.update(faster_chosen=len(faster.chosen), faster_predicted=faster.predicted_latency,
               macs_saved=1 - faster.macs_ratio, params_saved=1 - faster.params_ratio)
    if faster.chosen:
        timing = time_models(base, converted_with(base, faster.chosen, plan), size, e2e)
        row.update(faster_measured=timing.ratio, faster_spread=timing.spread)
    else:
        row.update(faster_measured=1.0, faster_spread=0.0)
    if label == "resnet50":
        aware = select_layers(profile, plan, "target_macs", args.target_macs)
        naive, naive_macs = first_by_name(profile, args.target_macs)  # the same budget, met by name order
        aware_model, naive_model = converted_with(base, aware.chosen, plan), converted_with(base, naive, plan)
        head_to_head = time_models(aware_model, naive_model, size, e2e)  # ratio: first-N / latency-aware
        row.update(budget=args.target_macs, budget_macs=aware.macs_ratio, budget_chosen=list(aware.chosen),
                   budget_predicted=aware.predicted_latency,
                   budget_measured=time_models(base, aware_model, size, e2e).ratio,
                   first_n_chosen=naive, first_n_macs=naive_macs,
                   first_n_measured=time_models(base, naive_model, size, e2e).ratio,
                   first_n_over_aware=head_to_head.ratio, head_to_head_spread=head_to_head.spread)
    return row, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per layer")
    parser.add_argument("--e2e-repeats", type=int, default=15, help="interleaved rounds end to end")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--target-macs", type=float, default=0.75)
    parser.add_argument("--json", type=Path, help="write every row and profile here")
    args = parser.parse_args()
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory() as cache:
        for label in args.models:
            source, size = MODELS[label]
            row, profile = run(label, source, size, args, Path(cache))
            rows.append(row)
            profiles[label] = profile.to_dict()
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| model | eligible | faster chosen | predicted | measured (spread) | MACs saved | params saved | profile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['eligible']} | {r['faster_chosen']} | {r['faster_predicted']:.3f}x | "
              f"{r['faster_measured']:.3f}x ({r['faster_spread']:.3f}) | {r['macs_saved']:.1%} | "
              f"{r['params_saved']:.1%} | {r['profile_seconds']:.0f} |")
    for r in rows:
        if "budget" in r:
            print(f"\n{r['model']} target_macs {r['budget']}: lands at {r['budget_macs']:.3f} "
                  f"({len(r['budget_chosen'])} convs), predicted {r['budget_predicted']:.3f}x, measured "
                  f"{r['budget_measured']:.3f}x; first {len(r['first_n_chosen'])} by name at {r['first_n_macs']:.3f} "
                  f"MACs: measured {r['first_n_measured']:.3f}x; first-N / latency-aware end to end "
                  f"{r['first_n_over_aware']:.3f}x (spread {r['head_to_head_spread']:.3f})")
            print(f"profile {r['profile_seconds']:.1f} s, cached rerun {r['cached_profile_seconds']:.2f} s "
                  f"({r['cached_layers']} layers from the cache)")
    targets = {
        "never slower (faster <= 1.00x)": all(r["faster_measured"] <= 1.0 for r in rows),
        **{f"{r['model']} within 2 points of {r['budget']}": abs(r["budget_macs"] - r["budget"]) <= 0.02
           for r in rows if "budget" in r},
        **{"latency-aware faster than first-N": r["first_n_over_aware"] > 1.0 for r in rows if "budget" in r},
        **{"profile <= 120 s": r["profile_seconds"] <= 120 for r in rows if r["model"] == "resnet50"},
        **{"cached rerun <= 5 s": r["cached_profile_seconds"] <= 5 for r in rows if "cached_profile_seconds" in r},
    }
    print()
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "targets": targets, "profiles": profiles,
                                         "clock": "thread_time, one thread"}, indent=2))


if __name__ == "__main__":
    main()
