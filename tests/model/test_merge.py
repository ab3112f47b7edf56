"""Token merging primitives (pure functions)."""

from __future__ import annotations

import pytest
import torch

from tempstop.model.merge import (
    MASKED_BIAS,
    add_rows,
    alternate_split,
    apply_merge,
    clip_split,
    merge_protected,
    merge_sum,
    plan_merge,
    put_rows,
    size_bias,
    take_rows,
    tokens_to_keep,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("n", "keep", "expected"),
    [
        (68, 0.7, 48),
        (48, 0.9, 44),
        (88, 0.7, 62),
        (62, 0.9, 56),
        (168, 0.7, 118),
        (118, 0.9, 107),
        (107, 0.9, 97),
    ],
)
def test_keep_rounding_reproduces_tempme_counts(n, keep, expected):
    assert tokens_to_keep(n, keep) == expected


def test_keep_rounding_does_not_round_exact_products_up():
    assert tokens_to_keep(50, 0.7) == 35
    assert tokens_to_keep(10, 1.0) == 10


def test_merge_is_size_weighted_mean_and_keeps_order_and_total_size():
    # A = positions {0, 2}, B = {1, 3}; token 0 is closest to token 1.
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [0.0, 1.0]]])
    size = torch.tensor([[3.0, 1.0, 1.0, 1.0]])
    plan = plan_merge(x, 1, *alternate_split(0, 4, CPU))
    assert plan.src.tolist() == [[0]] and plan.dst.tolist() == [[1]]
    out, out_size = apply_merge(plan, x, size)
    assert out.shape == (1, 3, 2)
    torch.testing.assert_close(out[0, 0], (3 * x[0, 0] + 1 * x[0, 1]) / 4)
    assert torch.equal(out[0, 1:], x[0, 2:])  # survivors keep their order and value
    assert out_size.tolist() == [[4.0, 1.0, 1.0]]


def test_several_tokens_merging_into_one_target():
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [1.0, -0.05], [0.0, -1.0]]])
    plan = plan_merge(x, 2, torch.tensor([1, 3]), torch.tensor([0, 2, 4]))
    assert plan.dst.tolist() == [[0, 0]]
    out, size = apply_merge(plan, x, torch.ones(1, 5))
    torch.testing.assert_close(out[0, 0], x[0, [0, 1, 3]].mean(0))
    assert size.tolist() == [[3.0, 1.0, 1.0]]


def test_new_positions_follow_tokens_through_a_merge():
    x = torch.randn(3, 12, 4)
    size = torch.ones(3, 12)
    plan = plan_merge(x, 4, *alternate_split(0, 12, CPU))
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
    plan = plan_merge(x, 6, *alternate_split(0, 16, CPU), valid=valid)
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
    for split in (None, clip_split(2, 2, 9, CPU)):  # 2 CLS, then 2 clips of 9
        a, sa, _ = merge_protected(x, size, 2, 7, x, split=split, masked=True)
        b, sb, _ = merge_protected(other, size, 2, 7, other, split=split, masked=True)
        real = sa > 0
        assert torch.equal(sa, sb)
        torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-6)


def test_merge_protected_keeps_cls_and_handles_deep_cuts():
    x = torch.randn(2, 21, 4)
    out, size, plans = merge_protected(x, torch.ones(2, 21), 1, 15, x)
    assert out.shape == (2, 6, 4) and len(plans) > 1  # more than half: several rounds
    assert torch.equal(out[:, 0], x[:, 0])
    assert size.sum(1).tolist() == [21.0, 21.0]


def test_clip_split_puts_adjacent_clips_on_opposite_sides():
    a, b = clip_split(3, 3, 4, CPU)
    assert a.tolist() == [7, 8, 9, 10]
    assert b.tolist() == [3, 4, 5, 6, 11, 12, 13, 14]


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
