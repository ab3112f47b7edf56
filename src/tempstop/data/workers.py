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
module, which multiprocessing does by default (see
:func:`tempstop.data.worker_pool._main_hidden`). The processes and their scheduling loop live in
:mod:`tempstop.data.worker_pool`; this module holds the two maps and their progress bars.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from tempstop.data.worker_pool import (
    TaskFailed,
    TaskTimeout,
    WorkerCrashed,
    WorkerError,
    call_each,
    failure,
    pool_context,
    run_pool,
)

__all__ = ["TaskFailed", "TaskTimeout", "WorkerCrashed", "WorkerError", "map_batched", "map_with_timeout"]


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
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress or not items, leave=True)
    try:
        if workers <= 0:
            for item in items:
                try:
                    out: Any = fn(item)
                except Exception as exc:
                    out = TaskFailed(*failure(exc))
                bar.update(1)
                yield item, out
            return
        for item, out in run_pool(fn, items, workers, timeout_s, pool_context(fn, start_method, preload)):
            bar.update(1)
            yield item, out
    finally:
        bar.close()


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
    batches = [list(b) for b in batches if b]
    module = getattr(fn, "__module__", "__main__")
    if module == "__main__":  # fn travels by name inside each message: it must be importable
        items = [item for b in batches for item in b]
        yield from map_with_timeout(fn, items, workers, timeout_s, desc, progress=progress, preload=preload, unit=unit)
        return
    preload = (module, *preload)  # the fork server imports fn's module, not only call_each's
    bar = tqdm(total=sum(map(len, batches)), desc=desc, unit=unit, disable=not progress or not batches, leave=True)
    retry: list[Any] = []
    try:
        messages = [(fn, b) for b in batches]
        for (_, batch), outcome in map_with_timeout(call_each, messages, workers, timeout_s, progress=False,
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
