"""Retrieval metrics: ranks, R@K, MdR, MnR, recall curves and dual-softmax re-ranking.

Conventions (every function here follows them):

- A similarity matrix ``sim`` is ``[Q, V]``: one row per text query, one column per video.
  ``query_video[q]`` is the column of the video that query ``q`` describes. Several queries
  may describe the same video (sentence-level MSR-VTT / VATEX: every caption is a query);
  paragraph-level datasets have one query per video.
- A rank is 1-based: ``rank = 1 + number of wrong candidates scored at least as high as the
  best correct candidate``. Ties with wrong candidates therefore count against the model
  (a model that scores everything equally gets the worst rank, not the index order's luck),
  while other correct candidates never push a correct answer down.
- text-to-video (t2v): per query, candidates are the videos; exactly one is correct.
- video-to-text (v2t): per video, candidates are all queries; every caption of the video is
  correct, and the video counts at the best rank among its captions.
- R@K is a percentage; MdR is the median rank, MnR the mean rank (both 1-based).
"""

from __future__ import annotations

import torch

DEFAULT_KS = (1, 5, 10)


def _check(sim: torch.Tensor, query_video: torch.Tensor) -> torch.Tensor:
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [queries, videos], got shape {tuple(sim.shape)}")
    query_video = torch.as_tensor(query_video, dtype=torch.long, device=sim.device)
    if query_video.shape != (sim.shape[0],):
        raise ValueError(
            f"query_video needs one entry per query ({sim.shape[0]}), got {tuple(query_video.shape)}"
        )
    if sim.shape[0] and (query_video.min() < 0 or query_video.max() >= sim.shape[1]):
        raise ValueError("query_video holds a video index outside the similarity matrix")
    return query_video


def t2v_ranks(sim: torch.Tensor, query_video: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """1-based rank of each query's video among all videos: ``[Q]`` long."""
    query_video = _check(sim, query_video)
    out = []
    for start in range(0, sim.shape[0], chunk):
        s = sim[start : start + chunk].float()  # [q, V]
        gt = query_video[start : start + chunk]
        correct = s.gather(1, gt[:, None])  # [q, 1]
        # Counts the wrong videos at or above the correct one, plus the correct one itself.
        out.append((s >= correct).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def v2t_ranks(sim: torch.Tensor, query_video: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """1-based rank of each video's best caption among all queries: ``[V]`` long.

    Videos without any query get rank 0 and must be dropped by the caller (they have no
    correct answer); :func:`retrieval_metrics` does so.
    """
    query_video = _check(sim, query_video)
    num_videos = sim.shape[1]
    out = []
    for start in range(0, num_videos, chunk):
        cols = torch.arange(start, min(start + chunk, num_videos), device=sim.device)
        s = sim[:, cols].float().T  # [v, Q]
        is_correct = query_video[None, :] == cols[:, None]  # [v, Q]
        best = s.masked_fill(~is_correct, float("-inf")).amax(1, keepdim=True)  # [v, 1]
        wrong_above = ((s >= best) & ~is_correct).sum(1)
        rank = wrong_above + 1
        out.append(torch.where(is_correct.any(1), rank, torch.zeros_like(rank)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def summarize_ranks(ranks: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """``{"R1", "R5", "R10", "MdR", "MnR"}`` from 1-based ranks (names without ``@``)."""
    r = ranks.double()
    if r.numel() == 0:
        raise ValueError("no ranks to summarise (empty query set)")
    out = {f"R{k}": float((r <= k).double().mean() * 100.0) for k in ks}
    out["MdR"] = float(r.quantile(0.5))  # the usual median: mean of the middle two when even
    out["MnR"] = float(r.mean())
    return out


def recall_curve(ranks: torch.Tensor, k_max: int) -> list[float]:
    """``[R@1, R@2, ..., R@k_max]`` in percent."""
    r = ranks.long()
    counts = torch.bincount(r.clamp(max=k_max + 1), minlength=k_max + 2)[1 : k_max + 1]
    return [float(x) for x in counts.cumsum(0).double() / max(r.numel(), 1) * 100.0]


def dual_softmax(sim: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """Dual-softmax re-ranking (DSL, Cheng et al. 2021) of a ``[Q, V]`` t2v matrix.

    Each score is multiplied by a prior: the softmax over the *queries* of the video's column,
    so a video that matches every query a little loses to the one it matches best. For v2t,
    call it on ``sim.T`` (the prior then runs over videos). It uses the whole query set, so
    its numbers are reported apart from the raw ones.
    """
    sim = sim.float()
    return sim * torch.softmax(sim * temperature, dim=0)


def retrieval_metrics(
    sim: torch.Tensor,
    query_video: torch.Tensor,
    ks: tuple[int, ...] = DEFAULT_KS,
    curve_k: int = 0,
) -> dict:
    """t2v and v2t metrics of a ``[Q, V]`` similarity matrix.

    Returns ``{"t2v": {R1, R5, R10, MdR, MnR}, "v2t": {...}}`` and, when ``curve_k > 0``,
    ``"recall_curve": {"t2v": [...], "v2t": [...]}`` up to ``min(curve_k, candidates)``.
    """
    query_video = _check(sim, query_video)
    t2v = t2v_ranks(sim, query_video)
    v2t = v2t_ranks(sim, query_video)
    v2t = v2t[v2t > 0]  # videos without a caption have no correct answer
    out = {"t2v": summarize_ranks(t2v, ks), "v2t": summarize_ranks(v2t, ks)}
    if curve_k > 0:
        out["recall_curve"] = {
            "t2v": recall_curve(t2v, min(curve_k, sim.shape[1])),
            "v2t": recall_curve(v2t, min(curve_k, sim.shape[0])),
        }
    return out


def dsl_metrics(
    sim: torch.Tensor, query_video: torch.Tensor, temperature: float = 100.0, ks: tuple[int, ...] = DEFAULT_KS
) -> dict:
    """Metrics after dual-softmax re-ranking: ``{"t2v_dsl": {...}, "v2t_dsl": {...}}``."""
    query_video = _check(sim, query_video)
    t2v = t2v_ranks(dual_softmax(sim, temperature), query_video)
    v2t = v2t_ranks(dual_softmax(sim.T, temperature).T, query_video)
    return {"t2v_dsl": summarize_ranks(t2v, ks), "v2t_dsl": summarize_ranks(v2t[v2t > 0], ks)}
