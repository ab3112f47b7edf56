"""Real servers for the pipeline tests: the search app on uvicorn on a free loopback port,
clients that keep querying it, and a folder for a PostgreSQL-backed stack."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from tempstop_pipelines.serve.client import wait_until_healthy

PG_CTL = Path("/usr/lib/postgresql/15/bin/pg_ctl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """``app`` on uvicorn in a thread on a free loopback port, healthy; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    assert wait_until_healthy(url, timeout_s=30), f"the service on {url} did not start"
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def querying(url: str, query: str, clients: int) -> Iterator[list[int]]:
    """``clients`` threads posting ``query`` to ``url`` until the block ends; yields the list
    their response statuses go into."""
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url) as c:
            while not stop.is_set():
                statuses.append(c.post("/search", json={"query": query, "top_k": 3}).status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield statuses
    finally:
        stop.set()
        for t in threads:
            t.join()


def postgres_folder(prefix: str) -> Path:
    """A new folder for a stack with PostgreSQL 15; skips (fails under CI's
    TEMPSTOP_REQUIRE_POSTGRES) where Debian's PostgreSQL is not installed."""
    if not PG_CTL.exists():
        message = "Debian's PostgreSQL 15 is not installed (apt-get install postgresql-15; make test does as root)"
        if os.environ.get("TEMPSTOP_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    # As root, PostgreSQL runs as the postgres user, which cannot enter pytest's private tmp_path.
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base
