"""Latency and operator counts: SCConv (``seed`` and ``paper`` variants) against the dense
3x3 conv it replaces, and whole converted ResNet-50s against the original, as ratios.

    python benchmarks/latency.py --threads 2 --batch 8                  # CPU: the issue's targets
    python benchmarks/latency.py --suite layers --modes eager --steps inference
    python benchmarks/latency.py --suite ops                            # ATen ops (and CUDA kernels) per layer
    python benchmarks/latency.py --device cuda --dtype bfloat16 --batch 128 --modes eager compile cudagraphs

The variants are timed interleaved (dense, seed, paper in turn, repeat after repeat, the
first of each round rotating so that none always follows the same one), never in blocks: on
CPUs, allocator and page-fault state differ between blocks and flatter the later ones, while
a real network interleaves its layers. Each time is the median over ``--repeats`` after
``--warmup`` rounds (CUDA: CUDA events); each ratio is the median of the per-round ratios, so
that a machine whose load drifts during the run compares like with like. On a shared, loaded
CPU machine ``--clock cpu`` times the process's CPU time instead of wall time (with
``--threads 1`` that is the computing thread's own time, unaffected by waiting for a core). Inference runs in eval mode under
``torch.inference_mode``; a training step is forward + backward of ``output.sum()`` in train
mode. ``--dtype bfloat16|float16`` runs under ``torch.autocast``. ``--modes compile`` wraps
each module in ``torch.compile`` (inductor), ``cudagraphs`` in ``torch.compile(mode=
"reduce-overhead")`` (CUDA graphs); compilation is outside the timing. Memory format: NCHW
and channels_last on CPU, channels_last on CUDA, unless ``--formats`` says otherwise.

``--suite ops`` counts, per layer at C=64 (8x8 input, batch 2), the ATen operators
dispatched (a ``TorchDispatchMode``; views and ``detach`` included) in an inference forward
(plain, and after ``optimize_for_inference``) and in a training forward + backward, and on
CUDA the kernels the profiler records; ``--op-list`` prints each sequence in order. The table gives milliseconds and the ratios to the dense conv
(or the original network); ``--json`` writes every row, the op counts, the targets and the
environment. The targets of the speed issue are checked at the end.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
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
from torch.utils._python_dispatch import TorchDispatchMode

from scconv_surgery import ScConv, ScConvConfig, convert, optimize_for_inference

LAYER_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-50's four stages: (C, H = W)
VARIANTS = ("dense", "seed", "paper")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Row:
    suite: str  # "layer" or "network"
    case: str  # "C=64@56" or "resnet50"
    batch: int
    mode: str  # "eager", "compile" or "cudagraphs"
    memory_format: str  # "contiguous" or "channels_last"
    step: str  # "inference" or "train"
    dense_ms: float
    seed_ms: float
    paper_ms: float
    seed_over_dense: float  # median of the per-round ratios
    paper_over_dense: float

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def interleaved_ms(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                   repeats: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Milliseconds of each callable per round, the callables run in turn each round, the
    first one rotating from round to round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats):
        start = round_ % len(names)
        for name in names[start:] + names[:start]:
            fn = fns[name]
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(device)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times[name].append(start.elapsed_time(end))
            else:
                start_s = clock()
                fn()
                times[name].append((clock() - start_s) * 1e3)
    return times


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_step(module: nn.Module, x: torch.Tensor, step: str, mode: str, dtype: torch.dtype
              ) -> Callable[[], object]:
    """A callable running one inference or training step of ``module`` on ``x``."""
    module = module.train() if step == "train" else module.eval()
    if mode == "compile":
        run: Callable = torch.compile(module)
    elif mode == "cudagraphs":
        run = torch.compile(module, mode="reduce-overhead")
    else:
        run = module
    if step == "inference":
        def infer() -> object:
            with torch.inference_mode(), autocast(x.device, dtype):
                return run(x)
        return infer
    x = x.detach().requires_grad_()

    def train() -> object:
        module.zero_grad(set_to_none=True)
        with autocast(x.device, dtype):
            out = run(x)
        out.float().sum().backward()
        return out
    return train


def prepare(modules: dict[str, nn.Module], x: torch.Tensor, args: argparse.Namespace, fmt: str,
            step: str) -> tuple[dict[str, nn.Module], torch.Tensor]:
    """Move to the device and memory format; ``--optimize-for-inference`` for SCConv inference."""
    inp = x.to(args.device)
    if fmt == "channels_last":
        inp = inp.contiguous(memory_format=torch.channels_last)
    out = {}
    for name, module in modules.items():
        module = module.to(args.device)
        if fmt == "channels_last":
            module = module.to(memory_format=torch.channels_last)
        if name != "dense":
            merge = "auto" if args.optimize_for_inference and step == "inference" else "never"
            optimize_for_inference(module.eval(), tuple(x.shape[1:]), batch_size=x.shape[0], merge=merge)
        out[name] = module
    return out, inp


def time_variants(modules: dict[str, nn.Module], x: torch.Tensor, args: argparse.Namespace, mode: str,
                  fmt: str, step: str) -> dict[str, list[float]]:
    modules, inp = prepare(modules, x, args, fmt, step)
    fns = {name: make_step(m, inp, step, mode, args.dtype) for name, m in modules.items()}
    if mode != "eager":
        for fn in fns.values():  # compile (and record CUDA graphs) outside the timing
            fn()
            fn()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ms = interleaved_ms(fns, args.device, args.warmup, args.repeats, clock)
    if mode != "eager":
        torch._dynamo.reset()
    return ms


def make_row(suite: str, case: str, batch: int, mode: str, fmt: str, step: str, ms: dict[str, list[float]]) -> Row:
    def ratio(name: str) -> float:
        return statistics.median(t / d for t, d in zip(ms[name], ms["dense"]))

    median = {name: statistics.median(t) for name, t in ms.items()}
    return Row(suite, case, batch, mode, fmt, step, median["dense"], median["seed"], median["paper"],
               ratio("seed"), ratio("paper"))


def layer_modules(channels: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"dense": nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            "seed": ScConv(channels, config=ScConvConfig(variant="seed")),
            "paper": ScConv(channels)}


def layer_rows(args: argparse.Namespace) -> list[Row]:
    rows = []
    for channels, size in args.shapes:
        for batch in args.batch:
            x = torch.randn(batch, channels, size, size)
            for mode in args.modes:
                for fmt in args.formats:
                    for step in args.steps:
                        ms = time_variants(layer_modules(channels), x, args, mode, fmt, step)
                        rows.append(make_row("layer", f"C={channels}@{size}", batch, mode, fmt, step, ms))
                        report_progress(rows[-1])
    return rows


def network_rows(args: argparse.Namespace) -> list[Row]:
    import timm

    torch.manual_seed(0)
    base = timm.create_model("resnet50")
    modules = {"dense": base, "seed": convert(base, config=ScConvConfig(variant="seed"))[0], "paper": convert(base)[0]}
    rows = []
    for batch in args.batch:
        x = torch.randn(batch, 3, 224, 224)
        for mode in args.modes:
            for fmt in args.formats:
                for step in args.steps:
                    ms = time_variants({k: copy.deepcopy(v) for k, v in modules.items()}, x, args, mode, fmt, step)
                    rows.append(make_row("network", "resnet50", batch, mode, fmt, step, ms))
                    report_progress(rows[-1])
    return rows


class _OpRecorder(TorchDispatchMode):
    """Records every ATen operator dispatched, in order (views and ``detach`` included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def record_ops(module: nn.Module, x: torch.Tensor, step: str) -> list[str]:
    """ATen operators of one inference forward (eval, no grad) or one train forward + backward."""
    if step == "inference":
        module.eval()
        with torch.no_grad():
            module(x)  # warm: caches built outside the count
            with _OpRecorder() as recorder:
                module(x)
        return recorder.ops
    module.train()
    x = x.detach().requires_grad_()
    grad = torch.ones_like(module(x))
    module.zero_grad(set_to_none=True)
    with _OpRecorder() as recorder:
        module(x).backward(grad)
    return recorder.ops


def count_kernels(module: nn.Module, x: torch.Tensor, step: str) -> int:
    """CUDA kernels the profiler records in one inference forward or one train step."""
    from torch.profiler import ProfilerActivity, profile

    fn = make_step(module, x, step, "eager", torch.float32)
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def op_counts(args: argparse.Namespace) -> list[dict]:
    """Operators (and CUDA kernels) per layer at C=64, for each variant."""
    results = []
    for fmt in ("channels_last", "contiguous"):
        memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        x = torch.randn(2, 64, 8, 8, device=args.device).contiguous(memory_format=memory_format)
        results += _op_counts_for(args, x, fmt)
    return results


def _op_counts_for(args: argparse.Namespace, x: torch.Tensor, fmt: str) -> list[dict]:
    results = []
    for name, module in layer_modules(64).items():
        module = module.to(args.device)
        sequences = {"inference_ops": record_ops(module, x, "inference"), "train_ops": record_ops(module, x, "train")}
        if name != "dense":
            optimize_for_inference(module, merge="always")
            sequences["inference_ops_optimized"] = record_ops(module, x, "inference")
            optimize_for_inference(module, merge="never")
        row: dict = {"variant": name, "memory_format": fmt}
        row.update({key: len(ops) for key, ops in sequences.items()})
        row.update({f"{key}_by_name": dict(collections.Counter(ops)) for key, ops in sequences.items()})
        row.update({f"{key}_sequence": ops for key, ops in sequences.items()})
        if args.op_list:
            for key, ops in sequences.items():
                print(f"{name} {fmt} {key} ({len(ops)}): {' '.join(ops)}")
        if args.device.type == "cuda":
            xb = torch.randn(64, 64, 56, 56, device=args.device).contiguous(memory_format=x.suggest_memory_format())
            row["inference_kernels"] = count_kernels(module, xb, "inference")
            row["train_kernels"] = count_kernels(module, xb, "train")
        results.append(row)
        print(f"  ops {name} {fmt}: " + ", ".join(f"{k} {v}" for k, v in row.items() if isinstance(v, int)),
              file=sys.stderr, flush=True)
    return results


def report_progress(row: Row) -> None:
    print(f"  {row.case} b{row.batch} {row.mode} {row.memory_format} {row.step}: dense {row.dense_ms:.2f} ms, "
          f"seed {row.seed_ms:.2f} ms, paper {row.paper_ms:.2f} ms", file=sys.stderr, flush=True)


def print_table(rows: list[Row], ops: list[dict]) -> None:
    header = ("suite", "case", "batch", "mode", "format", "step", "dense ms", "seed ms", "paper ms",
              "seed/dense", "paper/dense")
    lines = [header] + [(r.suite, r.case, str(r.batch), r.mode, r.memory_format, r.step, f"{r.dense_ms:.2f}",
                         f"{r.seed_ms:.2f}", f"{r.paper_ms:.2f}", f"{r.seed_over_dense:.2f}x",
                         f"{r.paper_over_dense:.2f}x") for r in rows]
    if rows:
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        for i, line in enumerate(lines):
            print("  ".join(c.rjust(w) if j >= 2 else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths))))
            if i == 0:
                print("  ".join("-" * w for w in widths))
    for row in ops:
        print(f"ops per layer, {row['variant']} {row['memory_format']}: " + ", ".join(f"{k} {v}" for k, v in row.items() if isinstance(v, int)))


def check_targets(rows: list[Row], ops: list[dict], device: torch.device) -> list[dict]:
    """The speed issue's targets, met or missed (only those this run measured)."""
    def find(suite: str, case: str, mode: str = "eager", step: str = "inference") -> list[Row]:
        return [r for r in rows if (r.suite, r.case, r.mode, r.step) == (suite, case, mode, step)]

    targets = []

    def target(name: str, candidates: list[Row], value: Callable[[Row], float], limit: float) -> None:
        for r in candidates:
            v = value(r)
            targets.append({"target": f"{name} (b{r.batch}, {r.memory_format})", "value": round(v, 3),
                            "limit": limit, "met": v <= limit})

    paper = lambda r: r.paper_over_dense  # noqa: E731
    if device.type == "cpu":
        target("C=64@56 eager inference: paper/dense <= 1.0", find("layer", "C=64@56"), paper, 1.0)
        target("C=256@14 eager inference: paper/dense <= 0.5", find("layer", "C=256@14"), paper, 0.5)
        target("resnet50 eager inference: paper/dense <= 0.85", find("network", "resnet50"), paper, 0.85)
        target("resnet50 compiled inference: paper/dense <= 0.80", find("network", "resnet50", "compile"), paper, 0.80)
    else:
        target("resnet50 compiled inference: paper/dense <= 1.0", find("network", "resnet50", "compile"), paper, 1.0)
        target("resnet50 compiled train step: paper/dense <= 1.2",
               find("network", "resnet50", "compile", "train"), paper, 1.2)
        target("resnet50 eager train step: paper/dense <= 1.5", find("network", "resnet50", "eager", "train"),
               paper, 1.5)
        target("C=64@56 compiled inference: paper/dense <= 1.5", find("layer", "C=64@56", "compile"), paper, 1.5)
    for row in ops:  # on channels_last input, the format CUDA runs by default
        if row["variant"] != "paper" or row["memory_format"] != "channels_last":
            continue
        for key, limit in (("inference_ops_optimized", 24), ("inference_ops", 24), ("train_ops", 80),
                           ("inference_kernels", 12), ("train_kernels", 40)):
            if key in row:
                targets.append({"target": f"paper C=64 channels_last {key} <= {limit}", "value": row[key], "limit": limit,
                                "met": row[key] <= limit})
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("layers", "networks", "ops", "all"), default="all")
    parser.add_argument("--shapes", nargs="+", default=[f"{c}@{h}" for c, h in LAYER_SHAPES],
                        help="layer shapes as C@H (default: ResNet-50's four stages)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: 8 on CPU, 64 and 128 on CUDA)")
    parser.add_argument("--modes", nargs="+", choices=("eager", "compile", "cudagraphs"), default=["eager", "compile"])
    parser.add_argument("--formats", nargs="+", choices=("contiguous", "channels_last"),
                        help="memory formats (default: both on CPU, channels_last on CUDA)")
    parser.add_argument("--steps", nargs="+", choices=("inference", "train"), default=["inference", "train"])
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="autocast dtype (float32: no autocast)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="CPU timing clock: wall time, or the process's CPU time (for a loaded machine; "
                             "use with --threads 1)")
    parser.add_argument("--op-list", action="store_true", help="--suite ops: print each operator sequence")
    parser.add_argument("--json", help="write the rows, op counts, targets and the environment to this file")
    parser.add_argument("--optimize-for-inference", action="store_true",
                        help="apply scconv_surgery.optimize_for_inference(merge='auto') to SCConv before inference steps")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    args.dtype = DTYPES[args.dtype]
    try:
        args.shapes = [tuple(int(v) for v in shape.split("@")) for shape in args.shapes]
    except ValueError:
        parser.error(f"--shapes takes C@H values such as 64@56, got {args.shapes}")
    cuda = args.device.type == "cuda"
    args.batch = args.batch or ([64, 128] if cuda else [8])
    args.formats = args.formats or (["channels_last"] if cuda else ["contiguous", "channels_last"])
    if "cudagraphs" in args.modes and not cuda:
        parser.error("--modes cudagraphs needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[Row] = []
    ops: list[dict] = []
    if args.suite in ("ops", "all"):
        ops = op_counts(args)
    if args.suite in ("layers", "all"):
        rows += layer_rows(args)
    if args.suite in ("networks", "all"):
        rows += network_rows(args)
    print_table(rows, ops)
    targets = check_targets(rows, ops, args.device)
    print()
    for t in targets:
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    document = {"environment": {"device": str(args.device), "device_name": torch.cuda.get_device_name(args.device)
                                if cuda else platform.processor(), "threads": torch.get_num_threads(),
                                "dtype": str(args.dtype), "torch": torch.__version__, "clock": args.clock,
                                "python": platform.python_version(), "machine": platform.machine(),
                                "warmup": args.warmup, "repeats": args.repeats},
                "rows": [r.to_dict() for r in rows], "ops": ops, "targets": targets}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
    print(json.dumps({"targets_met": sum(t["met"] for t in targets), "targets": len(targets)}))


if __name__ == "__main__":
    main()
