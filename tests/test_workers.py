"""Running items in worker processes: results, exceptions, timeouts and crashes."""
import math
import signal
import time

import pytest

from scconv_surgery import workers
from scconv_surgery.workers import WorkerCrash, map_in_workers


def test_in_this_process_results_and_exceptions_are_reported_per_item():
    results = {}
    map_in_workers(math.sqrt, [4.0, -1.0], jobs=0, on_result=results.__setitem__)
    assert results[4.0] == 2.0 and isinstance(results[-1.0], ValueError)


def test_in_this_process_a_failing_callback_is_not_called_again_with_its_own_error():
    calls = []

    def on_result(item, result):
        calls.append((item, result))
        raise RuntimeError("the callback's own failure")

    with pytest.raises(RuntimeError, match="callback's own"):
        map_in_workers(math.sqrt, [4.0], jobs=0, on_result=on_result)
    assert calls == [(4.0, 2.0)]


def test_timeout_in_this_process():
    with pytest.raises(TimeoutError):
        workers._call_with_timeout(time.sleep, 5, 0.1)


def test_a_crashing_worker_is_named_and_the_rest_go_on():
    """signal.raise_signal(SIGKILL) kills its worker; SIGCHLD is ignored and returns None."""
    results = {}
    items = [signal.SIGCHLD, signal.SIGKILL, signal.SIGCHLD]
    map_in_workers(signal.raise_signal, items, jobs=1, on_result=lambda item, r: results.setdefault(item, []).append(r))
    assert results[signal.SIGCHLD] == [None, None]
    (crash,) = results[signal.SIGKILL]
    assert isinstance(crash, WorkerCrash)
