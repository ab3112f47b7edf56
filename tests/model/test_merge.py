"""Token merging primitives (pure functions)."""

from __future__ import annotations

import pytest
import torch

from tempstop.model.merge import (
    MASKED_BIAS,
    alternate_split,
    apply_merge,
    clip_split,
    merge_protected,
    merge_sum,
    new_positions,
    plan_merge,
    size_bias,
    tokens_to_keep,
)


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


def test_merge_is_size_weighted_mean_and_keeps_total_size():
    # A = even positions {0, 2}, B = odd {1, 3}; token 0 is closest to token 1.
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [0.0, 1.0]]])
    size = torch.tensor([[3.0, 1.0, 1.0, 1.0]])
    a_idx, b_idx = alternate_split(4, x.device)
    plan = plan_merge(x, 1, a_idx, b_idx)
    assert plan.src.tolist() == [[0]] and plan.dst.tolist() == [[0]]
    out, out_size = apply_merge(plan, x, size)
    assert out.shape == (1, 3, 2)
    merged = (3 * x[0, 0] + 1 * x[0, 1]) / 4
    torch.testing.assert_close(out[0, 1], merged)
    assert out_size.sum() == size.sum()
    assert out_size.tolist() == [[1.0, 4.0, 1.0]]  # kept A token, then B tokens


def test_unmerged_b_tokens_keep_their_exact_value():
    x = torch.randn(2, 10, 8)
    plan = plan_merge(x, 2, *alternate_split(10, x.device))
    out, _ = apply_merge(plan, x, torch.ones(2, 10))
    for g in range(2):
        untouched = set(range(5)) - set(plan.dst[g].tolist())
        for j in untouched:
            assert torch.equal(out[g, 3 + j], x[g, 2 * j + 1])


def test_new_positions_follow_tokens_through_a_merge():
    x = torch.randn(3, 12, 4)
    size = torch.ones(3, 12)
    plan = plan_merge(x, 4, *alternate_split(12, x.device))
    out, _ = apply_merge(plan, x, size)
    pos = new_positions(plan, 12)
    # with unit sizes, a merged token is the mean of the old tokens mapped to it
    for g in range(3):
        for j in range(out.shape[1]):
            members = (pos[g] == j).nonzero().flatten()
            torch.testing.assert_close(out[g, j], x[g, members].mean(0))
    mass = torch.rand(3, 12)
    torch.testing.assert_close(merge_sum(plan, mass).sum(1), mass.sum(1))


def test_masked_matching_never_pairs_real_and_padding_tokens():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 8)
    valid = torch.ones(1, 16, dtype=torch.bool)
    valid[0, 10:] = False
    plan = plan_merge(x, 6, *alternate_split(16, x.device), valid=valid)
    src = plan.a_idx[plan.src[0]]
    dst = plan.b_idx[plan.dst[0]]
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        if valid[0, s]:
            assert valid[0, d]
    # the padding A tokens (10, 12, 14) merge first
    assert set(src[:3].tolist()) == {10, 12, 14}


def test_padding_content_does_not_change_real_tokens():
    torch.manual_seed(0)
    x = torch.randn(2, 20, 8)
    size = torch.ones(2, 20)
    size[:, 12:] = 0
    other = x.clone()
    other[:, 12:] = torch.randn(2, 8, 8) * 5
    for split in (None, clip_split(2, 9, x.device)):  # 18 mergeable tokens after 2 CLS
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
    a, b = clip_split(3, 4, torch.device("cpu"))
    assert a.tolist() == [4, 5, 6, 7]
    assert b.tolist() == [0, 1, 2, 3, 8, 9, 10, 11]


def test_size_bias_is_log_size_and_masks_size_zero():
    bias = size_bias(torch.tensor([[1.0, 2.0, 0.0]]), torch.float32)
    assert bias.shape == (1, 1, 1, 3)
    torch.testing.assert_close(bias[0, 0, 0, :2], torch.tensor([1.0, 2.0]).log())
    assert bias[0, 0, 0, 2] == MASKED_BIAS
