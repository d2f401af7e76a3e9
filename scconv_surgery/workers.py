"""Running a function over many items in worker processes, so that one item cannot end the run.

A model whose constructor segfaults, exhausts memory or hangs must not take a survey of
hundreds of models down with it: :func:`map_in_workers` runs each item in a spawned worker
process, with an optional time limit, and reports a crash as :class:`WorkerCrash` for the one
item that caused it.
"""
from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["WorkerCrash", "map_in_workers"]

_END = object()  # the end of an item iterator


class WorkerCrash(RuntimeError):
    """A worker process died (a segfault, or killed for memory) while it ran one item."""


def _call_with_timeout(fn: Callable[[Any], Any], item: Any, timeout_s: float | None) -> Any:
    """``fn(item)`` in a worker; ``TimeoutError`` after ``timeout_s`` (SIGALRM, Unix main thread)."""
    if not timeout_s or not hasattr(signal, "SIGALRM"):
        return fn(item)

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took longer than {timeout_s:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn(item)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_pool(fn: Callable[[Any], Any], items: list, jobs: int, timeout_s: float | None,
              on_result: Callable[[Any, Any], None]) -> list:
    """Run ``items`` in a pool of ``jobs`` spawned workers until it breaks; return the items it
    had in flight when it broke (the suspects), then the ones it never started."""
    queue = iter(items)
    running: dict[Future, Any] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, max_tasks_per_child=200) as pool:
        while True:
            while len(running) < jobs and (item := next(queue, _END)) is not _END:  # one per worker
                running[pool.submit(_call_with_timeout, fn, item, timeout_s)] = item
            if not running:
                return []
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    return [item, *running.values(), *queue]
                except Exception as err:  # fn raised: its result is the exception
                    result = err
                on_result(item, result)



def map_in_workers(fn: Callable[[Any], Any], items: Sequence[Any], *, jobs: int, timeout_s: float | None = None,
                   on_result: Callable[[Any, Any], None]) -> None:
    """Call ``fn`` on each item in ``jobs`` worker processes, isolating crashes.

    ``on_result(item, result)`` is called in this process as each finishes, in completion
    order; ``result`` is what ``fn`` returned, or the exception it raised (``TimeoutError``
    after ``timeout_s``), or :class:`WorkerCrash` when the worker died running it. A crash
    breaks the pool: the items then in flight are run again one at a time, each in a fresh
    worker, to find the one that crashes; the others go on in a new pool. ``jobs=0`` runs
    everything in this process instead (no start-up cost; a crash then ends the process, and
    ``timeout_s`` needs the main thread).

    Args:
        fn: a picklable callable (a module-level function or a ``functools.partial`` of one).
        items: picklable arguments.
        jobs: worker processes (spawned: each imports torch afresh, a few seconds; as with any
            ``multiprocessing`` start method but fork, the calling script's own code must sit
            under ``if __name__ == "__main__":``).
        timeout_s: per-item limit, or None.
    """
    if jobs <= 0:
        for item in items:
            try:
                result = _call_with_timeout(fn, item, timeout_s)
            except Exception as err:
                result = err
            on_result(item, result)  # once per item: an exception of on_result itself propagates
        return
    pending = list(items)
    while pending:
        left = _run_pool(fn, pending, jobs, timeout_s, on_result)
        suspects, pending = left[:jobs], left[jobs:]
        for item in suspects:
            if _run_pool(fn, [item], 1, timeout_s, on_result):
                on_result(item, WorkerCrash(f"the worker process died while it ran {item!r}"))
