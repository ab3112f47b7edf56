"""The search service: FastAPI routes over an :class:`~.engine.EngineHolder`.

    POST /search                      {"query", "top_k"?, "filters"?: {"min_duration", "max_duration", "path_prefix"}}
    GET  /videos/{id}                 a video's metadata
    GET  /videos/{id}/thumbnail.jpg   its keyframe strip
    GET  /videos/{id}/file            the video (HTTP range requests: a browser can seek)
    GET  /health, /metrics            status; Prometheus metrics
    GET  /                            the search page (no external assets: works offline)

Video ids are looked up in the manifest, never used as paths, and every file served is
checked to lie inside the collection (or the index) folder. Bad requests get a 4xx with a
message; an unexpected error is a 500 without a traceback (it goes to the log).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from tempstop.collection import MAX_TOP_K, Filters
from tempstop_pipelines.serve.engine import EngineHolder, QueryEmbedder
from tempstop_pipelines.serve.metrics import ServiceMetrics

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 16 * 1024
MAX_QUERY_CHARS = 1000
_ID = re.compile(r"^[0-9a-f]{16}$")


class SearchFilters(BaseModel):
    """The metadata filters of a query (:class:`tempstop.collection.Filters`)."""

    model_config = ConfigDict(extra="forbid")
    min_duration: float | None = Field(None, ge=0)
    max_duration: float | None = Field(None, ge=0)
    path_prefix: str | None = Field(None, max_length=500)


class SearchRequest(BaseModel):
    """The body of ``POST /search``."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int = Field(10, ge=1, le=MAX_TOP_K)
    filters: SearchFilters | None = None


def create_app(holder: EngineHolder, watch_interval_s: float | None = 2.0) -> FastAPI:
    """The service for ``holder``'s engine; with ``watch_interval_s`` the index is re-read
    when it changes on disk (a new model's index swaps in without downtime)."""
    embedder, metrics = QueryEmbedder(), ServiceMetrics()
    app = FastAPI(title="TempMe-STOP video search", lifespan=_watching(holder, watch_interval_s),
                  docs_url="/docs", redoc_url=None)  # fmt: skip
    app.state.holder, app.state.embedder, app.state.metrics = holder, embedder, metrics
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(_search_routes(holder, embedder, metrics))
    app.include_router(_video_routes(holder))
    app.include_router(_service_routes(holder, embedder, metrics))
    return app


def _watching(holder: EngineHolder, interval_s: float | None):
    """The app's lifespan: while it serves, ``holder`` watches its index every ``interval_s``
    (None or 0: never)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(holder.watch(interval_s)) if interval_s else None
        yield
        if task is not None:
            task.cancel()

    return lifespan


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A 500 without a traceback; the traceback goes to the log."""
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": "internal error (see the service log)"}, status_code=500)


def _search_routes(holder: EngineHolder, embedder: QueryEmbedder, metrics: ServiceMetrics) -> APIRouter:
    """``POST /search``."""
    router = APIRouter()

    @router.post("/search")
    async def search(req: SearchRequest):
        start = time.perf_counter()
        engine = holder.current  # this query runs on this engine to the end, whatever swaps
        query = " ".join(req.query.split())
        if not query:
            raise HTTPException(422, "query is blank")
        vector = await embedder.embed(engine, query)
        filters = Filters(**req.filters.model_dump()) if req.filters else None
        hits = await asyncio.to_thread(engine.search.search_vectors, vector[None], req.top_k, filters)
        took = time.perf_counter() - start
        metrics.observe_query(took)
        return {"query": query, "took_ms": round(took * 1000, 2), **engine.describe(),
                "results": [_with_urls(h) for h in hits[0]]}  # fmt: skip

    return router


def _video_routes(holder: EngineHolder) -> APIRouter:
    """``GET /videos/{id}``, its thumbnail and its file."""
    router = APIRouter()

    @router.get("/videos/{vid}")
    async def video(vid: str):
        return _with_urls(_entry(holder, vid))

    @router.get("/videos/{vid}/thumbnail.jpg")
    async def thumbnail(vid: str):
        _entry(holder, vid)
        path = holder.current.search.thumbnail_file(vid)
        if path is None:
            raise HTTPException(404, f"video {vid} has no thumbnail")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @router.get("/videos/{vid}/file")
    async def video_file(vid: str):
        _entry(holder, vid)
        path = holder.current.search.video_file(vid)
        if path is None:
            raise HTTPException(404, f"the file of video {vid} is not in the collection folder any more")
        return FileResponse(path, media_type=_media_type(path))  # answers Range requests (206)

    return router


def _service_routes(holder: EngineHolder, embedder: QueryEmbedder, metrics: ServiceMetrics) -> APIRouter:
    """``GET /health``, ``/metrics`` and ``/`` (the search page)."""
    router = APIRouter()

    @router.get("/health")
    async def health():
        engine = holder.current
        return {"status": "ok", "swaps": holder.swaps, "last_swap_error": holder.last_error, **engine.describe()}

    @router.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(holder, embedder), media_type="text/plain; version=0.0.4")

    @router.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return router


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, whether its length is
    announced or it streams in chunks. Bodies are small (a JSON query), so the middleware reads
    the whole body first and hands it on."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._reject(send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._reject(send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, None, send)


def _entry(holder: EngineHolder, vid: str) -> dict:
    if not _ID.match(vid):
        raise HTTPException(404, "no such video (ids are 16 hex digits)")
    entry = holder.current.search.video(vid)
    if entry is None:
        raise HTTPException(404, f"no video {vid} in this index")
    return entry


def _with_urls(hit: dict) -> dict:
    keys = ("rank", "score", "id", "path", "video_id", "duration", "fps", "width", "height", "segment")
    out = {k: hit[k] for k in keys if k in hit}
    vid = hit["id"]
    out.update(thumbnail_url=f"/videos/{vid}/thumbnail.jpg", video_url=f"/videos/{vid}/file", url=f"/videos/{vid}")
    return out


def _media_type(path: Path) -> str:
    return {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
            ".mov": "video/quicktime", ".avi": "video/x-msvideo"}.get(path.suffix.lower(), "application/octet-stream")  # fmt: skip
