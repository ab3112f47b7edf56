"""LoRA on the fused q/k/v projection of CLIP's attention layers (TempMe, docs/design.md §2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRA(nn.Module):
    """Low-rank update ``delta(y) = (alpha / rank) * y A^T B^T`` of a linear map ``in -> out``.

    ``A`` starts Kaiming-uniform and ``B`` at zero, so a fresh LoRA changes nothing.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """The update for inputs ``y`` ``[..., in]`` -> ``[..., out]``."""
        return F.linear(F.linear(y, self.lora_A), self.lora_B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense weight ``[out, in]`` (to fold into the frozen weight)."""
        return (self.lora_B @ self.lora_A) * self.scale


def _needs_graph(tensors: tuple[torch.Tensor, ...]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def cached_fold(owner: nn.Module, deps: tuple[torch.Tensor, ...], compute):
    """``compute()`` (a function of the parameters ``deps``), cached on ``owner`` until one of
    them changes (in place, e.g. an optimiser step, or by replacement).

    Used for weights folded from parameters (LoRA into q/k/v, prompt projections into k/v):
    at inference they are computed once instead of in every forward pass. When a gradient
    must flow through them the result is not cached.
    """
    if _needs_graph(deps):
        return compute()
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in deps)
    if getattr(owner, "_fold_key", None) != key:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable in any mode
            owner._fold_value = compute()
        owner._fold_key = key
    return owner._fold_value


def qkv_projection(attn: nn.Module, y: torch.Tensor, lora: LoRA | None) -> torch.Tensor:
    """Fused q/k/v of an open_clip attention module (``in_proj_weight``/``in_proj_bias``),
    plus the LoRA update. ``y`` ``[G, N, D]`` -> ``[G, N, 3D]``.

    When the LoRA needs no gradient its update is folded into the weight (cached until a
    parameter changes: free at inference); when it trains, it is applied to the tokens so
    the frozen weight never needs a dense gradient.
    """
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if lora is None:
        return F.linear(y, weight, bias)
    if _needs_graph((lora.lora_A, lora.lora_B)):
        return F.linear(y, weight, bias) + lora(y)
    merged = cached_fold(lora, (weight, lora.lora_A, lora.lora_B), lambda: weight + lora.delta_weight())
    return F.linear(y, merged.to(y.dtype), bias)
