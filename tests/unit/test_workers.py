"""map_with_timeout and map_batched: results, failures, timeouts that kill a stuck worker, crashes."""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from tempstop.data.workers import TaskFailed, TaskTimeout, WorkerCrashed, map_batched, map_with_timeout

# Worker functions live at module level: spawned workers import them by name.


def task(x):
    """Double a number, or misbehave on request."""
    if x == "sleep":
        time.sleep(60)
    if x == "crash":
        ctypes.string_at(0)  # segfault, as a broken decoder would
    if x == "raise":
        raise ValueError("bad input")
    if x == "pid":
        return os.getpid()
    return x * 2


def test_results_in_worker_processes():
    out = dict(map_with_timeout(task, [1, 2, 3, "pid"], workers=2, timeout_s=30, progress=False))
    assert {k: out[k] for k in (1, 2, 3)} == {1: 2, 2: 4, 3: 6}
    assert out["pid"] != os.getpid()


def test_exception_is_reported_and_others_continue():
    out = dict(map_with_timeout(task, [1, "raise", 2], workers=1, timeout_s=30, progress=False))
    assert isinstance(out["raise"], TaskFailed) and "ValueError: bad input" in str(out["raise"])
    assert "Traceback" in out["raise"].details
    assert (out[1], out[2]) == (2, 4)


def test_timeout_kills_sleeping_task_and_continues():
    t0 = time.monotonic()
    out = list(map_with_timeout(task, ["sleep", 1, 2, 3], workers=1, timeout_s=1.0, progress=False))
    elapsed = time.monotonic() - t0
    results = dict(out)
    assert isinstance(results["sleep"], TaskTimeout) and "timed out after 1 s" in str(results["sleep"])
    # With one worker, the rest ran on the replacement after the kill.
    assert (results[1], results[2], results[3]) == (2, 4, 6)
    assert elapsed < 20


def test_crash_is_reported_and_worker_replaced():
    out = dict(map_with_timeout(task, ["crash", 5, "crash", 6], workers=1, timeout_s=30, progress=False))
    assert isinstance(out["crash"], WorkerCrashed) and "SIGSEGV" in str(out["crash"])
    assert (out[5], out[6]) == (10, 12)


def test_inline_mode_and_empty_input():
    out = dict(map_with_timeout(task, [1, "raise"], workers=0, progress=False))
    assert out[1] == 2 and isinstance(out["raise"], TaskFailed)
    assert list(map_with_timeout(task, [], workers=2, progress=False)) == []


def test_function_that_cannot_reach_workers_raises():
    # Spawned workers import the function by name; a lambda cannot travel and fails loudly.
    with pytest.raises(Exception):  # noqa: B017 (the pickling error type depends on Python)
        list(map_with_timeout(lambda x: x, [1], workers=1, progress=False))


# ---- map_batched: several items per worker message ---------------------------------------
def test_batched_results_match_one_by_one():
    batches = [[1, 2, 3], [4], [5, "pid", 6]]
    out = dict(map_batched(task, batches, workers=2, timeout_s=30, progress=False))
    assert {k: out[k] for k in (1, 2, 3, 4, 5, 6)} == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}
    assert out["pid"] != os.getpid()
    assert dict(map_batched(task, batches, workers=0, progress=False))[6] == 12


def test_an_item_that_raises_fails_alone_in_its_batch():
    out = dict(map_batched(task, [[1, "raise", 2]], workers=1, timeout_s=30, progress=False))
    assert isinstance(out["raise"], TaskFailed) and "ValueError: bad input" in str(out["raise"])
    assert "Traceback" in out["raise"].details
    assert (out[1], out[2]) == (2, 4)


def test_a_batch_that_times_out_is_redone_item_by_item():
    out = dict(map_batched(task, [[1, "sleep", 2], [3]], workers=1, timeout_s=1.0, progress=False))
    assert isinstance(out["sleep"], TaskTimeout) and "timed out after 1 s" in str(out["sleep"])
    assert (out[1], out[2], out[3]) == (2, 4, 6)


def test_a_batch_whose_worker_crashes_is_redone_item_by_item():
    out = dict(map_batched(task, [[5, "crash", 6], [7]], workers=1, timeout_s=30, progress=False))
    assert isinstance(out["crash"], WorkerCrashed) and "SIGSEGV" in str(out["crash"])
    assert (out[5], out[6], out[7]) == (10, 12, 14)
