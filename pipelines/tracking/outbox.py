"""What a run sends to MLflow goes through an outbox: training never waits for the server.

    outbox = Outbox("http://mlflow:5000")
    outbox.put("metrics epoch 3", lambda client: client.log_batch(run_id, metrics=[...]))
    unsent = outbox.close(timeout_s=120)     # names of what could not be recorded

One background thread sends the items in order with an ``MlflowClient``. Before each send,
and after a send fails, it asks the server's ``/health``; no answer means the server is
*down*: the item stays at the head of the queue, the thread waits for the server (checking every few seconds) and
sends everything once it is back; meanwhile the caller goes on queueing (metrics keep the time
they were measured at). A failure while the server is up is a refusal (a bad value): that item
is dropped with a warning. Stores without a server (sqlite, files) have no outage: a failure
there is a refusal. :meth:`Outbox.close` waits for the queue to empty, at most ``timeout_s``,
and returns what is still unsent, which the tracker names in one warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: Longest wait between two health checks while the server is down (seconds).
MAX_BACKOFF_S = 5.0


@dataclass
class Item:
    """One thing to send: ``send(client)`` does it; ``label`` names it in warnings."""

    label: str
    send: Callable[[Any], Any]


def server_health_url(uri: str) -> str | None:
    """``<uri>/health`` for a tracking server (http/https); None for local stores."""
    return uri.rstrip("/") + "/health" if uri.lower().startswith(("http://", "https://")) else None


def server_up(uri: str, timeout: float = 5.0) -> bool:
    """Whether the tracking server answers (always True for a local store)."""
    url = server_health_url(uri)
    if url is None:
        return True
    try:
        return requests.get(url, timeout=timeout).ok
    except requests.RequestException:
        return False


class Outbox:
    """Sends items to the MLflow store at ``uri`` in order, on one daemon thread."""

    def __init__(self, uri: str, name: str = "mlflow-outbox") -> None:
        self.uri = uri
        self.client = MlflowClient(uri)
        self.refused: list[str] = []
        self._items: deque[Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, label: str, send: Callable[[Any], Any]) -> None:
        """Queue ``send(client)``; returns at once."""
        with self._cond:
            self._items.append(Item(label, send))
            self._cond.notify_all()

    def pending(self) -> list[str]:
        """Labels of what is queued and not yet sent."""
        with self._cond:
            return [item.label for item in self._items]

    @property
    def down(self) -> bool:
        """Whether the last send found the server down (and it has not answered since)."""
        return self._down_since is not None

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is sent (at most ``timeout_s``); True if it was."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
        return True

    def close(self, timeout_s: float) -> list[str]:
        """Stop taking items, wait for the queue (at most ``timeout_s``); return what is left.
        Whatever is left is still sent if the server comes back before this process exits."""
        self.drain(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            return [item.label for item in self._items]

    # ---- the sending thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    if self._closing:
                        return
                    self._cond.wait()
                item = self._items[0]
            if self._send(item):
                with self._cond:
                    self._items.popleft()
                    self._cond.notify_all()

    def _send(self, item: Item) -> bool:
        """Send one item; False to try it again (the server is down)."""
        # Asked first because MLflow's client retries a dead server for minutes (backoff up
        # to MLFLOW_HTTP_REQUEST_MAX_RETRIES) before it raises: the outage would go unnoticed.
        if not server_up(self.uri, timeout=2.0):
            self._wait_for_server(item)
        try:
            item.send(self.client)
        except Exception as exc:
            if server_up(self.uri):
                log.warning("MLflow refused %s (%s); not retried", item.label, str(exc).splitlines()[0][:300])
                self.refused.append(item.label)
                return True
            self._wait_for_server(item)
            return False
        if self._down_since is not None:
            log.warning("MLflow server %s is back after %.0f s; sending %d buffered item(s)",
                        self.uri, time.monotonic() - self._down_since, len(self._items))  # fmt: skip
            self._down_since = None
        return True

    def _wait_for_server(self, item: Item) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("MLflow server %s unreachable (sending %s); training goes on, metrics are kept "
                        "and sent when it is back", self.uri, item.label)  # fmt: skip
        wait = 0.5
        while not server_up(self.uri, timeout=2.0):
            time.sleep(wait)
            wait = min(wait * 2, MAX_BACKOFF_S)
