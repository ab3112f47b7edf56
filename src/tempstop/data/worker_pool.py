"""The process side of :mod:`tempstop.data.workers`: worker processes, their start-up and the
scheduling loop that feeds them, kills the stuck ones and replaces the dead.

Standard library only: a worker imports this module (its loop lives here), so it starts in
milliseconds whatever the caller has imported (tqdm for progress bars stays in
:mod:`tempstop.data.workers`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
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
# Tasks queued in each worker (see run_pool).
_PREFETCH = 2


def failure(exc: Exception) -> tuple[str, str]:
    """A failed call as ``(one-line message, traceback)``: what :class:`TaskFailed` carries."""
    return f"{type(exc).__name__}: {exc}", traceback.format_exc()


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
            reply = (task_id, False, failure(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable result
            conn.send((task_id, False, (f"cannot send result back: {type(exc).__name__}: {exc}", "")))


@dataclass
class _Worker:
    proc: Any  # multiprocessing.Process of the chosen context
    conn: Connection
    ready: bool = False
    # Tasks sent and not answered, oldest first. The worker runs them in order, so only the
    # head is running; it started when it was sent or when the previous answer came back.
    tasks: deque = field(default_factory=deque)
    started: float = 0.0  # when the head task started

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


def call_each(message: tuple[Callable[[Any], Any], list[Any]]) -> list[tuple[bool, Any]]:
    """Run ``fn`` on every item of a batch (in a worker); each outcome ``(ok, result or
    (message, traceback))``, so one item that raises does not take its batch with it."""
    fn, batch = message
    out = []
    for item in batch:
        try:
            out.append((True, fn(item)))
        except Exception as exc:
            out.append((False, failure(exc)))
    return out


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_hidden(fn: Callable[[Any], Any]) -> Iterator[None]:
    """Start worker processes without re-running the program's main module.

    A spawn or forkserver child re-imports ``__main__`` (as ``__mp_main__``) before it runs
    anything. For a console script, pytest or a Ray worker that is 0.2-0.5 s of imports per
    worker: the largest fixed cost of a pool of short tasks (extraction of small clips paid it
    once per worker and per pool). ``fn`` lives in an importable module, so the main module
    is not needed: it is hidden from :func:`multiprocessing.spawn.get_preparation_data` while
    a worker (and the fork server) starts. Not when ``fn`` itself is defined in ``__main__``.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(fn, "__module__", "__main__") == "__main__":
        yield
        return
    with _MAIN_LOCK:
        saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
        main.__dict__.pop("__file__", None)
        main.__spec__ = None
        try:
            yield
        finally:
            main.__dict__.update(saved)


def _start_worker(ctx: Any, fn: Callable[[Any], Any]) -> _Worker:
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_worker_main, args=(fn, child_conn), daemon=True)
    with _main_hidden(fn):
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


class _Pool:
    """The workers of one :func:`run_pool` call and the tasks not yet sent, ``(index, item)``."""

    def __init__(self, fn: Callable[[Any], Any], items: list[Any], workers: int, ctx: Any) -> None:
        self.fn, self.ctx = fn, ctx
        self.pending: deque[tuple[int, Any]] = deque(enumerate(items))
        self.workers = [_start_worker(ctx, fn) for _ in range(min(workers, len(items)))]
        self.start_failures = 0

    def busy(self) -> bool:
        return bool(self.pending) or any(w.tasks for w in self.workers)

    def top_up(self) -> None:
        """Send tasks to every ready worker until it holds ``_PREFETCH``."""
        for w in self.workers:
            while w.ready and self.pending and len(w.tasks) < _PREFETCH:
                try:
                    w.conn.send(self.pending[0])
                except OSError:  # it just died; wait() reports that below
                    break
                if not w.tasks:
                    w.started = time.monotonic()
                w.tasks.append(self.pending.popleft())

    def retire(self, worker: _Worker) -> tuple[int, Any] | None:
        """Kill a worker, requeue all but its head task, return the head (if any)."""
        head = worker.tasks.popleft() if worker.tasks else None
        self.pending.extendleft(reversed(worker.tasks))
        worker.stop(kill=True)
        if self.pending:
            self.workers[self.workers.index(worker)] = _start_worker(self.ctx, self.fn)
        else:
            self.workers.remove(worker)
        return head

    def receive(self, worker: _Worker) -> tuple[Any, Any] | None:
        """Take one message of ``worker`` (or notice its death): the ``(item, outcome)`` of a
        task it finished or crashed on, or None (it became ready)."""
        try:
            kind, ok, payload = worker.conn.recv()
        except (EOFError, OSError):  # the process died: crash, or failed start-up
            return self._died(worker)
        if kind == "ready":
            worker.ready = True
            return None
        task = worker.tasks.popleft()
        worker.started = time.monotonic()  # the next task (if any) starts now
        return task[1], (payload if ok else TaskFailed(payload[0], payload[1]))

    def _died(self, worker: _Worker) -> tuple[Any, Any] | None:
        worker.proc.join(timeout=5.0)
        reason = _exit_reason(worker.proc)
        if not worker.ready:
            self.start_failures += 1
            if self.start_failures >= _MAX_START_FAILURES:
                raise RuntimeError(
                    f"worker processes for {getattr(self.fn, '__qualname__', self.fn)} die at "
                    f"start-up ({reason}); is the function importable?"
                ) from None
        head = self.retire(worker)
        return None if head is None else (head[1], WorkerCrashed(f"worker process died ({reason})"))

    def expire(self, timeout_s: float) -> Iterator[tuple[Any, Any]]:
        """Kill the workers whose head task ran past ``timeout_s``; yield those tasks as timed out."""
        now = time.monotonic()
        for worker in [w for w in self.workers if w.tasks and now - w.started > timeout_s]:
            head = self.retire(worker)
            yield head[1], TaskTimeout(f"timed out after {timeout_s:g} s (worker killed)")

    def close(self) -> None:
        for w in self.workers:
            w.stop(kill=bool(w.tasks) or not w.ready)


def run_pool(
    fn: Callable[[Any], Any],
    items: list[Any],
    workers: int,
    timeout_s: float | None,
    ctx: Any,
) -> Iterator[tuple[Any, Any]]:
    """The scheduling loop behind :func:`tempstop.data.workers.map_with_timeout` (``workers >= 1``):
    ``(item, result or WorkerError)`` in completion order.

    Each worker holds up to ``_PREFETCH`` tasks, so it starts the next one without waiting
    for a round trip through this process (on a busy machine each costs a scheduler wake-up).
    When a worker is killed or dies, its head task is reported and the others are requeued.
    """
    pool = _Pool(fn, items, workers, ctx)
    try:
        while pool.busy():
            pool.top_up()
            for conn in wait([w.conn for w in pool.workers], timeout=_next_deadline(pool.workers, timeout_s)):
                done = pool.receive(next(w for w in pool.workers if w.conn is conn))
                if done is not None:
                    yield done
            if timeout_s is not None:
                yield from pool.expire(timeout_s)
    finally:
        pool.close()


def pool_context(fn: Callable, start_method: str | None, preload: tuple[str, ...]) -> Any:
    """The multiprocessing context; a fork server preloads ``fn``'s module and ``preload``."""
    if start_method is None:
        start_method = "forkserver" if "forkserver" in get_all_start_methods() else "spawn"
    ctx = get_context(start_method)
    if start_method == "forkserver":
        # Has an effect only before the server starts (the first pool of the program); the
        # preload list also makes the server inherit this process's sys.path.
        ctx.set_forkserver_preload([getattr(fn, "__module__", "__main__"), *preload])
    return ctx


def _next_deadline(pool: list[_Worker], timeout_s: float | None) -> float | None:
    """Seconds until the earliest running task times out (``None``: wait for a message)."""
    if timeout_s is None:
        return None
    starts = [w.started for w in pool if w.tasks]
    if not starts:
        return None
    return max(0.0, min(starts) + timeout_s - time.monotonic()) + 0.001
