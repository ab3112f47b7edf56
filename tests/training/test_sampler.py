"""GroupedBatchSampler: quadruples stay together, seeded order, consistent DDP shards."""

from __future__ import annotations

import numpy as np
import pytest

from tempstop.training.sampler import GroupedBatchSampler

GROUPS = [i // 4 for i in range(40)]  # 10 quadruples, in store order


def _batches(epoch=0, **kw):
    args = {"groups": GROUPS, "caption_counts": [3] * 40, "batch_size": 8, "seed": 1} | kw
    s = GroupedBatchSampler(**args)
    s.set_epoch(epoch)
    return list(s)


def test_quadruples_stay_in_one_batch():
    for batch in _batches():
        assert len(batch) == 8
        groups = [GROUPS[i] for i, _ in batch]
        assert all(groups.count(g) == 4 for g in groups)


def test_every_video_once_per_epoch_and_one_caption_each():
    batches = _batches(drop_last=False)
    seen = [i for b in batches for i, _ in b]
    assert sorted(seen) == list(range(40))
    assert all(0 <= c < 3 for b in batches for _, c in b)


def test_order_depends_on_seed_and_epoch_only():
    assert _batches() == _batches()
    a = GroupedBatchSampler(GROUPS, [3] * 40, 8, seed=1)
    a.set_epoch(1)
    assert list(a) != _batches()
    assert list(a) == list(a)  # iterating does not advance hidden state
    assert _batches(seed=2) != _batches()
    # Captions vary across epochs (one random caption per video per epoch).
    caps = [dict(pair for b in _batches(epoch=e, drop_last=False) for pair in b) for e in range(3)]
    assert caps[0] != caps[1] and caps[1] != caps[2]


def test_ranks_split_the_global_batches():
    single = _batches(batch_size=8)
    ranks = [_batches(batch_size=4, num_replicas=2, rank=r) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for b, (r0, r1) in enumerate(zip(*ranks, strict=True)):
        assert r0 + r1 == single[b]  # the same global batch, cut in two


def test_drop_last_and_len():
    s = GroupedBatchSampler(GROUPS, [1] * 40, 12)
    assert len(s) == 3 and all(len(b) == 12 for b in s)
    s = GroupedBatchSampler(GROUPS, [1] * 40, 12, drop_last=False)
    assert len(s) == 4 and [len(b) for b in s][-1] == 4


def test_no_groups_and_no_shuffle_keep_store_order():
    s = GroupedBatchSampler(None, [2] * 10, 5, shuffle=False, drop_last=False)
    assert [i for b in s for i, _ in b] == list(range(10))
    assert all(c == 0 for b in s for _, c in b)


def test_state_round_trip():
    s = GroupedBatchSampler(GROUPS, [3] * 40, 8, seed=5)
    s.set_epoch(7)
    t = GroupedBatchSampler(GROUPS, [3] * 40, 8, seed=0)
    t.load_state_dict(s.state_dict())
    assert list(t) == list(s)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="drop_last"):
        GroupedBatchSampler(None, [1] * 8, 2, num_replicas=2, drop_last=False)
    with pytest.raises(ValueError, match="rank"):
        GroupedBatchSampler(None, [1] * 8, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="groups"):
        GroupedBatchSampler([0, 1], [1] * 8, 2)


def _pair_texts():
    """40 videos in 10 quadruples; quadruples 2k and 2k+1 share a colour pair, shapes differ."""
    colours = ["red", "green", "blue", "white", "yellow", "purple", "black", "orange", "pink", "grey"]

    def text(q):
        k = q // 2
        return f"a {colours[k]} {'circle' if q % 2 else 'square'} then a {colours[(k + 5) % 10]} triangle"

    return [text(q) for q in GROUPS]


def test_hard_batches_put_similar_groups_together():
    texts = _pair_texts()
    s = GroupedBatchSampler(GROUPS, [1] * 40, 8, seed=3, texts=texts, hard_fraction=1.0)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert sorted(i for b in batches for i, _ in b) == list(range(40))  # still a permutation
        for b in batches:  # each batch: two quadruples that differ in one shape only
            assert len({GROUPS[i] // 2 for i, _ in b}) == 1


def test_hard_batches_are_seeded_and_shard_consistently():
    texts = _pair_texts()
    kw = {"texts": texts, "hard_fraction": 0.5}
    one = GroupedBatchSampler(GROUPS, [2] * 40, 8, seed=4, **kw)
    assert list(one) == list(GroupedBatchSampler(GROUPS, [2] * 40, 8, seed=4, **kw))
    ranks = [GroupedBatchSampler(GROUPS, [2] * 40, 4, seed=4, num_replicas=2, rank=r, **kw) for r in range(2)]
    assert [a + b for a, b in zip(*map(list, ranks), strict=True)] == list(one)
    with pytest.raises(RuntimeError, match="set_group_vectors"):
        list(GroupedBatchSampler(GROUPS, [1] * 40, 8, hard_fraction=0.5))


def test_hard_batches_from_given_vectors():
    """The model source: vectors set per epoch decide which groups share a batch."""
    s = GroupedBatchSampler(GROUPS, [1] * 40, 8, seed=5, hard_fraction=1.0)
    pairs = np.eye(5, dtype=np.float32)[np.arange(10) // 2]  # groups 2k and 2k+1 alike
    s.set_group_vectors(pairs)
    assert all(len({GROUPS[i] // 2 for i, _ in b}) == 1 for b in s)
    shifted = np.eye(5, dtype=np.float32)[(np.arange(10) + 1) % 10 // 2]  # now 2k+1 and 2k+2
    s.set_group_vectors(shifted)
    assert all(len({(GROUPS[i] + 1) % 10 // 2 for i, _ in b}) == 1 for b in s)
    with pytest.raises(ValueError, match="9 groups"):
        s.set_group_vectors(pairs[:9])


def test_model_group_vectors_average_the_model_text_embeddings():
    import torch

    from tempstop.config import ModelConfig
    from tempstop.inference.embed import embed_texts
    from tempstop.model import create_unified_model
    from tempstop.training.hard_batches import model_group_vectors

    torch.manual_seed(0)
    model = create_unified_model(ModelConfig(variant="meanP")).train()
    texts = ["a red circle", "a red square", "a blue circle", "a blue square"]
    groups = [np.array([0, 3]), np.array([1, 2])]
    vecs = model_group_vectors(model, texts, groups, torch.device("cpu"), batch_size=3)
    assert model.training, "the model's training flag is restored"
    model.eval()
    emb = embed_texts(model, texts, torch.device("cpu"))
    want = torch.nn.functional.normalize(torch.stack([emb[[0, 3]].mean(0), emb[[1, 2]].mean(0)]), dim=-1)
    assert vecs.shape == (2, emb.shape[1])
    assert np.allclose(vecs, want.numpy(), atol=1e-5)
