"""Searching a collection index with text: the model that built it plus its vector index."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tempstop import vector_index as vi
from tempstop.collection import manifest as mf
from tempstop.collection.scan import inside
from tempstop.inference.sources import open_model

#: Most results one query may ask for.
MAX_TOP_K = 100
#: A metadata filter that leaves at most this many videos is answered by an exact scan of their
#: stored embeddings: faster than an approximate index probing many lists for a few hits.
EXACT_FILTER_MAX = 50_000


@dataclass(frozen=True)
class Filters:
    """Metadata filters of a query (None: no bound)."""

    min_duration: float | None = None
    max_duration: float | None = None
    path_prefix: str | None = None

    def active(self) -> bool:
        return any(v is not None for v in (self.min_duration, self.max_duration, self.path_prefix))

    def allows(self, video: dict) -> bool:
        duration = video.get("duration")
        if self.min_duration is not None and (duration is None or duration < self.min_duration):
            return False
        if self.max_duration is not None and (duration is None or duration > self.max_duration):
            return False
        return self.path_prefix is None or video["path"].startswith(self.path_prefix)


class CollectionSearch:
    """A collection index opened for queries: ``search(texts, top_k, filters)``.

    The model must be the one that built the index (same checkpoint bytes): embeddings of
    another model live in another space, so a mismatch is refused, naming both.
    """

    def __init__(self, index_dir: str | Path, model, model_info: dict, device: str | torch.device = "cpu") -> None:
        self.dir = mf.resolve_index_dir(index_dir)
        self.manifest = mf.read_manifest(self.dir)
        built = self.manifest["model"]
        if built.get("sha256") != model_info.get("sha256"):
            raise mf.CollectionError(
                f"{self.dir}: built with {built.get('source')} (sha256 {str(built.get('sha256'))[:12]}), "
                f"not with {model_info.get('source')} (sha256 {str(model_info.get('sha256'))[:12]}); "
                "re-index with this model or query with that one"
            )
        info = self.manifest.get("vector_index")
        if not info or info.get("rows") != len(self.manifest["videos"]):
            raise mf.CollectionError(f"{self.dir}: the index is incomplete (an interrupted run?): run tempstop index again")
        self.videos: list[dict] = self.manifest["videos"]
        self.by_id = {v["id"]: i for i, v in enumerate(self.videos)}
        self.vectors = vi.load_index(self.dir / info["file"]) if self.videos else None
        self.model = model.eval()
        self.model_info = model_info
        self.device = torch.device(device)
        self.timings: dict[str, float] = {}
        self._shards: list[np.ndarray] | None = None  # memory-mapped, opened by the first exact scan

    def __len__(self) -> int:
        return len(self.videos)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings, float32 ``[Q, D]``."""
        ids, mask = self.model.tokenize(list(texts))
        return self.model.encode_text(ids.to(self.device), mask.to(self.device)).float().cpu().numpy()

    def search(self, texts: list[str], top_k: int = 5, filters: Filters | None = None) -> list[list[dict]]:
        """Ranked hits per query: ``{rank, id, score, path, video_id, duration, fps, width,
        height, segment, thumbnail}``."""
        t0 = time.perf_counter()
        queries = self.embed_texts(texts)
        t1 = time.perf_counter()
        hits = self.search_vectors(queries, top_k, filters)
        self.timings.update(encode_text=t1 - t0, search=time.perf_counter() - t1)
        return hits

    def search_vectors(self, queries: np.ndarray, top_k: int, filters: Filters | None = None) -> list[list[dict]]:
        """Like :meth:`search` for query embeddings ``[Q, D]``."""
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be 1..{MAX_TOP_K}, got {top_k}")
        if self.vectors is None:
            return [[] for _ in range(len(queries))]
        allowed = None
        if filters is not None and filters.active():
            allowed = np.array([i for i, v in enumerate(self.videos) if filters.allows(v)], dtype=np.int64)
            if len(allowed) == 0:
                return [[] for _ in range(len(queries))]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(top_k, len(self.videos) if allowed is None else len(allowed))
        if allowed is not None and len(allowed) <= EXACT_FILTER_MAX:
            scores, rows = self._exact(queries, allowed, k)
        else:
            scores, rows = vi.search(self.vectors, queries, k, allowed)
        return [
            [self._hit(rank, int(row), float(score)) for rank, (score, row) in enumerate(zip(s, r, strict=True)) if row >= 0]
            for s, r in zip(scores, rows, strict=True)
        ]

    def _exact(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of ``rows`` by an exact scan of their stored embeddings."""
        if self._shards is None:
            self._shards = [mf.read_shard(self.dir, s, self.manifest["dim"]) for s in self.manifest["shards"]]
        emb = np.stack([self._shards[self.videos[r]["shard"]][self.videos[r]["row"]] for r in rows]).astype(np.float32)
        scores = queries @ emb.T  # [Q, n]
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1), rows[top]

    def _hit(self, rank: int, row: int, score: float) -> dict:
        v = self.videos[row]
        keys = ("id", "path", "video_id", "duration", "fps", "width", "height", "segment", "thumbnail")
        return {"rank": rank + 1, "score": round(score, 4), **{k: v.get(k) for k in keys}}

    def video(self, vid: str) -> dict | None:
        """The manifest entry of video ``vid`` (None if there is none)."""
        row = self.by_id.get(vid)
        return None if row is None else self.videos[row]

    def video_file(self, vid: str) -> Path | None:
        """The video's file, if it exists inside the collection's folder."""
        v = self.video(vid)
        return None if v is None or not v["path"] else inside(self.manifest["root"], v["path"])

    def thumbnail_file(self, vid: str) -> Path | None:
        """The video's thumbnail strip, if it exists inside the index folder."""
        v = self.video(vid)
        return None if v is None else inside(self.dir, v["thumbnail"])


def open_collection(
    index: str | Path, checkpoint: str | Path | None = None, device: str = "cpu", tracking_uri: str | None = None
) -> CollectionSearch:
    """A collection index with the model that built it (its recorded checkpoint or registry
    version; ``checkpoint`` may name the same model elsewhere, another one is refused)."""
    folder = mf.resolve_index_dir(index)
    loaded = open_model(checkpoint or mf.read_manifest(folder)["model"]["source"], device, tracking_uri)
    return CollectionSearch(folder, loaded.model, loaded.identity, device)
