"""Measured selection's "sensitivity pays" target, on the digits example: at half of the replaceable
MACs, does the set chosen by label-free sensitivity keep at least as much top-1 after calibration
as the set chosen by MACs alone?

    pip install -e '.[examples]'          # scikit-learn, for its handwritten digits
    OMP_NUM_THREADS=1 python benchmarks/sensitivity_digits.py --json sensitivity_digits.json

The network, data and training are ``examples/calibrate_digits.py``'s (imported from it): DigitsNet
trained on 1,200 of scikit-learn's digits for 1,500 steps, 597 held out. Then, seeded throughout:

1. each of its six eligible 3x3 convs is scored by
   :func:`scconv_surgery.sensitivity.layer_sensitivities` (that conv alone replaced, calibrated, KL
   divergence of the softmax against the original) on the first ``--sensitivity-images`` training
   images, without their labels, with the library's defaults (as ``scconv profile --data`` does);
2. the budget: the replaced convs must save at least half of what replacing all six saves,
   ``saving >= S / 2`` with ``S = sum over the eligible convs of (MACs before - MACs after)``,
   i.e. ``target_macs = 1 - S / (2 * M)`` with ``M`` the network's MACs (fvcore, batch 1);
3. two sets meet it with :func:`scconv_surgery.selection.select_layers` (the same greedy and the
   same drop pass): **sensitivity** (the least summed sensitivity: convs in the order of
   sensitivity per MAC saved) and **MACs-greedy** (every conv's sensitivity set equal, so the convs
   that save the most MACs go first; ties by name);
4. each set is converted (:func:`~scconv_surgery.apply.apply_plan`, seed 0) and calibrated with
   :func:`scconv_surgery.calibrate` on the example's 512 unlabeled training images, 200 steps per
   layer (the example's settings), then scored on the 597 held-out images: top-1, and agreement
   with the original's predictions.

``--all-subsets`` also converts and calibrates every set of convs that meets the budget, so that the
two choices can be ranked against the best and the worst possible (an oracle that needs labels).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # examples.calibrate_digits, when run from anywhere

from examples.calibrate_digits import DigitsNet, digits, predict, train  # noqa: E402
from scconv_surgery import calibrate  # noqa: E402
from scconv_surgery.apply import apply_plan, copy_model  # noqa: E402
from scconv_surgery.models import ModelSource  # noqa: E402
from scconv_surgery.plan import plan_conversion  # noqa: E402
from scconv_surgery.profiling import ProfileSettings, profile_plan  # noqa: E402
from scconv_surgery.selection import exact_rules, select_layers  # noqa: E402
from scconv_surgery.sensitivity import DEFAULT_IMAGES, DEFAULT_STEPS, layer_sensitivities, output_change  # noqa: E402

SOURCE = ModelSource.factory("examples.calibrate_digits:DigitsNet")
INPUT_SIZE = (1, 32, 32)


def trained_original(args, x_train, y_train) -> DigitsNet:
    """The example's original network: seed 0, Adam 1e-3, ``--train-steps`` steps (or read from ``--original``)."""
    torch.manual_seed(0)
    model = DigitsNet()
    if args.original is not None and args.original.is_file():
        model.load_state_dict(torch.load(args.original, weights_only=True))
        return model.eval()
    started = time.perf_counter()
    train(model, x_train, y_train, args.train_steps, lr=1e-3, seed=0)
    print(f"trained the original in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if args.original is not None:
        torch.save(model.state_dict(), args.original)
    return model.eval()


def evaluate(model, original, x_test, y_test) -> dict[str, float]:
    """Top-1 on the held-out images, agreement with the original's predictions, and the KL divergence
    of the softmax from the original's (nats; finer than 597 images' top-1, where one image is 0.17 points)."""
    predicted = predict(model, x_test)
    with torch.no_grad():
        kl = output_change([[original.eval()(x_test)]], [[model.eval()(x_test)]])
    return {"top1": float((predicted == y_test).float().mean()),
            "agreement": float((predicted == predict(original, x_test)).float().mean()), "kl": kl}


def converted_and_calibrated(original, plan, names, images, args) -> tuple[torch.nn.Module, float]:
    """``names`` replaced (seed 0) and calibrated on ``images`` (no labels); also the seconds it took."""
    converted = apply_plan(copy_model(original), plan_conversion(original, exact_rules(plan, names)), seed=0)
    started = time.perf_counter()
    calibrate(original, converted, images, steps=args.calibration_steps, seed=0)
    return converted, time.perf_counter() - started


def budget(profile) -> tuple[float, float]:
    """(target_macs, S): the MACs fraction at which the replaced convs save half of what all save."""
    saving = sum(lp.macs_before - lp.macs_after for lp in profile.layers)
    return 1.0 - saving / (2 * profile.model_macs), float(saving)


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = digits()
    original = trained_original(args, x_train, y_train)
    unlabeled = x_train[:args.calibration_images]  # the example's calibration images, labels unused
    plan = plan_conversion(original)
    # latency plays no part here (both objectives are about accuracy): a short profile gives the MACs
    profile = profile_plan(original, SOURCE, plan, INPUT_SIZE, ProfileSettings(repeats=3), cache_dir=False)
    started = time.perf_counter()
    scores = layer_sensitivities(original, plan, x_train[:args.sensitivity_images], steps=args.sensitivity_steps,
                                 seed=0)
    sensitivity_seconds = time.perf_counter() - started
    print(f"scored {len(scores)} convs in {sensitivity_seconds:.0f} s", file=sys.stderr, flush=True)
    target, saving = budget(profile)
    arms = {
        "sensitivity": select_layers(profile.with_sensitivities(scores), plan, "target_macs", target),
        "MACs-greedy": select_layers(profile.with_sensitivities({lp.name: 1.0 for lp in profile.layers}), plan,
                                     "target_macs", target),
    }
    gain = {lp.name: lp.macs_before - lp.macs_after for lp in profile.layers}
    rows = {"original": {**evaluate(original, original, x_test, y_test), "chosen": [], "macs_ratio": 1.0,
                         "saving_of_all": 0.0, "sensitivity_sum": 0.0}}
    for label, names in [*((k, list(s.chosen)) for k, s in arms.items()), ("all six", list(gain))]:
        model, seconds = converted_and_calibrated(original, plan, names, unlabeled, args)
        chosen_saving = sum(gain[n] for n in names)
        rows[label] = {**evaluate(model, original, x_test, y_test), "chosen": names,
                       "macs_ratio": 1.0 - chosen_saving / profile.model_macs,
                       "saving_of_all": chosen_saving / saving, "sensitivity_sum": sum(scores[n] for n in names),
                       "calibration_seconds": seconds}
        print(f"{label}: {json.dumps(rows[label])}", file=sys.stderr, flush=True)
    subsets = []
    if args.all_subsets:
        names = list(gain)
        for k in range(1, len(names) + 1):
            for subset in itertools.combinations(names, k):
                if sum(gain[n] for n in subset) < saving / 2 - 1e-9 * saving:
                    continue
                model, _ = converted_and_calibrated(original, plan, list(subset), unlabeled, args)
                subsets.append({"chosen": list(subset), "saving_of_all": sum(gain[n] for n in subset) / saving,
                                "sensitivity_sum": sum(scores[n] for n in subset),
                                **evaluate(model, original, x_test, y_test)})
        print(f"calibrated {len(subsets)} sets that meet the budget", file=sys.stderr, flush=True)
    return {"target_macs": target, "replaceable_saving_macs": saving, "model_macs": profile.model_macs,
            "layers": [{"name": lp.name, "input_shape": list(lp.input_shape), "macs_before": lp.macs_before,
                        "macs_after": lp.macs_after, "sensitivity": scores[lp.name]} for lp in profile.layers],
            "rows": rows, "subsets": subsets, "sensitivity_seconds": sensitivity_seconds,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        rank = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                rank[order[k]] = (i + j) / 2
            i = j + 1
        return rank

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else 0.0


def report(result: dict) -> None:
    print(f"\nDigits (597 held-out images): at least half of the replaceable MACs saved "
          f"(target_macs {result['target_macs']:.4f}; all six save {result['replaceable_saving_macs'] / 1e6:.2f} M "
          f"of {result['model_macs'] / 1e6:.2f} M MACs); each set calibrated with 0 labels\n")
    print("| conv | input | MACs before -> after | sensitivity (KL, nats) |")
    print("|---|---|---:|---:|")
    for layer in result["layers"]:
        print(f"| {layer['name']} | {'x'.join(map(str, layer['input_shape'][1:]))} | "
              f"{layer['macs_before'] / 1e6:.2f} M -> {layer['macs_after'] / 1e6:.2f} M | {layer['sensitivity']:.4f} |")
    print("\n| set | convs replaced | MACs | saving (of all six's) | summed sensitivity | top-1 | agrees with the original "
          "| KL from the original |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, row in result["rows"].items():
        convs = ", ".join(n.removeprefix("features.").removesuffix(".0") for n in row["chosen"]) or "none"
        print(f"| {label} | {convs} | {row['macs_ratio']:.3f} | {row['saving_of_all']:.1%} | {row['sensitivity_sum']:.4f} | "
              f"{100 * row['top1']:.2f}% | {100 * row['agreement']:.1f}% | {row['kl']:.4f} |")
    subsets = result["subsets"]
    if subsets:
        top1 = sorted(s["top1"] for s in subsets)
        print(f"\nall {len(subsets)} sets that meet the budget, calibrated: top-1 from {100 * top1[0]:.2f}% to "
              f"{100 * top1[-1]:.2f}% (median {100 * top1[len(top1) // 2]:.2f}%)")
        for label in ("sensitivity", "MACs-greedy"):
            mine = result["rows"][label]["top1"]
            print(f"{label}: {sum(t > mine for t in top1)} of them keep more top-1, {sum(t == mine for t in top1)} as much")
        for measure in ("top1", "kl"):
            rho = spearman([s["sensitivity_sum"] for s in subsets], [s[measure] for s in subsets])
            print(f"rank correlation of summed sensitivity and {measure} over these sets: {rho:.2f}")
        kls = sorted(s["kl"] for s in subsets)
        for label in ("sensitivity", "MACs-greedy"):
            print(f"{label}: {sum(k < result['rows'][label]['kl'] for k in kls)} of them are closer to the original (KL)")
    kept = result["rows"]["sensitivity"]["top1"] >= result["rows"]["MACs-greedy"]["top1"]
    print(f"\n{'PASS' if kept else 'FAIL'}  sensitivity-chosen top-1 >= MACs-greedy top-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=1500, help="steps to train the original (the example's)")
    parser.add_argument("--calibration-images", type=int, default=512, help="unlabeled images to calibrate each set")
    parser.add_argument("--calibration-steps", type=int, default=200, help="calibration steps per layer")
    parser.add_argument("--sensitivity-images", type=int, default=DEFAULT_IMAGES,
                        help="unlabeled images to score sensitivity (the library's default)")
    parser.add_argument("--sensitivity-steps", type=int, default=DEFAULT_STEPS,
                        help="calibration steps of the one layer when scoring (the library's default)")
    parser.add_argument("--all-subsets", action="store_true", help="also calibrate every set that meets the budget")
    parser.add_argument("--original", type=Path, help="read the trained original from this file, or train and save it")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    result = run(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
