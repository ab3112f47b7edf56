"""Named locks that every machine of a fleet respects, and that a dead holder gives up.

    with hold("tempstop-promote-tempstop-unified"):
        ...   # read the champion, compare, move the aliases

With a Prefect API configured (``PREFECT_API_URL``), a lock is a Prefect *global concurrency
limit* of one slot (created if missing, set back to one slot if someone changed it) taken
with a lease: Prefect renews the lease while the holder lives, and when the holder is killed
the server revokes it ``lease_s`` (at least 60) seconds later, so the next holder gets in
without anyone cleaning up. Without a Prefect API it is an ``fcntl`` lock on a file under
``.tempstop/locks/`` of the project, which the kernel releases when the holder dies; it
serialises the processes of one machine only.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

log = logging.getLogger(__name__)

LOCK_DIR = Path(".tempstop") / "locks"


class LockTimeout(RuntimeError):
    """The lock was not free within the time allowed; the message names it."""


def lock_name(*parts: str) -> str:
    """A name Prefect and file systems accept: ``tempstop-`` and ``[a-z0-9-]`` only."""
    text = "-".join(p for p in parts if p)
    return "tempstop-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def prefect_api() -> str | None:
    """The Prefect API this process talks to (the ``PREFECT_API_URL`` setting), if any."""
    return PREFECT_API_URL.value() or None


@contextmanager
def hold(name: str, timeout_s: float = 600, lease_s: float = 60) -> Iterator[str]:
    """Hold lock ``name`` for the block; yields where it lives (``prefect`` or the file)."""
    if prefect_api():
        with _prefect_lock(name, timeout_s, lease_s):
            yield "prefect"
    else:
        with _file_lock(LOCK_DIR / f"{name}.lock", timeout_s) as path:
            yield str(path)


def try_hold(name: str) -> bool:
    """Whether lock ``name`` is free right now (taken and given back at once): a holder that
    died has lost it, a living one has not."""
    try:
        with hold(name, timeout_s=5):
            return True
    except LockTimeout:
        return False


def _ensure_limit(name: str) -> None:
    """The global concurrency limit ``name`` exists, active, with one slot."""
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # created meanwhile by another process: the same limit
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return
        if limit.limit != 1 or not limit.active:
            log.warning("lock %s had %d slot(s)%s; set back to 1", name, limit.limit,
                        "" if limit.active else " and was inactive")  # fmt: skip
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


@contextmanager
def _prefect_lock(name: str, timeout_s: float, lease_s: float) -> Iterator[None]:
    with ExitStack() as stack:
        for attempt in range(3):
            _ensure_limit(name)
            try:
                # strict: a limit deleted meanwhile is an error, not an open door (then it is
                # created again). A renewal that fails (the API away for a while) does not
                # stop the holder.
                stack.enter_context(concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True,
                                                lease_duration=max(lease_s, 60), raise_on_lease_renewal_failure=False))  # fmt: skip
                break
            except TimeoutError:
                raise LockTimeout(f"lock {name} (a Prefect global concurrency limit) not free after {timeout_s:.0f} s") from None  # fmt: skip
            except ConcurrencySlotAcquisitionError:
                if attempt == 2:
                    raise
        yield


def delete_limit(name: str) -> None:
    """Remove the global concurrency limit ``name`` (best effort; the file lock stays)."""
    if not prefect_api():
        return
    try:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        pass
    except Exception as exc:  # a leftover limit costs nothing but a line in the UI
        log.debug("could not delete lock %s: %s", name, exc)


@contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"lock {path} not free after {timeout_s:.0f} s") from None
                time.sleep(0.2)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
