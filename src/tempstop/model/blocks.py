"""Driving open_clip's residual attention blocks half by half.

TempMe merges tokens between a block's attention and its MLP (where ToMe does), adds
``log(size)`` to the attention logits and needs the keys; STOP needs the CLS-to-patch
attention and adds prompt keys/values. open_clip's ``ResidualAttentionBlock.forward`` offers
none of that, so these functions run a block's two halves with the block's own modules and
weights (``ln_1``, ``attn.in_proj_*``, ``attn.out_proj``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``):
nothing of CLIP is re-implemented or copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tempstop.model.lora import LoRA, cached_fold, qkv_projection


@dataclass
class PromptKV:
    """Prompt tokens seen as extra keys/values through a separate, gated softmax.

    ``out += gate * softmax(q k_p^T + bias) v_p``: with a zero gate the block is unchanged
    (an untrained prompt is the identity), yet the gate itself receives a gradient.
    """

    k: torch.Tensor  # [G, H, P, hd]
    v: torch.Tensor  # [G, H, P, hd]
    gate: torch.Tensor  # [H]
    bias: torch.Tensor | None = None  # [G, 1, 1, P]: 0 for an active prompt, MASKED_BIAS if not
    any_active: torch.Tensor | None = None  # [G] bool: rows with no active prompt get nothing


@dataclass
class AttentionOut:
    """Result of :func:`attention_half`."""

    x: torch.Tensor  # [G, N, D] after the attention residual
    keys: torch.Tensor | None = None  # [G, N, hd] head-averaged keys (ToMe's merge metric)
    cls_attn: torch.Tensor | None = None  # [G, N] head-averaged attention of token 0 (CLS)


def check_block(block: nn.Module) -> None:
    """Raise if ``block`` is not a plain open_clip ``ResidualAttentionBlock``."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first or hasattr(block, "ln_1_kv"):
        raise NotImplementedError(
            f"{type(block).__name__}: only open_clip ResidualAttentionBlock (batch-first "
            "nn.MultiheadAttention) backbones are supported, e.g. ViT-B-32, ViT-B-16"
        )


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``[G, N, D] -> [G, H, N, D / H]``."""
    g, n, d = t.shape
    return t.view(g, n, heads, d // heads).transpose(1, 2)


def prompt_kv_from_tokens(block: nn.Module, lora: LoRA | None, tokens: torch.Tensor) -> tuple:
    """Keys and values ``[G, H, P, hd]`` of prompt tokens ``[G, P, D]`` that already live in
    the block's attention-input space (after ``ln_1``)."""
    attn = block.attn
    d = attn.embed_dim
    w, b = attn.in_proj_weight[d:], attn.in_proj_bias[d:]  # the k and v rows
    kv = F.linear(tokens, w, b)
    if lora is not None:
        kv = kv + F.linear(F.linear(tokens, lora.lora_A), lora.lora_B[d:]) * lora.scale
    k, v = kv.chunk(2, dim=-1)
    return _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def prompt_kv_from_code(
    block: nn.Module, lora: LoRA | None, code: torch.Tensor, proj: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of prompt tokens ``proj(code)`` without forming the tokens.

    ``code`` ``[G, P, h]``, ``proj`` a ``Linear(h, D)`` into the block's attention-input
    space. The two linear maps are folded (``W_kv @ proj.weight``, cached while the weights
    do not change), so a prompt costs ``2 * D * h`` multiply-adds instead of ``2 * D^2``.
    """
    attn = block.attn
    deps = (attn.in_proj_weight, attn.in_proj_bias, proj.weight, proj.bias)
    if lora is not None:
        deps += (lora.lora_A, lora.lora_B)
    w_fold, b_fold = cached_fold(proj, deps, lambda: _fold_kv(attn, lora, proj))
    k, v = F.linear(code, w_fold.to(code.dtype), b_fold.to(code.dtype)).chunk(2, dim=-1)
    return _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def _fold_kv(attn: nn.Module, lora: LoRA | None, proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_kv @ U, W_kv @ c + b_kv)`` for ``proj`` = ``U z + c``, LoRA included."""
    d = attn.embed_dim
    w, b = attn.in_proj_weight[d:], attn.in_proj_bias[d:]  # [2D, D], [2D]
    w_fold = w @ proj.weight  # [2D, h]
    b_fold = w @ proj.bias + b
    if lora is not None:  # (W + s B A) U = W U + s B (A U)
        w_fold = w_fold + (lora.lora_B[d:] @ (lora.lora_A @ proj.weight)) * lora.scale
        b_fold = b_fold + (lora.lora_B[d:] @ (lora.lora_A @ proj.bias)) * lora.scale
    return w_fold, b_fold


def attention_half(
    block: nn.Module,
    x: torch.Tensor,
    lora: LoRA | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    prompts: PromptKV | None = None,
    want_keys: bool = False,
    want_cls_attn: bool = False,
) -> AttentionOut:
    """``x + ls_1(attn(ln_1(x)))`` of an open_clip block, with extras.

    ``x`` ``[G, N, D]``; ``bias`` ``[G, 1, 1, N]`` added to the attention logits (log size /
    masking); ``causal`` for the text tower; ``prompts`` extra gated keys/values.
    """
    attn = block.attn
    heads = attn.num_heads
    g, n, d = x.shape
    y = block.ln_1(x)
    qkv = qkv_projection(attn, y, lora)  # [G, N, 3D]
    q, k, v = (_heads(t, heads) for t in qkv.chunk(3, dim=-1))  # [G, H, N, hd] each
    if bias is not None:
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal and bias is None)
    # [G, N, H, hd]: on a CPU this is how SDPA lays its output out, so the reshape is free
    out = out.transpose(1, 2)
    if prompts is not None:
        out = out + _prompt_attention(q, prompts).transpose(1, 2)
    out = attn.out_proj(out.reshape(g, n, d))
    res = AttentionOut(x=x + block.ls_1(out))
    if want_keys:
        res.keys = k.mean(dim=1)  # [G, N, hd]
    if want_cls_attn:
        res.cls_attn = _cls_attention(q, k, bias)
    return res


def _cls_attention(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Head-averaged attention of token 0 (CLS) ``[G, N]``, from ``q``, ``k`` ``[G, H, N, hd]``.

    The CLS query's logits are row-wise dot products, computed on the keys in their stored
    ``[G, N, H, hd]`` layout (a matmul with a single query row would copy the keys first).
    """
    logits = (k.transpose(1, 2) * q[:, None, :, 0]).sum(dim=-1).transpose(1, 2)  # [G, H, N]
    logits = logits * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias[:, 0]  # [G, 1, N]
    return logits.float().softmax(dim=-1).mean(dim=1)


def _prompt_attention(q: torch.Tensor, prompts: PromptKV) -> torch.Tensor:
    """``gate * softmax(q k_p^T / sqrt(hd) + bias) v_p``, ``[G, H, N, hd]``.

    With a handful of prompt keys, plain matmuls beat the fused attention kernel on CPU. The
    logits are laid out ``[G, H, P, N]`` (``k_p @ q^T`` reads ``q`` where it lies; a softmax
    over a short last dim is slow) and the gate (with the any-active switch) multiplies the
    ``P`` rows of ``v_p`` rather than the weights.
    """
    g, heads, _, hd = q.shape
    k, v = prompts.k.to(q.dtype), prompts.v.to(q.dtype)  # [G, H, P, hd]
    logits = (k @ q.transpose(-1, -2)) * hd**-0.5  # [G, H, P, N]
    if prompts.bias is not None:
        logits = logits + prompts.bias.to(q.dtype).transpose(-1, -2)  # [G, 1, P, 1]
    gate = prompts.gate.to(q.dtype).view(1, heads, 1, 1)
    if prompts.any_active is not None:
        gate = gate * prompts.any_active.to(q.dtype).view(g, 1, 1, 1)
    return logits.softmax(dim=2).transpose(-1, -2) @ (v * gate)


def mlp_half(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + ls_2(mlp(ln_2(x)))`` of an open_clip block."""
    return x + block.ls_2(block.mlp(block.ln_2(x)))
