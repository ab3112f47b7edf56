"""Token merging as small pure functions (ToMe-style bipartite soft matching).

Conventions used throughout the model:

* A sequence is ``[protected tokens..., mergeable tokens...]``: CLS tokens (and nothing else)
  are protected and never merged. The functions here only see the mergeable part.
* Every token carries a *size* (how many input patches it stands for). Merging averages
  features weighted by size, and attention adds ``log(size)`` to its logits (proportional
  attention), so a merged token counts as much as the tokens it replaced.
* Size 0 marks a token that must not influence anything: a padded (masked) frame's token.
  ``log(0)`` masks it as an attention key, a size-weighted average ignores it, and the
  matching below never pairs a real token with a padding one. This is what makes a video's
  embedding independent of its padding frames' content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Attention bias for a size-0 key. Finite (not -inf) so a query whose keys are all padding
#: (a padded frame) gets a finite uniform softmax instead of NaN; exp(-1e4) is exactly 0 in
#: float32 and bfloat16, so real queries ignore such keys exactly.
MASKED_BIAS = -1.0e4

#: Score of a padding token in the matching: above any cosine similarity, so padding tokens
#: are merged away first, in a fixed order that does not depend on their content.
_PAD_SCORE = 2.0


def tokens_to_keep(n: int, keep: float) -> int:
    """Tokens left when a merge keeps the fraction ``keep`` of ``n`` tokens (CLS included).

    Rounds up: ``ceil(n * keep)``, which reproduces TempMe's ViT-B/32 counts exactly
    (68 -> 48 -> 44, 88 -> 62 -> 56, 168 -> 118 -> 107 -> 97). The small tolerance keeps
    products that are integers in exact arithmetic (50 * 0.7) from rounding up by one.
    """
    return max(1, min(n, math.ceil(n * keep - 1e-6)))


def size_bias(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Proportional-attention bias ``log(size)`` for keys, ``[G, N] -> [G, 1, 1, N]``."""
    bias = torch.where(size > 0, size.clamp_min(1e-12).log(), torch.full_like(size, MASKED_BIAS))
    return bias.to(dtype)[:, None, None, :]


@dataclass
class MergePlan:
    """Which tokens merge where. Indices refer to the mergeable part of the sequence.

    ``a_idx``/``b_idx`` split the tokens into the two sides of the bipartite graph; ``unm``,
    ``src`` index into side A (kept / merged away), ``dst`` into side B (merge targets).
    """

    a_idx: torch.Tensor  # [Na] long
    b_idx: torch.Tensor  # [Nb] long
    unm: torch.Tensor  # [G, Na - r]
    src: torch.Tensor  # [G, r]
    dst: torch.Tensor  # [G, r]

    @property
    def r(self) -> int:
        return self.src.shape[1]


def alternate_split(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's split: even positions on side A, odd positions on side B."""
    return torch.arange(0, m, 2, device=device), torch.arange(1, m, 2, device=device)


def clip_split(k: int, per_clip: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-clip split for ``k`` concatenated clips of ``per_clip`` tokens each.

    Side A holds the tokens of the odd clips, side B those of the even clips, so every merge
    joins tokens of *different* (adjacent) clips: temporal redundancy is what ClipMe removes.
    """
    clip_of = torch.arange(k, device=device).repeat_interleave(per_clip)  # [k * per_clip]
    pos = torch.arange(k * per_clip, device=device)
    return pos[clip_of % 2 == 1], pos[clip_of % 2 == 0]


def plan_merge(
    metric: torch.Tensor,
    r: int,
    a_idx: torch.Tensor,
    b_idx: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> MergePlan:
    """Bipartite soft matching: each A token picks its most similar B token; the ``r`` best
    pairs merge.

    ``metric`` ``[G, M, C]`` (keys or features of the mergeable tokens), ``valid`` ``[G, M]``
    (size > 0) or None. Similarity is cosine. With ``valid``, a real token only pairs with a
    real token and padding tokens merge first, so which real tokens merge never depends on
    the padding's content. ``r`` must not exceed the size of side A.
    """
    if r > a_idx.numel():
        raise ValueError(f"cannot merge {r} pairs with {a_idx.numel()} tokens on side A")
    metric = F.normalize(metric.float(), dim=-1)
    sim = metric[:, a_idx] @ metric[:, b_idx].transpose(1, 2)  # [G, Na, Nb]
    if valid is not None:
        valid_a, valid_b = valid[:, a_idx], valid[:, b_idx]
        sim = sim.masked_fill(~valid_b[:, None, :], -math.inf)
    node_max, node_idx = sim.max(dim=-1)  # [G, Na]
    if valid is not None:
        node_max = torch.where(valid_a, node_max, torch.full_like(node_max, _PAD_SCORE))
    order = node_max.argsort(dim=-1, descending=True, stable=True)  # [G, Na]
    src = order[:, :r]
    return MergePlan(a_idx, b_idx, unm=order[:, r:], src=src, dst=node_idx.gather(1, src))


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[g, idx[g, i]]`` for ``x`` ``[G, M, ...]`` and ``idx`` ``[G, n]``."""
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def apply_merge(plan: MergePlan, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge tokens ``x`` ``[G, M, D]`` with sizes ``[G, M]`` -> ``[G, M - r, D]``, ``[G, M - r]``.

    Output order: kept A tokens, then B tokens. A merged B token is the size-weighted mean of
    itself and the A tokens merged into it; computed as ``x_b + sum s_a (x_a - x_b) / s`` so
    a B token that receives nothing (or only size-0 padding) keeps its value bit for bit.
    """
    xa, xb = x[:, plan.a_idx], x[:, plan.b_idx]  # [G, Na, D], [G, Nb, D]
    sa, sb = size[:, plan.a_idx], size[:, plan.b_idx]
    s_src = _take(sa, plan.src)  # [G, r]
    dst = plan.dst[..., None].expand(-1, -1, x.shape[-1])  # [G, r, D]
    weighted = _take(xa, plan.src) * s_src[..., None].to(x.dtype)
    acc_x = torch.zeros_like(xb).scatter_add(1, dst, weighted)  # [G, Nb, D]
    acc_s = torch.zeros_like(sb).scatter_add(1, plan.dst, s_src)  # [G, Nb]
    s_new = sb + acc_s
    delta = (acc_x - acc_s[..., None].to(x.dtype) * xb) / s_new.clamp_min(1e-6)[..., None].to(x.dtype)
    x_out = torch.cat([_take(xa, plan.unm), xb + delta], dim=1)
    return x_out, torch.cat([_take(sa, plan.unm), s_new], dim=1)


def merge_sum(plan: MergePlan, t: torch.Tensor) -> torch.Tensor:
    """Merge a per-token quantity ``[G, M]`` by summing (e.g. attention mass) -> ``[G, M - r]``."""
    ta, tb = t[:, plan.a_idx], t[:, plan.b_idx]
    tb = tb.scatter_add(1, plan.dst, _take(ta, plan.src))
    return torch.cat([_take(ta, plan.unm), tb], dim=1)


def new_positions(plan: MergePlan, m: int) -> torch.Tensor:
    """Where each of the ``m`` old tokens ends up after the merge, ``[G, m]`` (long).

    Lets callers follow an input patch through merges (STOP rebuilds its patch grid with it).
    """
    g, n_unm = plan.unm.shape
    out = torch.empty(g, m, dtype=torch.long, device=plan.unm.device)
    n_b = plan.b_idx.numel()
    out[:, plan.b_idx] = n_unm + torch.arange(n_b, device=out.device).expand(g, n_b)
    pos_a = torch.empty(g, plan.a_idx.numel(), dtype=torch.long, device=out.device)
    pos_a.scatter_(1, plan.unm, torch.arange(n_unm, device=out.device).expand(g, n_unm))
    pos_a.scatter_(1, plan.src, n_unm + plan.dst)
    out[:, plan.a_idx] = pos_a
    return out


def merge_protected(
    x: torch.Tensor,
    size: torch.Tensor,
    n_protected: int,
    r: int,
    metric: torch.Tensor,
    split: tuple[torch.Tensor, torch.Tensor] | None = None,
    masked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[MergePlan]]:
    """Remove ``r`` tokens from ``x`` ``[G, N, D]`` by merging, never touching the first
    ``n_protected`` tokens (CLS).

    ``metric`` ``[G, N, C]`` is the similarity space (keys or features). ``split`` is the
    bipartite split of the mergeable tokens (default: alternate). When ``r`` is more than one
    round can remove (half the tokens), further rounds use the alternate split. With
    ``masked``, tokens of size 0 are treated as padding (see :func:`plan_merge`).
    Returns the merged tokens and sizes and the plans of the rounds.
    """
    plans: list[MergePlan] = []
    head_x, x = x[:, :n_protected], x[:, n_protected:]
    head_s, size = size[:, :n_protected], size[:, n_protected:]
    metric = metric[:, n_protected:]
    while r > 0:
        m = x.shape[1]
        a_idx, b_idx = split if split is not None else alternate_split(m, x.device)
        step = min(r, a_idx.numel())
        if step == 0:
            break
        plan = plan_merge(metric, step, a_idx, b_idx, (size > 0) if masked else None)
        x, new_size = apply_merge(plan, x, size)
        if r > step:  # another round: carry the metric along (averaged like the features)
            metric, _ = apply_merge(plan, metric, size)
        size = new_size
        plans.append(plan)
        r -= step
        split = None
    return torch.cat([head_x, x], 1), torch.cat([head_s, size], 1), plans
