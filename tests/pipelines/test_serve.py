"""`tempstop serve`: the search service on a real uvicorn server on a free loopback port:
search, metadata, thumbnails, video files with range requests, bounds on every input, metrics,
micro-batched concurrent queries, and the swap to a new index while queries run."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from media import make_clip  # noqa: E402
from servers import querying, serving  # noqa: E402

from tempstop.collection import IndexSettings, index_videos  # noqa: E402
from tempstop.config import IndexConfig, UnifiedModelConfig  # noqa: E402
from tempstop.inference.checkpoint import save_checkpoint  # noqa: E402
from tempstop.model import create_unified_model  # noqa: E402
from tempstop_pipelines.serve.app import create_app  # noqa: E402
from tempstop_pipelines.serve.engine import EngineHolder, load_engine  # noqa: E402

SETTINGS = IndexSettings(frames=4, size=64, index=IndexConfig(workers=1, timeout_s=60))


def _checkpoint(path: Path, seed: int) -> Path:
    cfg = UnifiedModelConfig().with_overrides({"model.frames": 4})
    torch.manual_seed(seed)
    model = create_unified_model(cfg)
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0, "step": 0,
                           "phase": "test", "best_metric": 0.0, "metrics": {}})  # fmt: skip
    return path


def _index(root: Path, checkpoint: Path, out: Path) -> dict:
    from tempstop.inference.checkpoint import model_from_checkpoint
    from tempstop.inference.sources import model_identity

    path, info = model_identity(checkpoint)
    model, _, _ = model_from_checkpoint(path)
    return index_videos(model, root, out, SETTINGS, info, progress=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A collection of 3 clips indexed into ``root/v1`` (CURRENT names it), served on a free port."""
    base = tmp_path_factory.mktemp("serve")
    videos = base / "videos"
    for name, n, fps in (("short.mp4", 8, 8), ("long.mp4", 24, 4), ("sub/other.mp4", 16, 8)):
        make_clip(videos / name, n=n, fps=fps)  # 1 s, 6 s, 2 s
    (base / "secret.txt").write_text("outside the collection")
    root = base / "index"
    _index(videos, _checkpoint(base / "m1.pth", 1), root / "v1")
    (root / "CURRENT").write_text("v1\n")
    holder = EngineHolder(root, load_engine(root))
    app = create_app(holder, watch_interval_s=0.2)
    with serving(app) as url:
        yield {"url": url, "base": base, "videos": videos, "root": root, "holder": holder, "app": app}


def test_search_returns_ranked_videos_with_urls(served):
    r = httpx.post(f"{served['url']}/search", json={"query": "a grey clip", "top_k": 5})
    assert r.status_code == 200
    body = r.json()
    assert [h["rank"] for h in body["results"]] == [1, 2, 3]
    assert sorted(h["path"] for h in body["results"]) == ["long.mp4", "short.mp4", "sub/other.mp4"]
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    hit = body["results"][0]
    assert hit["thumbnail_url"] == f"/videos/{hit['id']}/thumbnail.jpg" and body["index"]["videos"] == 3
    assert body["model"]["sha256"] and body["took_ms"] >= 0
    long_only = httpx.post(f"{served['url']}/search", json={"query": "x", "filters": {"min_duration": 4.0}}).json()
    assert [h["path"] for h in long_only["results"]] == ["long.mp4"]


def test_metadata_thumbnail_and_video_file_with_ranges(served):
    url = served["url"]
    hit = httpx.post(f"{url}/search", json={"query": "clip", "top_k": 3}).json()["results"][0]
    meta = httpx.get(f"{url}{hit['url']}").json()
    assert meta["path"] == hit["path"] and meta["duration"] > 0
    thumb = httpx.get(f"{url}{hit['thumbnail_url']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    full = httpx.get(f"{url}{hit['video_url']}")
    assert full.status_code == 200 and full.content == (served["videos"] / hit["path"]).read_bytes()
    part = httpx.get(f"{url}{hit['video_url']}", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == full.content[10:110]
    assert part.headers["content-range"].startswith("bytes 10-109/")


@pytest.mark.parametrize(
    "path",
    ["/videos/0000000000000000", "/videos/..%2F..%2Fsecret.txt", "/videos/../secret.txt/file",
     "/videos/%2Fetc%2Fpasswd/file", "/videos/abc/thumbnail.jpg"],
)  # fmt: skip
def test_unknown_or_crafted_ids_never_reach_a_file(served, path):
    r = httpx.get(f"{served['url']}{path}")
    assert r.status_code == 404
    assert "outside the collection" not in r.text


@pytest.mark.parametrize(
    ("body", "status"),
    [({"query": ""}, 422), ({"query": "x", "top_k": 1000}, 422), ({"query": "x", "top_k": 0}, 422),
     ({"query": "x" * 5000}, 422), ({"query": "x", "extra": 1}, 422), ({"top_k": 3}, 422),
     ({"query": "x", "filters": {"min_duration": -1}}, 422), ({"query": "   "}, 422)],
)  # fmt: skip
def test_bad_requests_get_4xx_with_a_message(served, body, status):
    r = httpx.post(f"{served['url']}/search", json=body)
    assert r.status_code == status and "detail" in r.json()
    assert "Traceback" not in r.text


def test_oversized_and_malformed_bodies(served):
    url = f"{served['url']}/search"
    assert httpx.post(url, content=b"{" + b" " * 20000 + b"}", headers={"Content-Type": "application/json"}).status_code == 413

    def chunks():
        for _ in range(40):
            yield b" " * 1024

    assert httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"}).status_code == 413
    assert httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422


def test_concurrent_queries_are_batched_and_cached(served):
    embedder = served["app"].state.embedder
    before = embedder.batches

    async def burst():
        async with httpx.AsyncClient(base_url=served["url"]) as client:
            replies = await asyncio.gather(
                *(client.post("/search", json={"query": f"query number {i}", "top_k": 2}) for i in range(16))
            )
            return [r.status_code for r in replies]

    assert asyncio.run(burst()) == [200] * 16
    assert embedder.batches - before < 16  # at least two queries shared a text batch
    hits = embedder.hits
    assert httpx.post(f"{served['url']}/search", json={"query": "query number 3"}).status_code == 200
    assert embedder.hits == hits + 1


def test_health_and_prometheus_metrics(served):
    health = httpx.get(f"{served['url']}/health").json()
    assert health["status"] == "ok" and health["index"]["videos"] == 3
    text = httpx.get(f"{served['url']}/metrics").text
    for name in ("tempstop_queries_total", "tempstop_query_latency_seconds_bucket", "tempstop_index_videos 3.0",
                 "tempstop_model_info{"):  # fmt: skip
        assert name in text, name


def test_the_page_is_served_without_external_assets(served):
    page = httpx.get(f"{served['url']}/").text
    assert "<form" in page and "/search" in page
    assert "http://" not in page and "https://" not in page  # works offline


def test_a_new_index_swaps_in_while_queries_run(served):
    """Re-index with another model into v2, switch CURRENT: queries never fail, then the new
    model answers (runs last in this module: it changes the served index)."""
    base, root, url = served["base"], served["root"], served["url"]
    _index(served["videos"], _checkpoint(base / "m2.pth", 2), root / "v2")
    old_sha = httpx.get(f"{url}/health").json()["model"]["sha256"]
    with querying(url, "a clip", clients=3) as statuses:
        tmp = root / ".CURRENT.tmp"
        tmp.write_text("v2\n")
        tmp.replace(root / "CURRENT")  # atomic switch, as the re-index flow does
        deadline = time.time() + 60
        while time.time() < deadline and httpx.get(f"{url}/health").json()["model"]["sha256"] == old_sha:
            time.sleep(0.1)
        time.sleep(0.5)
    health = httpx.get(f"{url}/health").json()
    assert health["model"]["sha256"] != old_sha and health["swaps"] == 1 and health["index"]["path"].endswith("v2")
    assert statuses and set(statuses) == {200}
    shutil.rmtree(root / "v1")  # the old version can go once swapped out
    assert httpx.post(f"{url}/search", json={"query": "x"}).status_code == 200
