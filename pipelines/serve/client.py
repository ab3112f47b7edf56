"""Talking to a running search service from a script: wait until it answers."""

from __future__ import annotations

import time

import httpx


def wait_until_healthy(url: str, timeout_s: float = 60.0) -> bool:
    """Poll ``url``/health until it answers 200 (True) or ``timeout_s`` passes (False): a
    service loads its model and index before it answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False
