"""Batch sampler that keeps groups of clips (the demo's quadruples) together, DDP-aware.

Contrastive training learns most from hard negatives. The demo's quadruples hold four clips
over the same two objects that differ only in time; if a batch contains the whole quadruple,
a model that ignores frame order pays for it. This sampler shuffles *groups*, lays their
members one after another and cuts that stream into batches, so a group stays in one batch
whenever the batch size is a multiple of the group size (4 for the demo).

All randomness of the data order lives here and is a pure function of ``(seed, epoch)``:
the order of groups, the order inside a group and the caption drawn for each video (one
random caption per video per epoch). Nothing is drawn from global RNGs, so resuming at an
epoch boundary replays exactly the same batches, and every DDP rank computes the same global
order without communication.

Distributed semantics (like ``DistributedSampler`` + ``drop_last``): each global batch has
``batch_size * num_replicas`` items and rank ``r`` takes the ``r``-th slice of
``batch_size`` items. Every rank yields the same number of batches. With the gathered
contrastive loss the global batch is what the loss sees, so a group split across ranks
still provides its hard negatives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from tempstop.training.hard_batches import caption_vectors, hard_group_order


class GroupedBatchSampler:
    """Yields per-rank batches of ``(video_index, caption_index)`` pairs.

    Args:
        groups: group id of each video (equal ids stay together); ``None`` puts every video
            in its own group (plain shuffling).
        caption_counts: number of captions of each video.
        batch_size: per-rank batch size.
        seed: base seed; the epoch is mixed in (:meth:`set_epoch`).
        shuffle: shuffle groups and members (training); ``False`` keeps the store's order
            and always uses caption 0 (validation).
        drop_last: drop the last incomplete global batch (required with several replicas,
            since every rank must see batches of the same size for the gathered loss).
        num_replicas, rank: DDP world size and this process's rank.
        texts: captions of each video (joined); with ``hard_fraction > 0`` about that fraction
            of every global batch is filled with the groups most similar in caption to a random
            anchor group (:mod:`tempstop.training.hard_batches`), by the words of ``texts``, or
            by vectors given with :meth:`set_group_vectors` (``texts`` None).
    """

    def __init__(
        self,
        groups: Sequence | None,
        caption_counts: Sequence[int],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        texts: Sequence[str] | None = None,
        hard_fraction: float = 0.0,
    ) -> None:
        n = len(caption_counts)
        if groups is not None and len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} videos")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside world of size {num_replicas}")
        if num_replicas > 1 and not drop_last:
            raise ValueError("with several replicas drop_last must be True (equal batches on every rank)")
        if min(caption_counts, default=1) < 1:
            raise ValueError("every video needs at least one caption")
        self.caption_counts = np.asarray(caption_counts, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        # Members of each group in store order; groups in order of first appearance.
        keys = list(range(n)) if groups is None else list(groups)
        members: dict = {}
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
        self.groups = [np.asarray(m, dtype=np.int64) for m in members.values()]
        self.hard_fraction = hard_fraction
        self.vecs = None
        if hard_fraction > 0 and texts is not None:
            if len(texts) != n:
                raise ValueError(f"texts has {len(texts)} entries for {n} videos")
            self.vecs = caption_vectors([" ".join(texts[i] for i in g) for g in self.groups])

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_group_vectors(self, vecs: np.ndarray) -> None:
        """Similarity vectors ``[G, D]`` (unit rows, groups in :attr:`groups` order) for the hard
        batches of the next :meth:`__iter__`; e.g. :func:`~tempstop.training.hard_batches.model_group_vectors`."""
        if len(vecs) != len(self.groups):
            raise ValueError(f"got vectors for {len(vecs)} groups, the sampler has {len(self.groups)}")
        self.vecs = np.asarray(vecs, dtype=np.float32)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order :meth:`__iter__` yields (call before every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.caption_counts)
        if self.drop_last:
            return n // self.global_batch_size
        return -(-n // self.global_batch_size)

    def state_dict(self) -> dict:
        """Everything needed to replay the order: the sampler has no hidden RNG state."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    def order(self) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's global order of videos ``[N]`` and the caption of each video ``[N]``."""
        n = len(self.caption_counts)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if not self.shuffle:
            return np.concatenate(self.groups), np.zeros(n, np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        # Captions first, drawn per video in index order, so they do not depend on the order.
        captions = rng.integers(0, self.caption_counts)
        if self.hard_fraction > 0:
            if self.vecs is None:
                raise RuntimeError("hard batches need group vectors: pass texts or call set_group_vectors")
            sizes = np.array([len(g) for g in self.groups])
            perm = hard_group_order(self.vecs, sizes, self.global_batch_size, self.hard_fraction, rng)
        else:
            perm = rng.permutation(len(self.groups))
        order = np.concatenate([rng.permutation(self.groups[g]) for g in perm])
        return order, captions

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, captions = self.order()
        gbs = self.global_batch_size
        for b in range(len(self)):
            batch = order[b * gbs : (b + 1) * gbs]
            if len(batch) < gbs:  # last, incomplete batch (single replica, no drop_last)
                if self.rank == 0:
                    yield [(int(i), int(captions[i])) for i in batch]
                continue
            mine = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield [(int(i), int(captions[i])) for i in mine]
