"""Checkpoints of the official TempMe code (github.com/LunarShen/TempMe) as this project's model.

The official ``save_model`` writes ``VTRModel.state_dict()``: OpenAI CLIP's tensors under
``clip.`` plus TempMe's ``TVPt_*`` parameters:

- ``clip.visual.transformer.resblocks.{i}.attn.TVPt_LoRA_a`` ``[r, W]`` / ``TVPt_LoRA_b``
  ``[3W, r]`` (and the same under ``clip.transformer.`` for the text tower): LoRA on the fused
  q/k/v, applied without scaling (here: ``lora_alpha = lora_rank``);
- ``clip.visual.transformer.resblocks.{l}.TVPt_Video_Positional_embedding`` ``[1, S, 1, W]`` on
  each ClipMe layer ``l``: one row per sequence of the video at that layer.

Everything else (layers, widths, frames, ClipMe layers and group sizes) is read from the
tensors' names and shapes; the merge amounts, which the weights do not hold, are the presets
for the backbone's patch size (the official defaults for ViT-B/32).
"""

from __future__ import annotations

import math
import re

import torch

from tempstop.config import ModelConfig, TempMeConfig
from tempstop.model.backbone import architecture_from_weights

_LORA = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.TVPt_LoRA_([ab])$")
_POS = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.TVPt_Video_Positional_embedding$")


class OfficialCheckpointError(ValueError):
    """The file is not a checkpoint of the official TempMe code, or an incomplete one."""


def convert_tempme_state_dict(
    state: dict, source: str, max_words: int = 32
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """An official TempMe state dict -> ``(model config, state dict of this project's model)``.

    The config describes the backbone by its numbers (``model.architecture``, QuickGELU, as
    OpenAI's CLIP) and the ``tempme`` variant; tensors are converted to float32. Raises
    :class:`OfficialCheckpointError` naming ``source`` and the key at fault.
    """
    state = _unwrap(state, source)
    clip, lora, pos = {}, {"visual": {}, "text": {}}, {}
    for key, value in state.items():
        if m := _LORA.match(key):
            lora["visual" if m.group(1) else "text"].setdefault(int(m.group(2)), {})[m.group(3)] = value
        elif m := _POS.match(key):
            pos[int(m.group(1))] = value
        elif "TVPt_" in key:
            raise OfficialCheckpointError(f"{source}: unknown TempMe parameter clip.{key}")
        else:
            clip[key] = value
    try:
        arch = architecture_from_weights(clip, source)
    except ValueError as exc:
        raise OfficialCheckpointError(str(exc)) from None
    rank = _lora_rank(lora, arch.vision_layers, arch.text_layers, source)
    layers = sorted(pos)
    rows = [
        _pos_rows(pos[i], arch.vision_width, f"{source}: clip.visual.transformer.resblocks.{i}")
        for i in layers
    ]
    cfg = ModelConfig(
        backbone=f"openai-vit-w{arch.vision_width}-l{arch.vision_layers}-p{arch.patch_size}-{arch.image_size}px",
        architecture=arch,
        frames=rows[0] if rows else 12,
        quick_gelu=True,
        freeze_backbone=True,
        variant="tempme",
        max_words=max_words,
        tempme=TempMeConfig(
            lora_rank=rank,
            lora_alpha=float(rank),
            lora_text=bool(lora["text"]),
            clipme_layers=layers,
            clipme_k=_group_sizes(rows, source),
        ),
    )
    out = {f"clip.{k}": v for k, v in clip.items()}
    out["clip.positional_embedding"] = clip["positional_embedding"][:max_words]
    for tower, blocks in lora.items():
        for i, ab in blocks.items():
            out[f"tempme.{tower}_lora.{i}.lora_A"] = ab["a"]
            out[f"tempme.{tower}_lora.{i}.lora_B"] = ab["b"]
    for j, i in enumerate(layers):
        out[f"tempme.clip_pos.{j}"] = pos[i][0, :, 0, :]  # [1, S, 1, W] -> [S, W]
    return cfg, {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def _unwrap(state: object, source: str) -> dict[str, torch.Tensor]:
    """The ``clip.``-prefixed tensors, without ``module.`` (DDP) and ``clip.`` prefixes."""
    if isinstance(state, dict) and str(state.get("format", "")).startswith("tempstop-checkpoint"):
        raise OfficialCheckpointError(f"{source}: already a TempMe-STOP checkpoint; use it as it is")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise OfficialCheckpointError(f"{source}: not a state dict (a mapping of parameter names to tensors)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise OfficialCheckpointError(f"{source}: entry {key!r} is not a named tensor")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if not any("TVPt_" in k for k in state):
        raise OfficialCheckpointError(
            f"{source}: no TVPt_* parameters: not a checkpoint of the official TempMe code"
        )
    outside = sorted(k for k in state if not k.startswith("clip."))
    if outside:
        raise OfficialCheckpointError(
            f"{source}: unexpected key {outside[0]!r} (TempMe keeps every tensor under clip.)"
        )
    return {k[len("clip.") :]: v for k, v in state.items()}


def _lora_rank(lora: dict, visual_layers: int, text_layers: int, source: str) -> int:
    """The common LoRA rank; every visual block (and every text block, if any) needs both factors."""
    ranks = set()
    for tower, prefix, depth in (("visual", "visual.", visual_layers), ("text", "", text_layers)):
        blocks = lora[tower]
        if tower == "text" and not blocks:
            continue
        for i in range(depth):
            for part in ("a", "b"):
                if part not in blocks.get(i, {}):
                    key = f"clip.{prefix}transformer.resblocks.{i}.attn.TVPt_LoRA_{part}"
                    raise OfficialCheckpointError(f"{source}: missing {key}")
            ranks.add(blocks[i]["a"].shape[0])
    if len(ranks) != 1:
        raise OfficialCheckpointError(f"{source}: LoRA ranks differ between blocks ({sorted(ranks)})")
    return ranks.pop()


def _pos_rows(t: torch.Tensor, width: int, where: str) -> int:
    if t.dim() != 4 or t.shape[0] != 1 or t.shape[2] != 1 or t.shape[3] != width:
        raise OfficialCheckpointError(
            f"{where}.TVPt_Video_Positional_embedding has shape {tuple(t.shape)}, expected [1, S, 1, {width}]"
        )
    return int(t.shape[1])


def _group_sizes(rows: list[int], source: str) -> list[int]:
    """ClipMe's ``k`` per layer from the sequence counts (12, 6, 3 -> 2, 2, 3): layer ``j``
    turns ``rows[j]`` sequences into ``rows[j + 1] = ceil(rows[j] / k)``; the last joins what
    is left into one."""
    ks = []
    for here, after in zip(rows, [*rows[1:], 1], strict=True):
        k = math.ceil(here / after)
        if math.ceil(here / k) != after:
            raise OfficialCheckpointError(
                f"{source}: ClipMe positional embeddings with {rows} rows do not follow from one another"
            )
        ks.append(k)
    return ks
