"""Timing on the user's device: which device, which clock, and how variants are timed against
each other (interleaved, round by round, the order rotating each round; medians of per-round
ratios with their interquartile range). :mod:`scconv_surgery.profiling` times layers and whole
networks with these.

On CPUs the default clock is the CPU time of the calling thread (``time.thread_time``), meant to
run with one intra-op thread (:func:`single_thread`): on a shared, loaded machine wall-clock time
is mostly other processes' noise. On CUDA devices it is CUDA events around the call, after a
synchronize. Every clock is a :class:`Timer`; tests inject their own.
"""
from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from .errors import DeviceError

__all__ = ["resolve_device", "device_name", "Timer", "ThreadTimer", "WallTimer", "CudaEventTimer", "default_timer",
           "single_thread", "interleaved", "ratio_stats"]


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` a user names (``cpu``, ``cuda``, ``cuda:1``), checked to exist here.

    ``cuda`` without an index is the current CUDA device. Call it before any work.

    Raises:
        DeviceError: not a device name, a type other than cpu / cuda, no CUDA on this machine, or an
            index beyond the CUDA devices present.
    """
    text = str(device)
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise DeviceError(text, f"not a device name ({err}); use cpu, cuda or cuda:N") from err
    if parsed.type == "cpu":
        return torch.device("cpu")
    if parsed.type != "cuda":
        raise DeviceError(text, f"profiling measures cpu and cuda devices, not {parsed.type}")
    if not torch.cuda.is_available():
        raise DeviceError(text, "CUDA is not available on this machine")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if parsed.index is None else parsed.index
    if index >= count:
        raise DeviceError(text, f"this machine has {count} CUDA device{'s' if count != 1 else ''} "
                          f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """What the hardware is called: the CUDA device's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


class Timer(Protocol):
    """A clock: ``timer(fn, label) -> seconds`` of one call of ``fn``.

    ``label`` is ``(layer, variant)``: ``(conv name, "dense" | "scconv")`` for a layer,
    ``("", "original" | "converted")`` for a whole network. A timer may call ``fn`` several times and
    return the mean (small layers). ``name`` enters the cache key.
    """

    name: str

    def __call__(self, fn: Callable[[], object], label: tuple[str, str]) -> float: ...


@dataclass
class ThreadTimer:
    """CPU time of the calling thread (``time.thread_time``), as many calls as reach ``min_seconds``.

    Meant to run with one intra-op thread (:func:`profile_plan` sets it), so that all of PyTorch's
    work is on the calling thread and other processes' load does not count.
    """

    min_seconds: float = 0.005
    name: str = "thread_time"
    _numbers: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    def __call__(self, fn: Callable[[], object], label: tuple[str, str]) -> float:
        number = self._numbers.get(label)
        if number is None:
            start = time.thread_time()
            fn()
            number = self._numbers[label] = min(1000, max(1, math.ceil(self.min_seconds / max(
                time.thread_time() - start, 1e-6))))
        start = time.thread_time()
        for _ in range(number):
            fn()
        return (time.thread_time() - start) / number


@dataclass
class WallTimer:
    """Wall-clock time (``time.perf_counter``), synchronizing a CUDA device before and after."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = "wall"

    def __call__(self, fn: Callable[[], object], label: tuple[str, str]) -> float:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


@dataclass
class CudaEventTimer:
    """CUDA events recorded around the call on the device's current stream (after a synchronize)."""

    device: torch.device
    name: str = "cuda_event"

    def __call__(self, fn: Callable[[], object], label: tuple[str, str]) -> float:
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.device(self.device):
            start.record()
            fn()
            end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


def default_timer(device: torch.device) -> Timer:
    """CUDA events on a CUDA device, else the calling thread's CPU time."""
    return CudaEventTimer(device) if device.type == "cuda" else ThreadTimer()


@contextlib.contextmanager
def single_thread(enabled: bool) -> Iterator[None]:
    """``torch.set_num_threads(1)`` meanwhile, restored after."""
    threads = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if enabled:
            torch.set_num_threads(threads)


def interleaved(fns: Mapping[str, Callable[[], object]], layer: str, timer: Timer, repeats: int
                 ) -> dict[str, list[float]]:
    """``repeats`` rounds; in each, every variant once, the order rotated by one each round."""
    names = list(fns)
    for name in names:  # warm-up: allocator, cudnn's algorithm choice, lazy initialisation
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timer(fns[name], (layer, name)))
    return times


def ratio_stats(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range of the per-round ratios ``after / before``."""
    ratios = [b / a if a > 0 else math.inf for a, b in zip(before, after)]
    finite = [r for r in ratios if math.isfinite(r)] or [1.0]
    quartiles = statistics.quantiles(finite, n=4) if len(finite) >= 2 else [finite[0]] * 3
    return statistics.median(finite), quartiles[2] - quartiles[0]
