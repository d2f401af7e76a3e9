"""Calibration cost: wall time and extra peak memory of calibrating ResNet-50's 16 SCConvs.

    python benchmarks/calibration.py                          # 512 images at 224x224, the CLI's defaults
    python benchmarks/calibration.py --images 64 --steps 20   # a quick look
    python benchmarks/calibration.py --device cuda --json calibration.json

The model is timm's ``resnet50`` with random weights (timing does not depend on the weights),
converted with the default rules (the 16 bottleneck 3x3 convs); the images are random smooth
images, built before the measurement starts. Memory: the process's resident set is sampled
every 20 ms during :func:`scconv_surgery.calibrate`; "extra" is its peak minus its value when
the call starts (the models and the images are already in memory). On CUDA, the peak of
``torch.cuda.max_memory_allocated`` over the allocated memory at the start is reported too.
The table lists each phase (recording, fitting each layer, BatchNorm statistics) and checks
the issue's targets (<= 10 minutes, <= 1 GiB extra).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import torch
import torch.nn.functional as F

from scconv_surgery import calibrate, convert

TARGET_SECONDS = 600
TARGET_EXTRA_BYTES = 2**30


class PeakRSS:
    """Samples the resident set size of this process (from /proc/self/statm) in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` float16 images with spatial structure (upsampled noise plus grain)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.empty(n, 3, size, size, dtype=torch.float16)
    for start in range(0, n, 64):
        count = min(64, n - start)
        coarse = torch.randn(count, 3, size // 16, size // 16, generator=g)
        images[start:start + count] = (F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
                                       + 0.1 * torch.randn(count, 3, size, size, generator=g))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", help="a timm model name (random weights)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per layer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--strategy", default="sequential", choices=("sequential", "independent"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm

    torch.manual_seed(0)
    original = timm.create_model(args.model).eval()
    converted, plan = convert(original)
    images = smooth_images(args.images, args.size)
    with torch.inference_mode():  # how fast this machine is right now: one forward of a batch of 8
        batch = images[:8].float()
        original(batch)
        reference_start = time.perf_counter()
        original(batch)
        reference_ms = 1000 * (time.perf_counter() - reference_start)
    phases: list[tuple[str, float]] = []
    fitting: dict[str, list[float]] = {}  # layer -> [time of its first step, time of its last step]
    started = time.perf_counter()

    def on_step(message: str) -> None:
        phases.append((message, time.perf_counter() - started))
        print(f"[{phases[-1][1]:7.1f} s] {message}", flush=True)

    def on_fit(name: str, step: int, steps: int, loss: float) -> None:
        now = time.perf_counter() - started
        fitting.setdefault(name, [now, now])[1] = now

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cuda_start = torch.cuda.memory_allocated() if args.device.startswith("cuda") else 0
    with PeakRSS() as rss:
        result = calibrate(original, converted, images, steps=args.steps, batch_size=args.batch_size,
                           strategy=args.strategy, device=args.device, on_step=on_step, on_fit=on_fit)
    total = time.perf_counter() - started
    extra = rss.peak - rss.start
    cuda_extra = torch.cuda.max_memory_allocated() - cuda_start if args.device.startswith("cuda") else None

    print(f"\n{args.model}: {len(result.layers)} layers, {args.images} images at {args.size}x{args.size}, "
          f"{args.steps} steps x batch {args.batch_size}, {args.strategy}, {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'layer':<18} {'error before':>12} {'error after':>12} {'seconds':>8}")
    for layer in result.layers:
        print(f"{layer.name:<18} {layer.error_before:>12.4f} {layer.error_after:>12.4f} {layer.seconds:>8.1f}")
    bn_start = next((t for message, t in phases if message.startswith("re-estimating")), total)
    fit_seconds = sum(last - first for first, last in fitting.values())
    print(f"optimizer steps: {fit_seconds:.1f} s; BatchNorm statistics: {total - bn_start:.1f} s; recording "
          f"activations and measuring errors: {bn_start - fit_seconds:.1f} s")
    print(f"this machine now: {reference_ms:.0f} ms for one eager forward of {args.model} on a batch of 8 at "
          f"{args.size}x{args.size} ({torch.get_num_threads()} threads)")
    print(f"total: {total:.1f} s (target <= {TARGET_SECONDS} s: {'met' if total <= TARGET_SECONDS else 'MISSED'})")
    print(f"extra peak RSS: {extra / 2**20:.0f} MiB (target <= 1024 MiB: "
          f"{'met' if extra <= TARGET_EXTRA_BYTES else 'MISSED'}); images: {images.nbytes / 2**20:.0f} MiB, "
          f"held before the call")
    if cuda_extra is not None:
        print(f"extra peak CUDA memory: {cuda_extra / 2**20:.0f} MiB")
    document = {"model": args.model, "images": args.images, "size": args.size, "steps": args.steps,
                "batch_size": args.batch_size, "strategy": args.strategy, "device": args.device,
                "threads": torch.get_num_threads(), "seconds": round(total, 1),
                "optimizer_seconds": round(fit_seconds, 1), "batchnorm_seconds": round(total - bn_start, 1),
                "reference_forward_ms": round(reference_ms, 1),
                "extra_peak_rss_bytes": extra, "extra_peak_cuda_bytes": cuda_extra,
                "images_bytes": images.nbytes, "phases": [{"message": m, "at_s": round(t, 1)} for m, t in phases],
                "calibration": result.to_dict(),
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "cpus": os.cpu_count(), "torch": torch.__version__}}
    print(json.dumps({k: v for k, v in document.items() if k not in ("calibration", "phases")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)


if __name__ == "__main__":
    main()
