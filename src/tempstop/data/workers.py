"""Map a function over items in worker processes, with a per-item timeout.

Video decoding is the reason this module exists: decord 0.6.0 can hang forever on a file that
over-reports its frame count, and a corrupt file can crash the decoder (segfault). A pool
such as :mod:`concurrent.futures` cannot kill one stuck task, and a crashed worker breaks the
whole pool. :func:`map_with_timeout` runs each call in its own long-lived worker process,
kills and replaces a worker whose task runs past the timeout, replaces a worker that died,
and reports both as errors for that item only; the other items go on.

Workers are started with the ``spawn`` method by default (``forkserver`` also works): decord
and torch keep threads, and forking a process that has threads can deadlock the child.
The consequence is that ``fn`` must be picklable by reference: a module-level function of an
importable module (not a lambda, not a closure).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any


class WorkerError(Exception):
    """A task did not produce a result; ``str(err)`` is a one-line reason for reports."""


class TaskFailed(WorkerError):
    """The function raised; the message holds the exception type and text."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details  # the worker-side traceback, for logs


class TaskTimeout(WorkerError):
    """The task ran past the timeout; its worker was killed."""


class WorkerCrashed(WorkerError):
    """The worker process died while running the task (e.g. a segfault in a decoder)."""


# How many workers may die before ever becoming ready before we give up: a worker that
# cannot even start (bad import, unpicklable fn) would otherwise be respawned forever.
_MAX_START_FAILURES = 3


def _worker_main(fn: Callable[[Any], Any], conn: Connection) -> None:
    """Worker loop: announce readiness, then run ``fn`` on each received item."""
    # Ctrl-C goes to the whole process group; the parent decides what to do, workers must not
    # die with a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(("ready", None, None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # parent went away
            return
        if msg is None:
            return
        task_id, item = msg
        try:
            reply = (task_id, True, fn(item))
        except Exception as exc:  # report every failure; the worker stays alive
            reply = (task_id, False, (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable result
            conn.send((task_id, False, (f"cannot send result back: {type(exc).__name__}: {exc}", "")))


@dataclass
class _Worker:
    proc: Any  # multiprocessing.Process of the chosen context
    conn: Connection
    ready: bool = False
    task: tuple[int, Any] | None = None  # (task id, item) while busy
    started: float = 0.0  # when the current task was sent
    spawned: float = field(default_factory=time.monotonic)

    def stop(self, kill: bool = False) -> None:
        """Stop the process: politely when idle, with SIGKILL when stuck or ``kill``."""
        if not kill and self.proc.is_alive():
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                kill = True
            self.proc.join(timeout=2.0)
        if self.proc.is_alive():
            self.proc.kill()  # SIGKILL: a decoder stuck in C code ignores nothing else reliably
            self.proc.join(timeout=5.0)
        self.conn.close()


def _start_worker(ctx: Any, fn: Callable[[Any], Any]) -> _Worker:
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_worker_main, args=(fn, child_conn), daemon=True)
    proc.start()
    child_conn.close()  # so that the parent sees EOF when the child dies
    return _Worker(proc=proc, conn=parent_conn)


def _exit_reason(proc: Any) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def map_with_timeout(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int = 1,
    timeout_s: float | None = None,
    desc: str | None = None,
    *,
    progress: bool = True,
    start_method: str = "spawn",
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, result)`` for every item, in completion order.

    ``result`` is ``fn(item)`` or a :class:`WorkerError` instance (:class:`TaskFailed`,
    :class:`TaskTimeout`, :class:`WorkerCrashed`): failures are values, not exceptions, so one
    bad item never stops the others. ``workers=0`` runs in the calling process (no isolation,
    no timeout; for debugging and for measuring the pool's own overhead). ``timeout_s`` counts
    from the moment a ready worker receives the item, so process start-up is never charged to
    a task. A tqdm bar titled ``desc`` is shown when ``progress`` is true.
    """
    from tqdm.auto import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress or not items, leave=True)
    try:
        if workers <= 0:
            for item in items:
                try:
                    out: Any = fn(item)
                except Exception as exc:
                    out = TaskFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc())
                bar.update(1)
                yield item, out
            return
        for item, out in _run_pool(fn, items, workers, timeout_s, start_method):
            bar.update(1)
            yield item, out
    finally:
        bar.close()


def _run_pool(
    fn: Callable[[Any], Any],
    items: list[Any],
    workers: int,
    timeout_s: float | None,
    start_method: str,
) -> Iterator[tuple[Any, Any]]:
    """The scheduling loop behind :func:`map_with_timeout` (``workers >= 1``)."""
    ctx = mp.get_context(start_method)
    pending: deque[tuple[int, Any]] = deque(enumerate(items))
    pool = [_start_worker(ctx, fn) for _ in range(min(workers, len(items)))]
    start_failures = 0
    try:
        while pending or any(w.task is not None for w in pool):
            for w in pool:  # hand out work to every idle, ready worker
                if w.ready and w.task is None and pending:
                    w.task, w.started = pending.popleft(), time.monotonic()
                    w.conn.send(w.task)
            for w in wait([w.conn for w in pool], timeout=_next_deadline(pool, timeout_s)):
                worker = next(x for x in pool if x.conn is w)
                try:
                    kind, ok, payload = worker.conn.recv()
                except (EOFError, OSError):  # the process died: crash, or failed start-up
                    worker.proc.join(timeout=5.0)
                    reason = _exit_reason(worker.proc)
                    if worker.task is not None:
                        yield worker.task[1], WorkerCrashed(f"worker process died ({reason})")
                    elif not worker.ready:
                        start_failures += 1
                        if start_failures >= _MAX_START_FAILURES:
                            raise RuntimeError(
                                f"worker processes for {getattr(fn, '__qualname__', fn)} die at "
                                f"start-up ({reason}); is the function importable?"
                            ) from None
                    _replace(pool, worker, ctx, fn, needed=bool(pending))
                    continue
                if kind == "ready":
                    worker.ready = True
                    continue
                task, worker.task = worker.task, None
                if ok:
                    yield task[1], payload
                else:
                    yield task[1], TaskFailed(payload[0], payload[1])
            if timeout_s is not None:
                now = time.monotonic()
                for worker in list(pool):
                    if worker.task is not None and now - worker.started > timeout_s:
                        item = worker.task[1]
                        _replace(pool, worker, ctx, fn, needed=bool(pending))
                        yield item, TaskTimeout(f"timed out after {timeout_s:g} s (worker killed)")
    finally:
        for w in pool:
            w.stop(kill=w.task is not None or not w.ready)


def _next_deadline(pool: list[_Worker], timeout_s: float | None) -> float | None:
    """Seconds until the earliest running task times out (``None``: wait for a message)."""
    if timeout_s is None:
        return None
    starts = [w.started for w in pool if w.task is not None]
    if not starts:
        return None
    return max(0.0, min(starts) + timeout_s - time.monotonic()) + 0.001


def _replace(pool: list[_Worker], worker: _Worker, ctx: Any, fn: Callable, needed: bool) -> None:
    """Kill a dead or stuck worker; start a fresh one in its place if work remains."""
    worker.stop(kill=True)
    if needed:
        pool[pool.index(worker)] = _start_worker(ctx, fn)
    else:
        pool.remove(worker)
