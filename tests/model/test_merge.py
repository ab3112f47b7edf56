"""Token merging primitives (pure functions)."""

from __future__ import annotations

import pytest
import torch

from tempstop.model.merge import (
    MASKED_BIAS,
    add_rows,
    alternate_split,
    apply_merge,
    merge_count,
    merge_sum,
    merge_tokens,
    plan_merge,
    put_rows,
    size_bias,
    take_rows,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("n", "n_cls", "ratio", "expected"),
    [  # the official ViT-B/32 schedule: ClipMe 68 -> 48 -> 44, 88 -> 62 -> 56, 168 -> 118 -> 107, then 97
        (68, 2, 0.3, 20),
        (48, 2, 0.1, 4),
        (88, 4, 0.3, 26),
        (62, 4, 0.1, 6),
        (168, 12, 0.3, 50),
        (118, 12, 0.1, 11),
        (107, 12, 0.1, 10),
    ],
)
def test_merge_count_reproduces_the_official_schedule(n, n_cls, ratio, expected):
    assert merge_count(n, n_cls, ratio) == expected


def test_merge_count_is_capped_at_one_bipartite_round():
    assert merge_count(10, 1, 0.9) == 4  # (10 - 1) // 2
    assert merge_count(10, 1, 0.0) == 0


@pytest.mark.parametrize(("start", "end"), [(1, 50), (2, 68), (4, 88), (12, 168), (12, 107), (3, 20)])
def test_split_puts_even_absolute_positions_on_side_a(start, end):
    a, b = alternate_split(start, end, CPU)
    assert all(p % 2 == 0 for p in a.tolist()) and all(p % 2 == 1 for p in b.tolist())
    assert sorted(a.tolist() + b.tolist()) == list(range(start, end))


def test_split_sizes_match_the_official_merge_calls():
    import json
    from pathlib import Path

    meta = json.loads((Path(__file__).parents[1] / "fixtures" / "tempme" / "reference.json").read_text())[
        "meta"
    ]
    for call in meta["merge_calls"]:
        a, b = alternate_split(call["cls_num"], call["n"], CPU)
        assert (a.numel(), b.numel()) == (call["n_a"], call["n_b"]), call


def test_order_after_a_merge_is_cls_unmerged_a_then_b():
    # 1 CLS; A = {2, 4, 6}, B = {1, 3, 5}. Token 4 is a copy of token 5: it merges away.
    torch.manual_seed(0)
    x = torch.randn(1, 7, 8)
    x[0, 4] = x[0, 5]
    plan = plan_merge(x, 1, 1)
    assert plan.src.tolist() == [[4]] and plan.dst.tolist() == [[5]]
    assert plan.keep.tolist() == [[0, 2, 6, 1, 3, 5]]
    out, size = apply_merge(plan, x, torch.ones(1, 7))
    assert torch.equal(out[0, :3], x[0, [0, 2, 6]])
    assert size.tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0, 2.0]]


def test_merge_is_size_weighted_mean_and_keeps_total_size():
    # 1 protected token; A = {2}, B = {1, 3}; token 2 is closest to token 3.
    x = torch.tensor([[[0.0, 5.0], [1.0, 0.0], [-1.0, 0.1], [-1.0, 0.0]]])
    size = torch.tensor([[1.0, 1.0, 3.0, 1.0]])
    plan = plan_merge(x, 1, 1)
    assert plan.src.tolist() == [[2]] and plan.dst.tolist() == [[3]]
    out, out_size = apply_merge(plan, x, size)
    assert out.shape == (1, 3, 2)
    torch.testing.assert_close(out[0, 2], (3 * x[0, 2] + 1 * x[0, 3]) / 4)
    assert torch.equal(out[0, :2], x[0, :2])  # the others keep their value
    assert out_size.tolist() == [[1.0, 1.0, 4.0]]


def test_several_tokens_merging_into_one_target():
    # no protected token: A = {0, 2, 4}, B = {1, 3}; tokens 0 and 4 both pick token 1
    x = torch.tensor([[[1.0, 0.05], [1.0, 0.0], [0.0, 1.0], [1.0, -0.05], [1.0, -0.04]]])
    x[0, 3] = torch.tensor([0.0, -1.0])
    plan = plan_merge(x, 2, 0)
    assert sorted(plan.src[0].tolist()) == [0, 4] and plan.dst.tolist() == [[1, 1]]
    out, size = apply_merge(plan, x, torch.ones(1, 5))
    torch.testing.assert_close(out[0, 1], x[0, [0, 1, 4]].mean(0))
    assert size.tolist() == [[1.0, 3.0, 1.0]]


def test_new_positions_follow_tokens_through_a_merge():
    x = torch.randn(3, 12, 4)
    size = torch.ones(3, 12)
    plan = plan_merge(x, 4, 1)
    out, _ = apply_merge(plan, x, size)
    # with unit sizes, a merged token is the mean of the old tokens mapped to it
    for g in range(3):
        for j in range(out.shape[1]):
            members = (plan.new_pos[g] == j).nonzero().flatten()
            torch.testing.assert_close(out[g, j], x[g, members].mean(0))
    mass = torch.rand(3, 12)
    torch.testing.assert_close(merge_sum(plan, mass).sum(1), mass.sum(1))


def test_masked_matching_never_pairs_real_and_padding_tokens():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 8)
    valid = torch.ones(1, 16, dtype=torch.bool)
    valid[0, 10:] = False
    plan = plan_merge(x, 6, 0, valid=valid)
    for s, d in zip(plan.src[0].tolist(), plan.dst[0].tolist(), strict=True):
        if valid[0, s]:
            assert valid[0, d]
    assert set(plan.src[0, :3].tolist()) == {10, 12, 14}  # padding merges first


def test_padding_content_does_not_change_real_tokens():
    torch.manual_seed(0)
    x = torch.randn(2, 20, 8)
    size = torch.ones(2, 20)
    size[:, 12:] = 0
    other = x.clone()
    other[:, 12:] = torch.randn(2, 8, 8) * 5
    a, sa, _ = merge_tokens(x, size, 2, 7, x, masked=True)
    b, sb, _ = merge_tokens(other, size, 2, 7, other, masked=True)
    real = sa > 0
    assert torch.equal(sa, sb)
    torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-6)


def test_merge_tokens_keeps_cls():
    x = torch.randn(2, 21, 4)
    out, size, plan = merge_tokens(x, torch.ones(2, 21), 1, 10, x)
    assert out.shape == (2, 11, 4) and plan.r == 10
    assert torch.equal(out[:, 0], x[:, 0])
    assert size.sum(1).tolist() == [21.0, 21.0]
    with pytest.raises(ValueError, match="side A"):
        merge_tokens(x, torch.ones(2, 21), 1, 11, x)


def test_size_bias_is_log_size_and_masks_size_zero():
    bias = size_bias(torch.tensor([[1.0, 2.0, 0.0]]), torch.float32)
    assert bias.shape == (1, 1, 1, 3)
    torch.testing.assert_close(bias[0, 0, 0, :2], torch.tensor([1.0, 2.0]).log())
    assert bias[0, 0, 0, 2] == MASKED_BIAS


def test_row_helpers_match_gather_and_scatter():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 5)
    idx = torch.tensor([[0, 6, 6, 2], [1, 1, 1, 1], [5, 4, 3, 0]])  # repeats accumulate
    rows = torch.randn(3, 4, 5)
    expanded = idx[..., None].expand(-1, -1, 5)
    assert torch.equal(take_rows(x, idx), x.gather(1, expanded))
    assert torch.equal(take_rows(x[:, :, 0], idx), x[:, :, 0].gather(1, idx))  # [G, N] too
    torch.testing.assert_close(add_rows(x, idx, rows), x.scatter_add(1, expanded, rows))
    distinct = torch.tensor([[0, 6, 3, 2], [1, 2, 3, 4], [5, 4, 3, 0]])
    assert torch.equal(put_rows(x, distinct, rows), x.scatter(1, distinct[..., None].expand(-1, -1, 5), rows))
    # out of place unless asked; a strided input is fine out of place
    before = x.clone()
    add_rows(x, idx, rows)
    put_rows(x[:, 1:], distinct.clamp_max(5), rows)
    assert torch.equal(x, before)
    y = x.clone()
    assert add_rows(y, idx, rows, inplace=True).data_ptr() == y.data_ptr()
    torch.testing.assert_close(y, x.scatter_add(1, expanded, rows))


def test_row_helpers_pass_gradients_like_gather():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, requires_grad=True)
    idx = torch.tensor([[0, 5, 5], [2, 1, 0]])
    rows = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(2, 6, 4)
    (add_rows(x, idx, take_rows(x, idx) * rows) * weight).sum().backward()
    got = (x.grad.clone(), rows.grad.clone())
    x.grad = rows.grad = None
    expanded = idx[..., None].expand(-1, -1, 4)
    (x.scatter_add(1, expanded, x.gather(1, expanded) * rows) * weight).sum().backward()
    torch.testing.assert_close(got, (x.grad, rows.grad))
