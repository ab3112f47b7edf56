"""Hard-negative batch composition from caption similarity (``demo_recipe.hard_batches``).

A contrastive loss only learns the distinctions its batch asks for. Keeping the demo's
quadruples together asks for time; but two quadruples whose objects share their colours and
differ only in shape rarely meet in a random batch, so shape is learned late (colour alone
separates almost every random pair). Here part of every batch is filled with the groups whose
captions are most similar to a randomly drawn anchor group: they differ in few words, which is
exactly what the model must learn to tell apart. The rest of the batch stays random, so
coarse distinctions are still trained.

Similarity (``demo_recipe.hard_batch_source``) is the cosine of either
- ``model``: the mean of the model's own text embeddings of each group's captions, recomputed
  at every epoch start (:func:`model_group_vectors`). Captions the model finds alike are the
  distinctions it has not learned: on the demo, 55-70 % of each group's 3 nearest groups share
  its colours and motion axes and differ in shape, against 7 % with ``words``.
- ``words``: TF-IDF vectors (binary term frequency) of each group's caption words, over the
  ``max_words`` most frequent words. Fixed and free, but it weighs every word alike, so on the
  demo it pairs groups that differ in motion, which the model already tells apart.
Memory: ``groups x dim`` float32.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from tempstop.inference.embed import embed_texts
from tempstop.utils import model_mode

_WORD = re.compile(r"[a-z0-9]+")


def caption_vectors(texts: Sequence[str], max_words: int = 1024) -> np.ndarray:
    """Unit TF-IDF vectors ``[G, V]`` (float32) of the word sets of ``texts``."""
    sets = [set(_WORD.findall(t.lower())) for t in texts]
    df = Counter(w for s in sets for w in s)
    vocab = {w: i for i, (w, _) in enumerate(df.most_common(max_words))}
    idf = np.log(len(sets) / np.array([df[w] for w in vocab], dtype=np.float64) + 1e-12)
    vecs = np.zeros((len(sets), len(vocab)), dtype=np.float32)
    for g, words in enumerate(sets):
        cols = [vocab[w] for w in words if w in vocab]
        vecs[g, cols] = idf[cols]
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12)


@torch.no_grad()
def model_group_vectors(
    model, texts: Sequence[str], groups: Sequence[np.ndarray], device: torch.device, **embed_kwargs
) -> np.ndarray:
    """Unit vectors ``[G, D]``: the mean text embedding of each group's ``texts`` (one per video,
    indexed by the members in ``groups``) under ``model`` (in eval mode for the pass; its
    training flag is restored). ``embed_kwargs`` go to ``embed_texts`` (batch size, DDP shards, AMP);
    with DDP every rank embeds its shard and gets the same gathered result."""
    with model_mode(model):
        emb = embed_texts(model, list(texts), device, **embed_kwargs)  # [N, D], unit rows
    vecs = torch.stack([emb[torch.as_tensor(g)].mean(dim=0) for g in groups])  # [G, D]
    return torch.nn.functional.normalize(vecs, dim=-1).numpy()


def hard_group_order(
    vecs: np.ndarray, sizes: np.ndarray, batch: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """An order of the groups in which each run of ``batch`` items holds a random anchor, the
    groups most similar to it (about ``fraction`` of the batch) and random groups after them.

    ``vecs`` ``[G, V]`` unit vectors, ``sizes`` ``[G]`` videos per group. Deterministic given ``rng``.
    """
    n = len(sizes)
    perm = rng.permutation(n)
    # Random tie-breaking among equally similar groups, fixed for the epoch.
    jitter = rng.random(n) * 1e-6
    alive = np.ones(n, dtype=bool)
    order: list[int] = []
    cursor = 0  # position in perm of the next random group
    hard_items = int(round(fraction * batch))

    def take(g: int) -> int:
        alive[g] = False
        order.append(int(g))
        return int(sizes[g])

    def take_random() -> int:
        nonlocal cursor
        while not alive[perm[cursor]]:
            cursor += 1
        return take(perm[cursor])

    while alive.any():
        filled = take_random()
        anchor = order[-1]
        candidates = np.flatnonzero(alive)
        if candidates.size and filled < hard_items:
            sims = vecs[candidates] @ vecs[anchor] + jitter[candidates]
            for g in candidates[np.argsort(-sims)]:
                if filled >= hard_items:
                    break
                filled += take(g)
        while filled < batch and alive.any():  # the random rest of the batch
            filled += take_random()
    return np.asarray(order, dtype=np.int64)
