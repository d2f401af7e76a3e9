"""Latency: SCConv (``seed`` and ``paper`` variants) against the dense 3x3 conv it replaces, and
whole converted ResNet-50s against the original, side by side in one run, as ratios.

    python benchmarks/latency.py                                    # the full matrix (long on CPU)
    python benchmarks/latency.py --suite layers --modes eager       # single layers, eager only
    python benchmarks/latency.py --suite networks --batch 8 --json results.json

Each timing is the median of ``--repeats`` runs after ``--warmup`` runs (CUDA: CUDA events
with synchronisation). Inference runs in eval mode under ``torch.inference_mode``; a training
step is forward + backward of ``output.sum()`` in train mode. ``--modes compile`` wraps each
module in ``torch.compile`` (inductor) and excludes compilation from the timing. The table
gives milliseconds and the ratios ``seed/dense``, ``paper/dense`` and ``seed/paper`` (the paper
variant's speed-up over the seed's); ``--json`` writes every row plus the machine and
versions. The targets of the speed issue are checked at the end.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from scconv_surgery import ScConv, ScConvConfig, convert, optimize_for_inference

LAYER_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-50's four stages: (C, H = W)
VARIANTS = ("dense", "seed", "paper")


@dataclass
class Row:
    suite: str  # "layer" or "network"
    case: str  # "C=64@56" or "resnet50"
    batch: int
    mode: str  # "eager" or "compile"
    memory_format: str  # "contiguous" or "channels_last"
    step: str  # "inference" or "train"
    dense_ms: float
    seed_ms: float
    paper_ms: float

    @property
    def seed_ratio(self) -> float:
        return self.seed_ms / self.dense_ms

    @property
    def paper_ratio(self) -> float:
        return self.paper_ms / self.dense_ms

    @property
    def paper_speedup(self) -> float:
        return self.seed_ms / self.paper_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "seed_over_dense": round(self.seed_ratio, 3),
                "paper_over_dense": round(self.paper_ratio, 3), "seed_over_paper": round(self.paper_speedup, 3)}


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events on GPUs)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def make_step(module: nn.Module, x: torch.Tensor, step: str, mode: str) -> Callable[[], object]:
    """A callable running one inference or training step of ``module`` on ``x``."""
    module = module.train() if step == "train" else module.eval()
    run = torch.compile(module) if mode == "compile" else module
    if step == "inference":
        def infer() -> object:
            with torch.inference_mode():
                return run(x)
        return infer
    x = x.detach().requires_grad_()

    def train() -> object:
        module.zero_grad(set_to_none=True)
        out = run(x)
        out.sum().backward()
        return out
    return train


def time_modules(modules: dict[str, nn.Module], x: torch.Tensor, args: argparse.Namespace, mode: str,
                 fmt: str, step: str) -> dict[str, float]:
    out = {}
    for name, module in modules.items():
        module = module.to(args.device)
        inp = x.to(args.device)
        if fmt == "channels_last":
            module = module.to(memory_format=torch.channels_last)
            inp = inp.contiguous(memory_format=torch.channels_last)
        merge = "auto" if args.optimize_for_inference and step == "inference" and name == "paper" else "never"
        if any(isinstance(m, ScConv) for m in module.modules()):
            optimize_for_inference(module.eval(), tuple(x.shape[1:]), batch_size=x.shape[0], merge=merge)
        fn = make_step(module, inp, step, mode)
        if mode == "compile":
            fn()  # compile outside the timing
        out[name] = median_ms(fn, args.device, args.warmup, args.repeats)
        if mode == "compile":
            torch._dynamo.reset()
    return out


def layer_rows(args: argparse.Namespace) -> list[Row]:
    rows = []
    for channels, size in LAYER_SHAPES:
        for batch in args.batch:
            torch.manual_seed(0)
            modules = {"dense": nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                       "seed": ScConv(channels, config=ScConvConfig(variant="seed")),
                       "paper": ScConv(channels)}
            x = torch.randn(batch, channels, size, size)
            for mode in args.modes:
                for fmt in args.formats:
                    for step in args.steps:
                        ms = time_modules(modules, x, args, mode, fmt, step)
                        rows.append(Row("layer", f"C={channels}@{size}", batch, mode, fmt, step,
                                        ms["dense"], ms["seed"], ms["paper"]))
                        report_progress(rows[-1])
    return rows


def network_rows(args: argparse.Namespace) -> list[Row]:
    import timm

    torch.manual_seed(0)
    base = timm.create_model("resnet50")
    modules = {"dense": base,
               "seed": convert(base, config=ScConvConfig(variant="seed"))[0],
               "paper": convert(base)[0]}
    rows = []
    for batch in args.batch:
        x = torch.randn(batch, 3, 224, 224)
        for mode in args.modes:
            for fmt in args.formats:
                for step in args.steps:
                    ms = time_modules({k: copy.deepcopy(v) for k, v in modules.items()}, x, args, mode, fmt, step)
                    rows.append(Row("network", "resnet50", batch, mode, fmt, step, ms["dense"], ms["seed"], ms["paper"]))
                    report_progress(rows[-1])
    return rows


def report_progress(row: Row) -> None:
    print(f"  {row.case} b{row.batch} {row.mode} {row.memory_format} {row.step}: dense {row.dense_ms:.2f} ms, "
          f"seed {row.seed_ms:.2f} ms, paper {row.paper_ms:.2f} ms", file=sys.stderr, flush=True)


def print_table(rows: list[Row]) -> None:
    header = ("suite", "case", "batch", "mode", "format", "step", "dense ms", "seed ms", "paper ms",
              "seed/dense", "paper/dense", "seed/paper")
    lines = [header] + [(r.suite, r.case, str(r.batch), r.mode, r.memory_format, r.step, f"{r.dense_ms:.2f}",
                         f"{r.seed_ms:.2f}", f"{r.paper_ms:.2f}", f"{r.seed_ratio:.2f}x", f"{r.paper_ratio:.2f}x",
                         f"{r.paper_speedup:.2f}x") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(cell.rjust(w) if j >= 2 else cell.ljust(w) for j, (cell, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def check_targets(rows: list[Row]) -> list[dict]:
    """The speed issue's targets (CPU, eager unless stated), met or missed."""
    def find(suite: str, case: str, batch: int, mode: str = "eager", fmt: str = "contiguous",
             step: str = "inference") -> Row | None:
        return next((r for r in rows if (r.suite, r.case, r.batch, r.mode, r.memory_format, r.step)
                     == (suite, case, batch, mode, fmt, step)), None)

    targets = []

    def target(name: str, row: Row | None, value: Callable[[Row], float], limit: float, above: bool = False) -> None:
        if row is None:
            return
        v = value(row)
        targets.append({"target": name, "value": round(v, 3), "limit": limit,
                        "met": v >= limit if above else v <= limit})

    target("C=64@56 b8 eager: paper/dense <= 1.0", find("layer", "C=64@56", 8), lambda r: r.paper_ratio, 1.0)
    target("C=256@14 b8 eager: paper/dense <= 0.5", find("layer", "C=256@14", 8), lambda r: r.paper_ratio, 0.5)
    target("resnet50 b8 eager: paper/dense <= 0.90", find("network", "resnet50", 8), lambda r: r.paper_ratio, 0.90)
    target("resnet50 b8 compile: paper/dense <= 0.75", find("network", "resnet50", 8, "compile"),
           lambda r: r.paper_ratio, 0.75)
    for r in rows:
        if r.suite == "layer":
            targets.append({"target": f"{r.case} b{r.batch} {r.mode} {r.memory_format} {r.step}: seed/paper >= 1.3",
                            "value": round(r.paper_speedup, 3), "limit": 1.3, "met": r.paper_speedup >= 1.3})
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("layers", "networks", "all"), default="all")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", choices=("eager", "compile"), default=["eager", "compile"])
    parser.add_argument("--formats", nargs="+", choices=("contiguous", "channels_last"),
                        default=["contiguous", "channels_last"])
    parser.add_argument("--steps", nargs="+", choices=("inference", "train"), default=["inference", "train"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="write the rows, the targets and the environment to this file")
    parser.add_argument("--optimize-for-inference", action="store_true",
                        help="apply scconv_surgery.optimize_for_inference to the paper variant (inference steps)")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if args.suite in ("layers", "all"):
        rows += layer_rows(args)
    if args.suite in ("networks", "all"):
        rows += network_rows(args)
    print_table(rows)
    targets = check_targets(rows)
    print()
    for t in targets:
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    document = {"environment": {"device": str(args.device), "threads": torch.get_num_threads(),
                                "torch": torch.__version__, "python": platform.python_version(),
                                "machine": platform.machine(), "processor": platform.processor(),
                                "warmup": args.warmup, "repeats": args.repeats},
                "rows": [r.to_dict() for r in rows], "targets": targets}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
    print(json.dumps({"targets_met": sum(t["met"] for t in targets), "targets": len(targets)}))


if __name__ == "__main__":
    main()
