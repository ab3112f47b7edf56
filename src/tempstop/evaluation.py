"""Retrieval on a split: used by validation during training, ``tempstop evaluate`` and the ablation.

Videos and queries are embedded by :mod:`tempstop.inference.embed` (under DDP the trainer
passes its ranks as ``shards``), the similarity is the cosine of the L2-normalised embeddings,
and :mod:`tempstop.metrics` turns it into R@K / MdR / MnR.
"""

from __future__ import annotations

import time

import torch

from tempstop.config import PARAGRAPH_DATATYPES
from tempstop.inference.embed import Shards, embed_texts, embed_videos
from tempstop.metrics import dsl_metrics, retrieval_metrics
from tempstop.utils import model_mode

#: Words of a paragraph query (captions of a video joined), as CLIP4Clip uses for DiDeMo / ActivityNet.
PARAGRAPH_MAX_WORDS = 64
CURVE_K = 50
GALLERY_TOP_K = 5


def is_paragraph(datatype: str) -> bool:
    """DiDeMo and ActivityNet are evaluated paragraph-to-video."""
    return datatype in PARAGRAPH_DATATYPES


def build_queries(items: list[dict], paragraph: bool) -> tuple[list[str], torch.Tensor]:
    """Text queries of an evaluation split and the store item each one describes.

    Sentence level: every caption is a query (``query_video`` repeats the video's index).
    Paragraph level: a video's captions joined in order into one query.
    """
    texts: list[str] = []
    owners: list[int] = []
    for i, item in enumerate(items):
        captions = [c.strip() for c in item["captions"] if c.strip()]
        if not captions:
            continue
        if paragraph:
            texts.append(" ".join(captions))
            owners.append(i)
        else:
            texts.extend(captions)
            owners.extend([i] * len(captions))
    return texts, torch.tensor(owners, dtype=torch.long)


def evaluate_store(
    model,
    store,
    device: torch.device,
    datatype: str,
    batch_size: int = 64,
    dsl: bool = False,
    dsl_temperature: float = 100.0,
    shards: Shards | None = None,
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
    max_words = PARAGRAPH_MAX_WORDS if paragraph else None
    with model_mode(model):
        videos = embed_videos(model, store, device, batch_size, shards, amp_dtype, num_workers, progress)
        queries = embed_texts(model, texts, device, batch_size, max_words, shards, amp_dtype, progress)
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
