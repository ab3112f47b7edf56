"""Text-to-video search over a pre-computed index of video embeddings.

An index holds the L2-normalised video embeddings ``[N, D]`` of a collection (float16 by
default: half the size, and the ranking is unaffected at this precision), the video ids,
the video files, the model config and the checkpoint that produced them. A query is one text
encoding and one matrix-vector product, so searching a few thousand videos takes milliseconds;
loading the model dominates a one-shot command.

Files: ``INDEX.pt`` (one file) or a folder ``INDEX/`` with ``index.pt`` and a readable
``videos.json``. Both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from tempstop.utils import atomic_write, atomic_write_json

INDEX_FORMAT = "tempstop-index/1"


class SearchIndexError(ValueError):
    """An index file is missing, unreadable or does not fit the model."""


def _video_files(store) -> dict[str, str]:
    """video_id -> path of the video file, from the store's source annotations (if still there)."""
    source = getattr(store, "source", None)
    ann = Path(source) / "annotations.json" if source else None
    if ann is None or not ann.is_file():
        return {}
    try:
        records = json.loads(ann.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {}
    for r in records:
        if isinstance(r, dict) and isinstance(r.get("video_id"), str):
            out[r["video_id"]] = str(Path(source) / "videos" / (r.get("video") or f"{r['video_id']}.mp4"))
    return out


def build_index(
    model,
    store,
    device: torch.device,
    config: dict,
    checkpoint: str | Path | None = None,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float16,
    progress: bool = False,
) -> dict:
    """Embed every video of a frame store into an index dict (see :func:`save_index`)."""
    from tempstop.training.evaluation import embed_videos

    t0 = time.perf_counter()
    emb = embed_videos(model, store, device, batch_size, progress=progress)  # [N, D] float32, normalised
    files = _video_files(store)
    items = store.items
    return {
        "format": INDEX_FORMAT,
        "embeddings": emb.to(dtype),
        "video_ids": [it["video_id"] for it in items],
        "keys": [it["key"] for it in items],
        "segments": [list(it["segment"]) if it.get("segment") else [] for it in items],
        "files": [files.get(it["video_id"], "") for it in items],
        "config": config,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "",
        "store": str(Path(store.path).resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def save_index(index: dict, out: str | Path) -> Path:
    """Write ``out`` (``*.pt``) or ``out/index.pt`` + ``out/videos.json``, atomically."""
    out = Path(out)
    target = out if out.suffix == ".pt" else out / "index.pt"
    atomic_write(target, lambda tmp: torch.save(index, tmp))
    if target != out:
        listing = [
            {"video_id": v, "key": k, "file": f, "segment": s or None}
            for v, k, f, s in zip(
                index["video_ids"], index["keys"], index["files"], index["segments"], strict=True
            )
        ]
        atomic_write_json(out / "videos.json", listing)
    return target


def load_index(path: str | Path) -> dict:
    """Read an index file or folder (``weights_only=True``)."""
    path = Path(path)
    target = path / "index.pt" if path.is_dir() else path
    if not target.is_file():
        raise SearchIndexError(f"{path}: no index here (expected a .pt file or a folder with index.pt)")
    try:
        index = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SearchIndexError(f"{target}: cannot read index: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise SearchIndexError(f"{target}: not a TempMe-STOP index (expected format {INDEX_FORMAT!r})")
    return index


class VideoSearch:
    """Ranks the videos of an index for text queries.

    ``VideoSearch.open(index_path)`` loads the index and the checkpoint it names (or the
    one given); ``search("a red circle moves left, then ...", top_k=5)`` returns ranked hits.
    ``timings`` records where the time went (seconds).
    """

    def __init__(self, index: dict, model, device: torch.device | str = "cpu") -> None:
        self.index = index
        self.model = model.eval()
        self.device = torch.device(device)
        # float32 for the product: fp16 matmul on CPU is slow, and N x D floats are small.
        self.embeddings = index["embeddings"].to(self.device, torch.float32)  # [N, D]
        self.timings: dict[str, float] = {}

    @classmethod
    def open(
        cls, index_path: str | Path, checkpoint: str | Path | None = None, device: str = "cpu"
    ) -> VideoSearch:
        from tempstop.training.checkpoint import load_model

        t0 = time.perf_counter()
        index = load_index(index_path)
        t1 = time.perf_counter()
        ckpt = checkpoint or index.get("checkpoint")
        if not ckpt:
            raise SearchIndexError(f"{index_path}: the index names no checkpoint; pass one")
        model, cfg, _ = load_model(ckpt, device)
        if cfg.to_dict()["model"] != index["config"].get("model"):
            raise SearchIndexError(
                f"{ckpt}: its model config differs from the one that built {index_path}; rebuild the index"
            )
        engine = cls(index, model, device)
        engine.timings.update(load_index=t1 - t0, load_model=time.perf_counter() - t1)
        return engine

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @torch.no_grad()
    def search(self, query: str, top_k: int = 5) -> list[dict]:
        """Top ``top_k`` videos for ``query``: ``[{rank, video_id, score, file, segment}]``."""
        return self.search_many([query], top_k)[0]

    @torch.no_grad()
    def search_many(self, queries: list[str], top_k: int = 5) -> list[list[dict]]:
        """Ranked hits for each query (one text batch, one matrix product)."""
        from tempstop.training.evaluation import tokenize

        t0 = time.perf_counter()
        ids, mask = tokenize(self.model, queries)
        text = self.model.encode_text(ids.to(self.device), mask.to(self.device)).float()  # [Q, D]
        t1 = time.perf_counter()
        scores = text @ self.embeddings.T  # [Q, N] cosine
        k = min(top_k, len(self))
        top = scores.topk(k, dim=1)
        self.timings.update(encode_text=t1 - t0, search=time.perf_counter() - t1)
        out = []
        for row_scores, row_idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            out.append(
                [
                    {
                        "rank": r + 1,
                        "video_id": self.index["video_ids"][i],
                        "score": round(s, 4),
                        "file": self.index["files"][i],
                        "segment": self.index["segments"][i] or None,
                    }
                    for r, (s, i) in enumerate(zip(row_scores, row_idx, strict=True))
                ]
            )
        return out
