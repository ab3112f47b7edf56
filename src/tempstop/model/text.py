"""The text forward pass: open_clip's text tower with TempMe's LoRA and STOP's optional deep
text prompts (gated extra keys/values in the first layers, zero gate at start)."""

from __future__ import annotations

import torch
from torch import nn

from tempstop.model.blocks import PromptKV, attention_half, mlp_half, prompt_kv_from_tokens
from tempstop.model.stop import STOP
from tempstop.model.tempme import TempMe


def eot_index(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Position of the end-of-text token: the last attended token, or (no mask) the largest
    id, which is EOT in CLIP's vocabulary (open_clip's ``argmax`` pooling)."""
    if attention_mask is not None:
        return (attention_mask.long().sum(dim=-1) - 1).clamp_min(0)
    return input_ids.argmax(dim=-1)


def encode_tokens(
    clip: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    tempme: TempMe | None,
    stop: STOP | None,
) -> torch.Tensor:
    """Sentence features ``[B, E]`` (not normalised) of ``input_ids`` ``[B, L]``."""
    n_pos = clip.positional_embedding.shape[0]
    if input_ids.shape[1] > n_pos:
        raise ValueError(f"input_ids have {input_ids.shape[1]} tokens; the text tower takes at most {n_pos}")
    length = input_ids.shape[1]
    x = clip.token_embedding(input_ids)  # [B, L, D]
    x = x + clip.positional_embedding[:length].to(x.dtype)
    loras = tempme.text_lora if tempme is not None else None
    n_prompt = stop.num_text_layers if stop is not None else 0
    for i, block in enumerate(clip.transformer.resblocks):
        lora = loras[i] if loras is not None else None
        prompts = None
        if i < n_prompt:
            k, v = prompt_kv_from_tokens(block, lora, stop.text_prompts[i][None])  # [1, H, P, hd]
            g = x.shape[0]
            prompts = PromptKV(k.expand(g, -1, -1, -1), v.expand(g, -1, -1, -1), stop.text_gates[i])
        x = attention_half(block, x, lora, causal=True, prompts=prompts).x
        x = mlp_half(block, x)
    x = clip.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), eot_index(input_ids, attention_mask)]  # [B, D]
    proj = clip.text_projection
    return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
