"""Output scale at init of weight-standardised convs, original against SCConv.

timm's ``StdConv2d`` family standardises its weight in every forward (and the ``Scaled`` ones
multiply it by a learned gain), so that networks without normalisation layers (NF-ResNets,
NFNets) keep their activations at a known scale. SCConv has no such weight: replacing such a
conv changes the scale of what the next layer receives, unless a normalisation layer follows
and rescales it. This measures both, on random images through randomly initialised models:

- ``std`` of each 3x3 weight-standardised conv's output, original and replaced (SCConv
  initialised from seed 0, on the activations the original model feeds the conv);
- where a normalisation layer follows the conv, ``std`` of that layer's output for both.

Prints a table and writes JSON; the README's "Weight-standardised convs" section records it::

    python benchmarks/std_conv_scale.py --json std_conv_scale.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from scconv_surgery import Rule, create_model, plan_conversion
from scconv_surgery.apply import build_replacement
from scconv_surgery.models import default_input_size
from scconv_surgery.std_conv import WEIGHT_STANDARDIZING_CONVS, following_norm

# one model per weight-standardising class of timm, smallest first
MODELS = {
    "ScaledStdConv2d": "nf_resnet50",
    "ScaledStdConv2dSame": "dm_nfnet_f0",
    "StdConv2d": "resnetv2_50x1_bit",
    "StdConv2dSame": "vit_small_r26_s32_224",
}


def _capture_inputs(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named module receives in one forward of ``x``."""
    inputs: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:  # returns None: the input is kept
            inputs.setdefault(name, args[0].detach())
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def measure(class_name: str, model_name: str, *, batch: int = 2, seed: int = 0) -> dict:
    """Output std of every 3x3 ``class_name`` conv of ``model_name``, original and SCConv."""
    torch.manual_seed(seed)
    model, source = create_model(f"timm:{model_name}")
    plan = plan_conversion(model, [Rule("*", conv_class=class_name)])  # a rule naming the class opts in
    decisions = [d for d in plan.replaced if d.class_name == class_name]
    size = default_input_size(model, source)
    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(seed))
    inputs = _capture_inputs(model, [d.name for d in decisions], x)
    rows = []
    for d in decisions:
        if d.name not in inputs:
            continue
        conv = model.get_submodule(d.name)
        torch.manual_seed(seed)
        layer = build_replacement(d).eval()
        norm_name = following_norm(model, d.name)
        with torch.no_grad():
            out_conv, out_scconv = conv(inputs[d.name]), layer(inputs[d.name])
            row = {"name": d.name, "std_original": out_conv.std().item(), "std_scconv": out_scconv.std().item(),
                   "norm": norm_name}
            if norm_name is not None:
                norm = model.get_submodule(norm_name)
                training = norm.training
                norm.train()  # a BatchNorm normalises by batch statistics while fine-tuning
                row["std_after_norm_original"] = norm(out_conv).std().item()
                row["std_after_norm_scconv"] = norm(out_scconv).std().item()
                norm.train(training)
        rows.append(row)
    ratios = [r["std_scconv"] / r["std_original"] for r in rows]
    result = {"class": class_name, "model": model_name, "input_size": list(size), "convs": len(rows),
              "followed_by_norm": sum(r["norm"] is not None for r in rows),
              "first": rows[0] if rows else None,
              "ratio_median": statistics.median(ratios) if ratios else None,
              "ratio_min": min(ratios, default=None), "ratio_max": max(ratios, default=None), "layers": rows}
    normed = [r["std_after_norm_scconv"] / r["std_after_norm_original"] for r in rows if r["norm"]]
    result["ratio_after_norm_median"] = statistics.median(normed) if normed else None
    return result


def _table(results: list[dict]) -> str:
    lines = ["| class | model | 3x3 convs | norm follows | first conv std: original -> SCConv | "
             "SCConv / original std, median (min-max) | after the norm, median |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        first = r["first"]
        after = f"{r['ratio_after_norm_median']:.2f}" if r["ratio_after_norm_median"] is not None else "-"
        lines.append(f"| `{r['class']}` | {r['model']} | {r['convs']} | {r['followed_by_norm']} of {r['convs']} | "
                     f"{first['std_original']:.2f} -> {first['std_scconv']:.2f} | "
                     f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {after} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="write the measurements as JSON")
    parser.add_argument("--batch", type=int, default=2, help="random images per forward (default 2)")
    args = parser.parse_args(argv)
    assert set(MODELS) == set(WEIGHT_STANDARDIZING_CONVS)
    results = []
    for class_name, model_name in MODELS.items():
        start = time.perf_counter()
        results.append(measure(class_name, model_name, batch=args.batch))
        print(f"{class_name} ({model_name}): {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema_version": 1, "torch": torch.__version__, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
