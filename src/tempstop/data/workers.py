"""Map a function over items in worker processes, with a per-item timeout.

Video decoding is the reason this module exists: decord 0.6.0 can hang forever on a file that
over-reports its frame count, and a corrupt file can crash the decoder (segfault). A pool
such as :mod:`concurrent.futures` cannot kill one stuck task, and a crashed worker breaks the
whole pool. :func:`map_with_timeout` runs each call in its own long-lived worker process,
kills and replaces a worker whose task runs past the timeout, replaces a worker that died,
and reports both as errors for that item only; the other items go on.

Workers never come from a plain ``fork`` of the caller: decord and torch keep threads, and
forking a process that has threads can deadlock the child. The default is ``forkserver``
(``spawn`` where it does not exist): a clean server process is started once per program,
imports ``fn``'s module and the ``preload`` modules, and forks every worker from that state.
A worker then starts in milliseconds instead of the ~0.2 s of importing numpy and decord
afresh, which matters when a timeout replaces workers or a short job runs many pools.
Either way ``fn`` must be picklable by reference: a module-level function of an importable
module (not a lambda, not a closure). Workers therefore do not re-run the program's main
module, which multiprocessing does by default (see :func:`_main_hidden`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import sys
import threading
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
# Tasks queued in each worker (see _run_pool).
_PREFETCH = 2


def _failure(exc: Exception) -> tuple[str, str]:
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
            reply = (task_id, False, _failure(exc))
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


def map_with_timeout(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int = 1,
    timeout_s: float | None = None,
    desc: str | None = None,
    *,
    progress: bool = True,
    start_method: str | None = None,
    preload: tuple[str, ...] = (),
    unit: str = "item",
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, result)`` for every item, in completion order.

    ``result`` is ``fn(item)`` or a :class:`WorkerError` instance (:class:`TaskFailed`,
    :class:`TaskTimeout`, :class:`WorkerCrashed`): failures are values, not exceptions, so one
    bad item never stops the others. ``workers=0`` runs in the calling process (no isolation,
    no timeout; for debugging and for measuring the pool's own overhead). ``timeout_s`` counts
    from the moment a ready worker receives the item, so process start-up is never charged to
    a task. A tqdm bar titled ``desc`` is shown when ``progress`` is true. ``start_method``
    defaults to ``forkserver`` where available; ``preload`` names modules the fork server
    imports once (only the first pool of a program sets them).
    """
    from tqdm.auto import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress or not items, leave=True)
    try:
        if workers <= 0:
            for item in items:
                try:
                    out: Any = fn(item)
                except Exception as exc:
                    out = TaskFailed(*_failure(exc))
                bar.update(1)
                yield item, out
            return
        for item, out in _run_pool(fn, items, workers, timeout_s, _context(fn, start_method, preload)):
            bar.update(1)
            yield item, out
    finally:
        bar.close()


def _call_each(message: tuple[Callable[[Any], Any], list[Any]]) -> list[tuple[bool, Any]]:
    """Run ``fn`` on every item of a batch (in a worker); each outcome ``(ok, result or
    (message, traceback))``, so one item that raises does not take its batch with it."""
    fn, batch = message
    out = []
    for item in batch:
        try:
            out.append((True, fn(item)))
        except Exception as exc:
            out.append((False, _failure(exc)))
    return out


def map_batched(
    fn: Callable[[Any], Any],
    batches: Iterable[list[Any]],
    workers: int = 1,
    timeout_s: float | None = None,
    desc: str | None = None,
    *,
    progress: bool = True,
    preload: tuple[str, ...] = (),
    unit: str = "item",
) -> Iterator[tuple[Any, Any]]:
    """:func:`map_with_timeout` with one worker message per batch of items; yields ``(item,
    result)`` per item, in completion order, failures as :class:`WorkerError` values.

    For items that take milliseconds (small video clips), the round trip of each message
    through the pool (pickling, two process wake-ups) is a tenth of the work; a batch pays it
    once. ``timeout_s`` bounds a whole batch. A batch that times out or whose worker dies is
    run again item by item, so the timeout or crash lands on the item that caused it and the
    rest of its batch completes. The progress bar counts items.
    """
    from tqdm.auto import tqdm

    batches = [list(b) for b in batches if b]
    module = getattr(fn, "__module__", "__main__")
    if module == "__main__":  # fn travels by name inside each message: it must be importable
        items = [item for b in batches for item in b]
        yield from map_with_timeout(fn, items, workers, timeout_s, desc, progress=progress, preload=preload, unit=unit)
        return
    preload = (module, *preload)  # the fork server imports fn's module, not only _call_each's
    bar = tqdm(total=sum(map(len, batches)), desc=desc, unit=unit, disable=not progress or not batches, leave=True)
    retry: list[Any] = []
    try:
        messages = [(fn, b) for b in batches]
        for (_, batch), outcome in map_with_timeout(_call_each, messages, workers, timeout_s, progress=False,
                                                    preload=preload):  # fmt: skip
            if isinstance(outcome, (TaskTimeout, WorkerCrashed)) and len(batch) > 1:
                retry += batch  # item by item below
                continue
            for item, result in _outcomes(batch, outcome):
                bar.update(1)
                yield item, result
        for item, result in map_with_timeout(fn, retry, workers, timeout_s, progress=False, preload=preload):
            bar.update(1)
            yield item, result
    finally:
        bar.close()


def _outcomes(batch: list[Any], outcome: Any) -> Iterator[tuple[Any, Any]]:
    """Per item of a batch: its result, or the batch's own failure (e.g. it could not be sent)."""
    if isinstance(outcome, WorkerError):
        yield from ((item, outcome) for item in batch)
        return
    for item, (ok, payload) in zip(batch, outcome, strict=True):
        yield item, (payload if ok else TaskFailed(payload[0], payload[1]))


def _run_pool(
    fn: Callable[[Any], Any],
    items: list[Any],
    workers: int,
    timeout_s: float | None,
    ctx: Any,
) -> Iterator[tuple[Any, Any]]:
    """The scheduling loop behind :func:`map_with_timeout` (``workers >= 1``).

    Each worker holds up to ``_PREFETCH`` tasks, so it starts the next one without waiting
    for a round trip through this process (on a busy machine each costs a scheduler wake-up).
    When a worker is killed or dies, its head task is reported and the others are requeued.
    """
    pending: deque[tuple[int, Any]] = deque(enumerate(items))
    pool = [_start_worker(ctx, fn) for _ in range(min(workers, len(items)))]
    start_failures = 0

    def retire(worker: _Worker) -> tuple[int, Any] | None:
        """Kill a worker, requeue all but its head task, return the head (if any)."""
        head = worker.tasks.popleft() if worker.tasks else None
        pending.extendleft(reversed(worker.tasks))
        worker.stop(kill=True)
        if pending:
            pool[pool.index(worker)] = _start_worker(ctx, fn)
        else:
            pool.remove(worker)
        return head

    try:
        while pending or any(w.tasks for w in pool):
            for w in pool:  # top up every ready worker
                while w.ready and pending and len(w.tasks) < _PREFETCH:
                    try:
                        w.conn.send(pending[0])
                    except OSError:  # it just died; wait() reports that below
                        break
                    if not w.tasks:
                        w.started = time.monotonic()
                    w.tasks.append(pending.popleft())
            for conn in wait([w.conn for w in pool], timeout=_next_deadline(pool, timeout_s)):
                worker = next(x for x in pool if x.conn is conn)
                try:
                    kind, ok, payload = worker.conn.recv()
                except (EOFError, OSError):  # the process died: crash, or failed start-up
                    worker.proc.join(timeout=5.0)
                    reason = _exit_reason(worker.proc)
                    if not worker.ready:
                        start_failures += 1
                        if start_failures >= _MAX_START_FAILURES:
                            raise RuntimeError(
                                f"worker processes for {getattr(fn, '__qualname__', fn)} die at "
                                f"start-up ({reason}); is the function importable?"
                            ) from None
                    head = retire(worker)
                    if head is not None:
                        yield head[1], WorkerCrashed(f"worker process died ({reason})")
                    continue
                if kind == "ready":
                    worker.ready = True
                    continue
                task = worker.tasks.popleft()
                worker.started = time.monotonic()  # the next task (if any) starts now
                yield task[1], (payload if ok else TaskFailed(payload[0], payload[1]))
            if timeout_s is not None:
                now = time.monotonic()
                for worker in [w for w in pool if w.tasks and now - w.started > timeout_s]:
                    head = retire(worker)
                    yield head[1], TaskTimeout(f"timed out after {timeout_s:g} s (worker killed)")
    finally:
        for w in pool:
            w.stop(kill=bool(w.tasks) or not w.ready)


def _context(fn: Callable, start_method: str | None, preload: tuple[str, ...]) -> Any:
    """The multiprocessing context; a fork server preloads ``fn``'s module and ``preload``."""
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
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
