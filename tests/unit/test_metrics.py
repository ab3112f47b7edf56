"""Retrieval metrics against a brute-force reference (random scores, ties, multi-caption)."""

from __future__ import annotations

import statistics

import pytest
import torch

from tempstop.metrics import (
    dsl_metrics,
    dual_softmax,
    recall_curve,
    retrieval_metrics,
    summarize_ranks,
    t2v_ranks,
    v2t_ranks,
)


def _rank_by_sorting(scores: list[float], correct: set[int]) -> int:
    """Reference rank: sort candidates by score, wrong before correct on ties (pessimistic)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i in correct))
    return 1 + next(pos for pos, i in enumerate(order) if i in correct)


def _reference(sim: torch.Tensor, query_video: list[int]) -> tuple[list[int], list[int]]:
    q, v = sim.shape
    t2v = [_rank_by_sorting(sim[i].tolist(), {query_video[i]}) for i in range(q)]
    v2t = []
    for j in range(v):
        caps = {i for i in range(q) if query_video[i] == j}
        if caps:
            v2t.append(_rank_by_sorting(sim[:, j].tolist(), caps))
    return t2v, v2t


def _summary(ranks: list[int]) -> dict[str, float]:
    return {
        "R1": 100.0 * sum(r <= 1 for r in ranks) / len(ranks),
        "R5": 100.0 * sum(r <= 5 for r in ranks) / len(ranks),
        "R10": 100.0 * sum(r <= 10 for r in ranks) / len(ranks),
        "MdR": float(statistics.median(ranks)),
        "MnR": float(statistics.mean(ranks)),
    }


def _random_case(seed: int, videos: int, max_caps: int, levels: int | None):
    g = torch.Generator().manual_seed(seed)
    caps_per_video = torch.randint(1, max_caps + 1, (videos,), generator=g).tolist()
    query_video = [v for v, n in enumerate(caps_per_video) for _ in range(n)]
    if levels:  # few distinct values: many ties
        sim = torch.randint(0, levels, (len(query_video), videos), generator=g).float() / levels
    else:
        sim = torch.randn(len(query_video), videos, generator=g)
    return sim, query_video


@pytest.mark.parametrize(
    "seed,videos,max_caps,levels",
    [(0, 30, 1, None), (1, 40, 5, None), (2, 25, 3, 4), (3, 50, 1, 3), (4, 12, 6, 2)],
)
def test_metrics_match_brute_force(seed, videos, max_caps, levels):
    sim, query_video = _random_case(seed, videos, max_caps, levels)
    ref_t2v, ref_v2t = _reference(sim, query_video)
    qv = torch.tensor(query_video)
    assert t2v_ranks(sim, qv).tolist() == ref_t2v
    assert v2t_ranks(sim, qv).tolist() == ref_v2t
    got = retrieval_metrics(sim, qv)
    for name, ref in (("t2v", ref_t2v), ("v2t", ref_v2t)):
        for key, value in _summary(ref).items():
            assert got[name][key] == pytest.approx(value), (name, key)


def test_chunking_gives_the_same_ranks():
    sim, query_video = _random_case(7, 60, 4, 5)
    qv = torch.tensor(query_video)
    assert torch.equal(t2v_ranks(sim, qv, chunk=7), t2v_ranks(sim, qv))
    assert torch.equal(v2t_ranks(sim, qv, chunk=5), v2t_ranks(sim, qv))


def test_perfect_and_constant_scores():
    eye = torch.eye(5)
    m = retrieval_metrics(eye, torch.arange(5))
    assert m["t2v"] == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0}
    # Equal scores everywhere: every wrong candidate ties, so the rank is the worst one.
    flat = retrieval_metrics(torch.zeros(5, 5), torch.arange(5))
    assert flat["t2v"]["R1"] == 0.0 and flat["t2v"]["MnR"] == 5.0


def test_other_correct_captions_do_not_push_a_video_down():
    # Video 0 has two captions tied at the top: its v2t rank is 1, not 2.
    sim = torch.tensor([[0.9, 0.1], [0.9, 0.2], [0.3, 0.8]])
    assert v2t_ranks(sim, torch.tensor([0, 0, 1])).tolist() == [1, 1]


def test_recall_curve_and_summary_agree():
    ranks = torch.tensor([1, 2, 2, 7, 30])
    curve = recall_curve(ranks, 10)
    s = summarize_ranks(ranks)
    assert len(curve) == 10
    assert curve[0] == s["R1"] and curve[4] == s["R5"] and curve[9] == s["R10"]
    assert curve == sorted(curve)
    assert s["MdR"] == 2.0 and s["MnR"] == pytest.approx(8.4)


def test_curve_in_retrieval_metrics_is_capped_by_candidates():
    sim, query_video = _random_case(5, 8, 2, None)
    m = retrieval_metrics(sim, torch.tensor(query_video), curve_k=50)
    assert len(m["recall_curve"]["t2v"]) == 8
    assert m["recall_curve"]["t2v"][-1] == 100.0


def test_dual_softmax_fixes_a_hub_video():
    # Video 0 scores high for every query (a hub); DSL's prior over queries demotes it.
    sim = torch.tensor([[0.90, 0.85, 0.10], [0.90, 0.20, 0.85], [0.95, 0.10, 0.20]])
    qv = torch.tensor([1, 2, 0])
    assert retrieval_metrics(sim, qv)["t2v"]["R1"] == pytest.approx(100 / 3)
    assert dsl_metrics(sim, qv, temperature=100.0)["t2v_dsl"]["R1"] == 100.0


def test_dual_softmax_prior_sums_over_queries():
    sim = torch.randn(6, 4)
    prior = dual_softmax(sim, 10.0) / sim
    assert torch.allclose((prior).sum(0), torch.ones(4), atol=1e-5)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="one entry per query"):
        retrieval_metrics(torch.zeros(3, 3), torch.arange(2))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))
