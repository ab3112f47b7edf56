"""What the search service serves: a collection index and its model, swapped atomically when
the index changes, and query embedding with an LRU cache and micro-batching.

An :class:`Engine` is immutable once loaded; a request takes ``holder.current`` once and uses
that engine to the end, so a swap never changes an index under a running query, and the old
engine is freed when its last query finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tempstop.collection import CollectionSearch, open_collection, resolve_index_dir
from tempstop.collection.manifest import MANIFEST

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engine:
    """A loaded collection index with the model that built it."""

    search: CollectionSearch
    key: tuple  # what identifies this index version on disk
    model_info: dict
    loaded_at: float = field(default_factory=time.time)

    @property
    def manifest(self) -> dict:
        """The index's manifest."""
        return self.search.manifest

    def describe(self) -> dict:
        """Model and index facts for /health and the web page."""
        info, m = self.model_info, self.search.manifest
        registry = info.get("registry") or {}
        return {
            "model": {"source": info["source"], "sha256": info["sha256"][:12], "name": registry.get("name"),
                      "version": registry.get("version"), "alias": registry.get("alias"),
                      "backbone": self.search.model.cfg.backbone, "variant": self.search.model.cfg.variant},
            "index": {"path": str(self.search.dir), "videos": len(self.search), "failed": len(m["failed"]),
                      "updated": _written(self.search.dir), "collection_hash": m.get("collection_hash", "")[:12],
                      "vector_index": (m.get("vector_index") or {}).get("describe")},
        }  # fmt: skip


def _written(folder: Path) -> str:
    """When the index's manifest was written (UTC, ISO 8601 to the second)."""
    stamp = (folder / MANIFEST).stat().st_mtime
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def index_key(root: str | Path) -> tuple:
    """Changes whenever the live index of ``root`` does: its folder and manifest write time."""
    folder = resolve_index_dir(root)
    return (str(folder.resolve()), (folder / MANIFEST).stat().st_mtime_ns)


def load_engine(root: str | Path, checkpoint: str | None = None, device: str = "cpu",
                tracking_uri: str | None = None) -> Engine:  # fmt: skip
    """Open the live index of ``root`` with the model it was built with (``checkpoint``
    overrides the source; it must be the same model)."""
    key = index_key(root)
    search = open_collection(root, checkpoint, device, tracking_uri)
    return Engine(search, key, search.model_info)


class EngineHolder:
    """The engine in service, and the watcher that swaps in a new one when the index changes."""

    def __init__(self, root: str | Path, engine: Engine, load=load_engine, **load_kw) -> None:
        self.root, self.current = Path(root), engine
        self._load, self._load_kw = load, load_kw
        self.swaps = 0
        self.last_error: str | None = None

    async def watch(self, interval_s: float) -> None:
        """Poll the index every ``interval_s``; load a changed one off the event loop, then swap."""
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh()

    async def refresh(self) -> bool:
        """Swap to the index on disk if it changed; True if it did. A broken new index keeps
        the current one serving (``last_error`` says why)."""
        try:
            key = index_key(self.root)
            if key == self.current.key:
                return False
            engine = await asyncio.to_thread(self._load, self.root, **self._load_kw)
        except Exception as exc:  # a half-written or foreign index must not take the service down
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("index %s not swapped in: %s", self.root, self.last_error)
            return False
        self.current, self.swaps, self.last_error = engine, self.swaps + 1, None
        log.info("serving %s (%d videos, model %s)", engine.search.dir, len(engine.search), engine.model_info["source"])
        return True


class QueryEmbedder:
    """Text embeddings for queries: an LRU cache, and queries arriving together encoded in one
    batch (the model's text tower costs about the same for 1 or 16 texts)."""

    def __init__(self, max_batch: int = 32, max_wait_s: float = 0.002, cache_size: int = 4096) -> None:
        self.max_batch, self.max_wait_s, self.cache_size = max_batch, max_wait_s, cache_size
        self.cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.queue: asyncio.Queue | None = None
        self.hits = self.misses = self.batches = 0

    async def embed(self, engine: Engine, text: str) -> np.ndarray:
        """The embedding of ``text`` by ``engine``'s model: cached, else encoded in the next batch."""
        key = (engine.model_info["sha256"], text)
        if key in self.cache:
            self.cache.move_to_end(key)
            self.hits += 1
            return self.cache[key]
        self.misses += 1
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((engine, text, future))
        vector = await future
        self.cache[key] = vector
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return vector

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            await self._encode(batch)

    async def _encode(self, batch: list) -> None:
        by_engine: dict[int, list] = {}
        for item in batch:
            by_engine.setdefault(id(item[0]), []).append(item)
        for items in by_engine.values():
            engine = items[0][0]
            try:
                vectors = await asyncio.to_thread(engine.search.embed_texts, [t for _, t, _ in items])
            except Exception as exc:
                for _, _, future in items:
                    future.set_exception(exc)
                continue
            self.batches += 1
            for (_, _, future), vector in zip(items, vectors, strict=True):
                future.set_result(vector)
