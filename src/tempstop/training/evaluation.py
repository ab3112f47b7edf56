"""Embedding a split and scoring retrieval: used by validation, ``tempstop evaluate`` and search.

Videos and queries are embedded in batches (in DDP each rank embeds a strided shard and the
shards are gathered), the similarity is the cosine of the L2-normalised embeddings, and
:mod:`tempstop.metrics` turns it into R@K / MdR / MnR.
"""

from __future__ import annotations

import contextlib
import inspect
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tempstop.data.transforms import frames_to_tensor
from tempstop.metrics import dsl_metrics, retrieval_metrics
from tempstop.training.dataset import PARAGRAPH_MAX_WORDS, VideoDataset, build_queries, collate, is_paragraph
from tempstop.training.distributed import DistInfo, gather_shards, shard_indices
from tempstop.utils import model_mode

CURVE_K = 50
GALLERY_TOP_K = 5


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def tokenize(model, texts: list[str], max_words: int | None = None):
    """``model.tokenize`` with a word limit when the model accepts one (paragraph queries)."""
    if max_words is not None and "max_words" in inspect.signature(model.tokenize).parameters:
        return model.tokenize(texts, max_words=max_words)
    return model.tokenize(texts)


@torch.no_grad()
def embed_videos(
    model,
    store,
    device: torch.device,
    batch_size: int = 64,
    info: DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """L2-normalised embeddings of every store item: float32 ``[N, D]`` on CPU."""
    info = info or DistInfo(device=device)
    mine = shard_indices(len(store), info)
    loader = DataLoader(
        VideoDataset(store, mine), batch_size=batch_size, num_workers=num_workers, collate_fn=collate
    )
    parts = []
    for batch in tqdm(loader, desc="embed videos", disable=not progress, leave=False):
        video = frames_to_tensor(batch["frames"].to(device, non_blocking=True))  # [B, T, 3, S, S]
        with autocast(device, amp_dtype):
            emb = model.encode_video(video, batch["mask"].to(device))  # [B, D]
        parts.append(emb.float())
    local = torch.cat(parts) if parts else _empty(model, device, len(mine))
    return gather_shards(local, len(store), info).cpu()


@torch.no_grad()
def embed_texts(
    model,
    texts: list[str],
    device: torch.device,
    batch_size: int = 256,
    max_words: int | None = None,
    info: DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """L2-normalised embeddings of ``texts``: float32 ``[Q, D]`` on CPU."""
    info = info or DistInfo(device=device)
    mine = shard_indices(len(texts), info)
    parts = []
    for start in tqdm(range(0, len(mine), batch_size), desc="embed texts", disable=not progress, leave=False):
        chunk = [texts[i] for i in mine[start : start + batch_size]]
        ids, mask = tokenize(model, chunk, max_words)
        with autocast(device, amp_dtype):
            emb = model.encode_text(ids.to(device), mask.to(device))  # [b, D]
        parts.append(emb.float())
    local = torch.cat(parts) if parts else _empty(model, device, len(mine))
    return gather_shards(local, len(texts), info).cpu()


def _empty(model, device: torch.device, n: int) -> torch.Tensor:
    # A rank with nothing to embed (fewer items than ranks) still joins the gather, with the
    # model's embedding width.
    return torch.zeros((n, int(model.embed_dim)), device=device)


def evaluate_store(
    model,
    store,
    device: torch.device,
    datatype: str,
    batch_size: int = 64,
    dsl: bool = False,
    dsl_temperature: float = 100.0,
    info: DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    progress: bool = False,
    gallery: int = 0,
    return_similarity: bool = False,
) -> dict:
    """Retrieval metrics of ``model`` on a frame store.

    Sentence level (MSR-VTT, VATEX, demo...): every caption is a query. Paragraph level
    (DiDeMo, ActivityNet): a video's captions joined into one query of up to 64 words.
    Returns the evaluation JSON fields ``num_videos, num_queries, datatype, level, t2v, v2t,
    recall_curve`` (+ ``t2v_dsl, v2t_dsl`` with ``dsl``; ``gallery``, the top videos of
    ``gallery`` queries (:func:`gallery_entries`), when ``gallery > 0``) and ``seconds``;
    with ``return_similarity`` also ``similarity``, the ``[Q, V]`` tensor (for analyses).
    """
    t0 = time.perf_counter()
    paragraph = is_paragraph(datatype)
    texts, query_video = build_queries(store.items, paragraph)
    if not texts:
        raise ValueError(f"{getattr(store, 'path', store)}: no captions to query with")
    with model_mode(model):
        videos = embed_videos(model, store, device, batch_size, info, amp_dtype, num_workers, progress)
        queries = embed_texts(
            model,
            texts,
            device,
            batch_size,
            PARAGRAPH_MAX_WORDS if paragraph else None,
            info,
            amp_dtype,
            progress,
        )
    sim = queries @ videos.T  # [Q, V] cosine similarity
    metrics = retrieval_metrics(sim, query_video, curve_k=CURVE_K)
    out = {
        "num_videos": len(store),
        "num_queries": len(texts),
        "datatype": datatype,
        "level": "paragraph" if paragraph else "sentence",
        "t2v": metrics["t2v"],
        "v2t": metrics["v2t"],
        "recall_curve": metrics["recall_curve"],
    }
    if dsl:
        out.update(dsl_metrics(sim, query_video, dsl_temperature))
    if gallery > 0:
        out["gallery"] = gallery_entries(sim, texts, query_video, store.items, gallery, GALLERY_TOP_K)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if return_similarity:
        out["similarity"] = sim
    return out


def gallery_entries(
    sim: torch.Tensor,
    texts: list[str],
    query_video: torch.Tensor,
    store_items: list[dict],
    n: int,
    top_k: int = GALLERY_TOP_K,
) -> list[dict]:
    """The ``top_k`` videos of ``n`` text queries spread over the split (a retrieval gallery).

    ``sim`` is the ``[Q, V]`` cosine similarity, ``query_video`` the ``[Q]`` index of the
    video each query describes (one per query at sentence and paragraph level alike) and
    ``store_items`` the store's index items. Query ``round(j * Q / n)`` is picked for
    ``j < n`` (at most ``Q`` distinct queries). Returns one entry per picked query:
    ``{"query", "target": [video index], "target_ids": [video_id], "top": [{"index",
    "video_id", "score"}]}``, best first; ties keep the video order.
    """
    num_queries, num_videos = sim.shape
    n = min(n, num_queries)
    if n <= 0 or num_videos == 0:
        return []
    picks = list(dict.fromkeys(min(round(j * num_queries / n), num_queries - 1) for j in range(n)))
    scores, order = torch.sort(sim[picks].float(), dim=1, descending=True, stable=True)  # [n, V]
    k = min(top_k, num_videos)
    entries = []
    for row, q in enumerate(picks):
        target = [int(query_video[q])]
        top = [
            {"index": int(v), "video_id": store_items[int(v)]["video_id"], "score": round(float(s), 4)}
            for v, s in zip(order[row, :k], scores[row, :k], strict=True)
        ]
        entries.append(
            {
                "query": texts[q],
                "target": target,
                "target_ids": [store_items[v]["video_id"] for v in target],
                "top": top,
            }
        )
    return entries
