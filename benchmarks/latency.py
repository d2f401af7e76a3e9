"""Latency and operator counts: SCConv against the dense 3x3 conv it replaces, and converted
ResNet-50s against the original, as ratios, in PyTorch and in onnxruntime.

    python benchmarks/latency.py                                        # CPU: every target of the speed issue
    python benchmarks/latency.py --suite layers --shapes 32@160 64@80 --batch 1   # yolo-sized layers
    python benchmarks/latency.py --threads 2                            # 2 threads, OMP_WAIT_POLICY=PASSIVE
    python benchmarks/latency.py --suite ops                            # ATen ops (and CUDA kernels) per layer
    python benchmarks/latency.py --device cuda --dtype bfloat16 --batch 128 --modes eager compile cudagraphs

Columns (``--variants``; each is timed where it applies):

- ``dense``: the original conv (or network) in PyTorch; ``seed``: SCConv, seed variant;
- ``paper``: SCConv as converted (no preparation); ``paper-opt``: after
  ``optimize_for_inference(kernels=False)`` (the PyTorch forward with cached weights);
  ``paper-kernels``: after ``optimize_for_inference()`` (the fused C++ CPU kernels; CPU only);
- ``ort-dense`` / ``ort-paper``: onnxruntime (CPU, as many intra-op threads as ``--threads``) on
  ``torch.onnx.export(..., dynamo=True, opset_version=21)`` of ``dense`` and ``paper-opt``
  (inference, float32, NCHW only).

Ratios: ``ort-paper`` against ``ort-dense``, every other column against ``dense``.

How it times, on CPUs: by default one thread, each call timed by the calling thread's own CPU
time (``time.thread_time``): other work on a shared machine delays the call but does not count,
and OpenMP does not spin. ``--threads 2`` sets ``OMP_WAIT_POLICY=PASSIVE`` (before torch loads)
and times wall-clock (``--clock`` overrides). The variants run interleaved (each round calls every
variant once, the first rotating), never in blocks; each time is the median over ``--repeats``
rounds after ``--warmup``; each ratio is the median of the per-round ratios, with the 25th-75th
percentile of those ratios as its spread. Beside each table: minor page faults per call (median
per variant; a fault is a freshly mapped page the allocator handed out) and the machine's load
average at the start and end of the table. CUDA: CUDA events, wall time.

``--suite ops`` counts, per layer at C=64 (8x8 input, batch 2), the ATen operators dispatched
(a ``TorchDispatchMode``; views and ``detach`` included) in an inference forward (plain, and
after ``optimize_for_inference``) and in a training forward + backward, and on CUDA the kernels
the profiler records; ``--op-list`` prints each sequence. ``--json`` writes every row, the op
counts, the ONNX node counts, the targets and the environment. The targets of the speed issue
are checked at the end.
"""
from __future__ import annotations

import argparse
import os
import sys

LAYER_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-50's four stages: (C, H = W)
ALL_VARIANTS = ("dense", "seed", "paper", "paper-opt", "paper-kernels", "ort-dense", "ort-paper")
CPU_VARIANTS = ("dense", "paper", "paper-opt", "paper-kernels", "ort-dense", "ort-paper")
CUDA_VARIANTS = ("dense", "seed", "paper", "paper-opt")
ONNX_OPSET = 21


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("layers", "networks", "ops", "all"), default="all")
    parser.add_argument("--shapes", nargs="+", default=[f"{c}@{h}" for c, h in LAYER_SHAPES],
                        help="layer shapes as C@H (default: ResNet-50's four stages)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: 8 on CPU, 64 and 128 on CUDA)")
    parser.add_argument("--variants", nargs="+", choices=ALL_VARIANTS,
                        help=f"columns (default CPU: {' '.join(CPU_VARIANTS)}; CUDA: {' '.join(CUDA_VARIANTS)})")
    parser.add_argument("--modes", nargs="+", choices=("eager", "compile", "cudagraphs"), default=["eager"])
    parser.add_argument("--formats", nargs="+", choices=("contiguous", "channels_last"),
                        help="memory formats (default: both on CPU, channels_last on CUDA)")
    parser.add_argument("--steps", nargs="+", choices=("inference", "train"), default=["inference"])
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="autocast dtype (float32: no autocast)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; >1 sets OMP_WAIT_POLICY=PASSIVE)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clock", choices=("thread", "process", "wall"),
                        help="CPU clock (default: thread CPU time at 1 thread, wall time otherwise)")
    parser.add_argument("--op-list", action="store_true", help="--suite ops: print each operator sequence")
    parser.add_argument("--json", help="write the rows, op counts, targets and the environment to this file")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads > 1:  # before torch (and its OpenMP runtime) loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads if ARGS is not None else 1))

import collections  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from scconv_surgery import ScConv, ScConvConfig, convert, optimize_for_inference  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CLOCKS = {"thread": time.thread_time, "process": time.process_time, "wall": time.perf_counter}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def baseline(variant: str) -> str:
    return "ort-dense" if variant.startswith("ort-") else "dense"


def interleaved(fns: dict[str, Callable[[], object]], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Per variant: milliseconds and minor page faults of each round; the variants run in turn
    each round, the first one rotating from round to round."""
    cuda = args.device.type == "cuda"
    clock = CLOCKS[args.clock]
    who = resource.RUSAGE_THREAD if args.threads == 1 else resource.RUSAGE_SELF
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    out = {name: {"ms": [], "faults": []} for name in fns}
    for round_ in range(args.repeats):
        first = round_ % len(names)
        for name in names[first:] + names[:first]:
            fn = fns[name]
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(args.device)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(args.device)
                out[name]["ms"].append(start.elapsed_time(end))
                out[name]["faults"].append(0.0)
                continue
            faults = resource.getrusage(who).ru_minflt
            started = clock()
            fn()
            out[name]["ms"].append((clock() - started) * 1e3)
            out[name]["faults"].append(float(resource.getrusage(who).ru_minflt - faults))
    return out


def summarise(case: str, batch: int, mode: str, fmt: str, step: str, suite: str,
              timings: dict[str, dict[str, list[float]]], load_before: tuple[float, ...]) -> dict:
    """One table row: medians, ratios (median of per-round ratios) with their 25-75% spread."""
    row: dict = {"suite": suite, "case": case, "batch": batch, "mode": mode, "format": fmt, "step": step,
                 "ms": {}, "ratio": {}, "spread": {}, "faults": {},
                 "loadavg": [round(v, 2) for v in load_before] + [round(v, 2) for v in os.getloadavg()]}
    for name, t in timings.items():
        row["ms"][name] = round(statistics.median(t["ms"]), 3)
        row["faults"][name] = statistics.median(t["faults"])
        base = baseline(name)
        if base in timings and name != base:
            ratios = [a / b for a, b in zip(t["ms"], timings[base]["ms"])]
            row["ratio"][name] = round(statistics.median(ratios), 3)
            row["spread"][name] = [round(quantile(ratios, 0.25), 3), round(quantile(ratios, 0.75), 3)]
    return row


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def make_step(module: nn.Module, x: torch.Tensor, step: str, mode: str, dtype: torch.dtype) -> Callable[[], object]:
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


def onnx_session(module: nn.Module, x: torch.Tensor, args: argparse.Namespace, workdir: Path, name: str):  # type: ignore[no-untyped-def]
    """An onnxruntime session on ``module`` exported with the dynamo exporter; its node count."""
    import onnx
    import onnxruntime as ort

    path = workdir / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(module.eval(), (x,), dynamo=True, opset_version=ONNX_OPSET, verbose=False).save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, len(onnx.load(str(path)).graph.node)


def variant_modules(paper: nn.Module, dense: nn.Module, seed: nn.Module | None, x: torch.Tensor,
                    variants: list[str]) -> dict[str, nn.Module]:
    """The PyTorch modules of the columns, ``paper-opt`` and ``paper-kernels`` prepared."""
    modules: dict[str, nn.Module] = {"dense": dense}
    if "seed" in variants and seed is not None:
        modules["seed"] = seed
    if "paper" in variants:
        modules["paper"] = paper
    size, batch = tuple(x.shape[1:]), x.shape[0]
    if "paper-opt" in variants or "ort-paper" in variants:
        modules["paper-opt"] = copy.deepcopy(paper)
        optimize_for_inference(modules["paper-opt"], size, batch_size=batch, kernels=False)
    if "paper-kernels" in variants and x.device.type == "cpu" and x.dtype == torch.float32:
        modules["paper-kernels"] = copy.deepcopy(paper)
        optimize_for_inference(modules["paper-kernels"], size, batch_size=batch, kernels=True)
    return modules


def time_case(suite: str, case: str, paper: nn.Module, dense: nn.Module, seed: nn.Module | None, x: torch.Tensor,
              args: argparse.Namespace, extra: dict) -> list[dict]:
    rows = []
    for mode in args.modes:
        for fmt in args.formats:
            for step in args.steps:
                inp = x.to(args.device)
                prepared = {k: m.to(args.device) for k, m in
                            ((k, copy.deepcopy(m)) for k, m in (("paper", paper), ("dense", dense), ("seed", seed))
                             if m is not None)}
                if fmt == "channels_last":
                    inp = inp.contiguous(memory_format=torch.channels_last)
                    prepared = {k: m.to(memory_format=torch.channels_last) for k, m in prepared.items()}
                inference = step == "inference"
                wanted = [v for v in args.variants if inference or v in ("dense", "seed", "paper")]
                modules = variant_modules(prepared["paper"], prepared["dense"], prepared.get("seed"), inp, wanted)
                fns = {k: make_step(m, inp, step, mode, args.dtype) for k, m in modules.items() if k in wanted}
                ort_ok = (inference and mode == "eager" and fmt == "contiguous" and args.device.type == "cpu"
                          and args.dtype == torch.float32)
                if ort_ok and {"ort-dense", "ort-paper"} & set(wanted):
                    with tempfile.TemporaryDirectory() as tmp:
                        feeds = inp.numpy()
                        for name, source in (("ort-dense", modules["dense"]), ("ort-paper", modules["paper-opt"])):
                            if name in wanted:
                                session, nodes = onnx_session(source, inp, args, Path(tmp), name)
                                input_name = session.get_inputs()[0].name
                                fns[name] = (lambda s=session, n=input_name: s.run(None, {n: feeds}))
                                extra.setdefault("onnx_nodes", {})[f"{case} {name}"] = nodes
                if mode != "eager":
                    for fn in fns.values():  # compile (and record CUDA graphs) outside the timing
                        fn()
                        fn()
                load_before = os.getloadavg()
                row = summarise(case, x.shape[0], mode, fmt, step, suite, interleaved(fns, args), load_before)
                if mode != "eager":
                    torch._dynamo.reset()
                rows.append(row)
                report_progress(row)
    return rows


def layer_rows(args: argparse.Namespace, extra: dict) -> list[dict]:
    rows = []
    for channels, size in args.shapes:
        torch.manual_seed(0)
        dense = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        seed = ScConv(channels, config=ScConvConfig(variant="seed"))
        paper = ScConv(channels)
        for batch in args.batch:
            x = torch.randn(batch, channels, size, size)
            rows += time_case("layer", f"C={channels}@{size}", paper, dense, seed, x, args, extra)
    return rows


def network_rows(args: argparse.Namespace, extra: dict) -> list[dict]:
    import timm

    torch.manual_seed(0)
    base = timm.create_model("resnet50").eval()
    paper = convert(base)[0].eval()
    seed = convert(base, config=ScConvConfig(variant="seed"))[0].eval() if "seed" in args.variants else None
    replaced = sum(isinstance(m, ScConv) for m in paper.modules())
    extra["resnet50_replaced"] = replaced
    rows = []
    for batch in args.batch:
        rows += time_case("network", "resnet50", paper, base, seed, torch.randn(batch, 3, 224, 224), args, extra)
    nodes = extra.get("onnx_nodes", {})
    if "resnet50 ort-dense" in nodes and "resnet50 ort-paper" in nodes:  # each SCConv replaces one Conv node
        extra["onnx_nodes_per_scconv"] = round((nodes["resnet50 ort-paper"] - nodes["resnet50 ort-dense"] + replaced)
                                               / replaced, 2)
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
        torch.manual_seed(0)
        layers = {"dense": nn.Conv2d(64, 64, 3, padding=1, bias=False),
                  "seed": ScConv(64, config=ScConvConfig(variant="seed")), "paper": ScConv(64)}
        for name, module in layers.items():
            module = module.to(args.device)
            sequences = {"inference_ops": record_ops(module, x, "inference"), "train_ops": record_ops(module, x, "train")}
            if name != "dense":
                optimize_for_inference(module, merge="always", kernels=False)
                sequences["inference_ops_optimized"] = record_ops(module, x, "inference")
                if args.device.type == "cpu" and name == "paper":
                    optimize_for_inference(module, merge="always")
                    sequences["inference_ops_kernels"] = record_ops(module, x, "inference")
                optimize_for_inference(module, enabled=False)
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


def report_progress(row: dict) -> None:
    cells = ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items())
    print(f"  {row['case']} b{row['batch']} {row['mode']} {row['format']} {row['step']}: {cells}",
          file=sys.stderr, flush=True)


def print_tables(rows: list[dict], args: argparse.Namespace) -> None:
    groups: dict[tuple, list[dict]] = collections.defaultdict(list)
    for r in rows:
        groups[(r["suite"], r["mode"], r["format"], r["step"])].append(r)
    for (suite, mode, fmt, step), members in groups.items():
        variants = [v for v in ALL_VARIANTS if any(v in r["ms"] for r in members)]
        print(f"\n{suite}s, {mode} {step}, {fmt}, {args.dtype_name}, {args.threads} thread(s), clock: {args.clock}; "
              f"ratio = median of per-round ratios [25%-75%] against {'ort-dense for ort-*, else ' if any(v.startswith('ort') for v in variants) else ''}dense")
        header = ["case", "batch", *variants, "faults/call (" + " ".join(variants) + ")", "load avg start / end"]
        lines = [header]
        for r in members:
            cells = []
            for v in variants:
                if v not in r["ms"]:
                    cells.append("-")
                elif v in r["ratio"]:
                    lo, hi = r["spread"][v]
                    cells.append(f"{r['ms'][v]:.2f} ms {r['ratio'][v]:.2f}x [{lo:.2f}-{hi:.2f}]")
                else:
                    cells.append(f"{r['ms'][v]:.2f} ms")
            faults = " ".join(f"{r['faults'][v]:.0f}" if v in r["faults"] else "-" for v in variants)
            load = r["loadavg"]
            lines.append([r["case"], str(r["batch"]), *cells, faults, f"{load[0]:.2f} / {load[3]:.2f}"])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        for i, line in enumerate(lines):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))


def check_targets(rows: list[dict], ops: list[dict], extra: dict, device: torch.device) -> list[dict]:
    """The speed issue's targets, met or missed (only those this run measured)."""
    targets = []

    def target(name: str, value: float, limit: float) -> None:
        targets.append({"target": name, "value": round(value, 3), "limit": limit, "met": value <= limit})

    def rows_of(suite: str, case: str, mode: str = "eager", step: str = "inference") -> list[dict]:
        return [r for r in rows if (r["suite"], r["case"], r["mode"], r["step"]) == (suite, case, mode, step)]

    if device.type == "cpu":
        limits = {"C=64@56": 0.75, "C=128@28": 0.55, "C=256@14": 0.50, "C=512@7": 0.40}
        for case, limit in limits.items():
            for r in rows_of("layer", case):
                if r["batch"] == 8:
                    for v in ("paper-kernels", "paper-opt"):
                        if v in r["ratio"]:
                            target(f"{case} b8 {r['format']} {v}/dense <= {limit}", r["ratio"][v], limit)
        for r in rows_of("network", "resnet50"):
            for v in ("paper-kernels", "paper-opt"):
                if v in r["ratio"]:
                    target(f"resnet50 b{r['batch']} {r['format']} {v}/dense <= 0.88", r["ratio"][v], 0.88)
            if "ort-paper" in r["ratio"]:
                target(f"resnet50 b{r['batch']} onnxruntime ort-paper/ort-dense <= 1.0", r["ratio"]["ort-paper"], 1.0)
        if "onnx_nodes_per_scconv" in extra:
            target(f"ONNX nodes per SCConv in resnet50 (opset {ONNX_OPSET}) <= 20", extra["onnx_nodes_per_scconv"], 20)
    else:
        for r in rows_of("network", "resnet50", "compile"):
            if "paper-opt" in r["ratio"]:
                target(f"resnet50 compiled inference b{r['batch']}: paper-opt/dense <= 1.0", r["ratio"]["paper-opt"], 1.0)
        for r in rows_of("network", "resnet50", "compile", "train"):
            target(f"resnet50 compiled train step b{r['batch']}: paper/dense <= 1.2", r["ratio"]["paper"], 1.2)
        for r in rows_of("network", "resnet50", "eager", "train"):
            target(f"resnet50 eager train step b{r['batch']}: paper/dense <= 1.5", r["ratio"]["paper"], 1.5)
        for r in rows_of("layer", "C=64@56", "compile"):
            target(f"C=64@56 compiled inference b{r['batch']}: paper/dense <= 1.5", r["ratio"]["paper"], 1.5)
    return targets


def main(args: argparse.Namespace) -> None:
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype_name = args.dtype
    args.dtype = DTYPES[args.dtype]
    try:
        args.shapes = [tuple(int(v) for v in shape.split("@")) for shape in args.shapes]
    except ValueError:
        sys.exit(f"--shapes takes C@H values such as 64@56, got {args.shapes}")
    cuda = args.device.type == "cuda"
    args.batch = args.batch or ([64, 128] if cuda else [8])
    args.formats = args.formats or (["channels_last"] if cuda else ["contiguous", "channels_last"])
    args.variants = list(args.variants or (CUDA_VARIANTS if cuda else CPU_VARIANTS))
    args.clock = args.clock or ("thread" if args.threads == 1 else "wall")
    if "cudagraphs" in args.modes and not cuda:
        sys.exit("--modes cudagraphs needs --device cuda")
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    ops: list[dict] = []
    extra: dict = {}
    if args.suite in ("ops", "all"):
        ops = op_counts(args)
    if args.suite in ("layers", "all"):
        rows += layer_rows(args, extra)
    if args.suite in ("networks", "all"):
        rows += network_rows(args, extra)
    print_tables(rows, args)
    for row in ops:
        print(f"ops per layer, {row['variant']} {row['memory_format']}: "
              + ", ".join(f"{k} {v}" for k, v in row.items() if isinstance(v, int)))
    if extra.get("onnx_nodes"):
        print("ONNX nodes (opset %d): " % ONNX_OPSET + ", ".join(f"{k} {v}" for k, v in extra["onnx_nodes"].items())
              + (f"; per SCConv in resnet50: {extra['onnx_nodes_per_scconv']}" if "onnx_nodes_per_scconv" in extra else ""))
    targets = check_targets(rows, ops, extra, args.device)
    print()
    for t in targets:
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    environment = {"device": str(args.device),
                   "device_name": torch.cuda.get_device_name(args.device) if cuda else platform.processor(),
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpu_count": os.cpu_count(),
                   "dtype": args.dtype_name, "torch": torch.__version__, "clock": args.clock,
                   "python": platform.python_version(), "machine": platform.machine(),
                   "warmup": args.warmup, "repeats": args.repeats, "command": " ".join(sys.argv)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment, "rows": rows, "ops": ops, "extra": extra, "targets": targets},
                      f, indent=2)
    print(json.dumps({"targets_met": sum(t["met"] for t in targets), "targets": len(targets)}))


if __name__ == "__main__":
    main(ARGS)
