"""TempMe (DESIGN section 2): the layer schedule, its parameters and the ClipMe regrouping.

A layer is in the *frame* phase (every frame its own sequence; ImgMe merges ``r`` pairs per
frame after attention) until the first ClipMe layer; from there it is in the *clip* phase
(sequences hold the concatenated tokens of several frames, all their CLS tokens first).
A ClipMe layer concatenates ``k`` adjacent clips, adds a clip positional embedding, merges
across clips (similarity on features) before attention and within the clip (similarity on
keys) after it; other clip-phase layers only do the latter (``final_intra_keep``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tempstop.config import TempMeConfig
from tempstop.model.lora import LoRA


@dataclass(frozen=True)
class LayerPlan:
    """What TempMe does in one transformer layer."""

    clip_phase: bool = False
    imgme_r: int = 0  # frame phase: pairs merged per frame after attention
    clipme_k: int = 0  # > 0: a ClipMe layer that concatenates k clips at its input
    cross_keep: float = 1.0  # ClipMe: fraction kept by the cross-clip merge (before attention)
    intra_keep: float = 1.0  # clip phase: fraction kept by the intra-clip merge (after attention)
    clip_pos: int = -1  # ClipMe: index of its clip positional embedding


def resolve_layers(depth: int, cfg: TempMeConfig) -> tuple[list[int], list[int]]:
    """ImgMe and ClipMe layer indices, with ``None`` meaning the paper's pattern.

    The pattern: ClipMe on the ``len(clipme_k)`` layers before the last, ImgMe on every
    layer before them. For 12 layers and ``clipme_k = [2, 2, 3]`` that is the paper's
    schedule (ImgMe 0-7, ClipMe 8, 9, 10, layer 11 intra-clip merge only).
    """
    n_clip = len(cfg.clipme_k)
    clip_layers = list(cfg.clipme_layers) if cfg.clipme_layers is not None else []
    if cfg.clipme_layers is None and n_clip:
        clip_layers = list(range(depth - 1 - n_clip, depth - 1))
    _check_exist("clipme_layers", clip_layers, depth)
    if clip_layers != sorted(set(clip_layers)):
        raise ValueError(f"model.tempme.clipme_layers must be strictly increasing, got {clip_layers}")
    first_clip = clip_layers[0] if clip_layers else depth
    img_layers = list(cfg.imgme_layers) if cfg.imgme_layers is not None else list(range(first_clip))
    _check_exist("imgme_layers", img_layers, depth)
    if any(i >= first_clip for i in img_layers):
        raise ValueError(
            f"model.tempme.imgme_layers {img_layers}: ImgMe works on single frames, so it must "
            f"come before the first ClipMe layer ({first_clip})"
        )
    return img_layers, clip_layers


def _check_exist(key: str, layers: list[int], depth: int) -> None:
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f"model.tempme.{key}: layers {bad} do not exist in a {depth}-layer backbone")


def build_schedule(depth: int, cfg: TempMeConfig | None) -> list[LayerPlan]:
    """One :class:`LayerPlan` per layer; ``cfg`` None means no merging at all."""
    if cfg is None:
        return [LayerPlan() for _ in range(depth)]
    if cfg.clipme_layers is not None and len(cfg.clipme_layers) != len(cfg.clipme_k):
        raise ValueError("model.tempme: clipme_layers and clipme_k must have the same length")
    if any(k < 1 for k in cfg.clipme_k):
        raise ValueError(f"model.tempme.clipme_k must be >= 1, got {cfg.clipme_k}")
    img_layers, clip_layers = resolve_layers(depth, cfg)
    plans = []
    for i in range(depth):
        if i in clip_layers:
            j = clip_layers.index(i)
            plans.append(LayerPlan(True, 0, cfg.clipme_k[j], cfg.cross_keep, cfg.intra_keep, j))
        elif clip_layers and i > clip_layers[0]:
            plans.append(LayerPlan(clip_phase=True, intra_keep=cfg.final_intra_keep))
        else:
            plans.append(LayerPlan(imgme_r=cfg.imgme_r if i in img_layers else 0))
    return plans


def first_clip_layer(schedule: list[LayerPlan]) -> int:
    """Index of the first ClipMe layer (the depth if there is none)."""
    return next((i for i, p in enumerate(schedule) if p.clip_phase), len(schedule))


class TempMe(nn.Module):
    """TempMe's trainable parameters: LoRA on every q/k/v projection (visual, and text when
    ``lora_text``) and one clip positional embedding per ClipMe layer (zero init), plus the
    layer schedule (plain data, not parameters).
    """

    def __init__(
        self, cfg: TempMeConfig, visual_width: int, visual_depth: int, text_width: int, text_depth: int
    ):
        super().__init__()
        self.schedule = build_schedule(visual_depth, cfg)
        rank, alpha = cfg.lora_rank, cfg.lora_alpha
        self.visual_lora = (
            nn.ModuleList(LoRA(visual_width, 3 * visual_width, rank, alpha) for _ in range(visual_depth))
            if rank > 0
            else None
        )
        self.text_lora = (
            nn.ModuleList(LoRA(text_width, 3 * text_width, rank, alpha) for _ in range(text_depth))
            if rank > 0 and cfg.lora_text
            else None
        )
        self.clip_pos = nn.ParameterList(nn.Parameter(torch.zeros(k, visual_width)) for k in cfg.clipme_k)


def concat_clips(
    x: torch.Tensor, size: torch.Tensor, n_cls: int, k: int, pos: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``k`` adjacent clips: ``x`` ``[B, C, N, D]`` (each clip ``n_cls`` CLS tokens
    then the rest), ``size`` ``[B, C, N]`` -> ``[B * C', k * N, D]``, ``[B * C', k * N]``.

    ``C`` is padded to a multiple of ``k`` with empty clips (size 0: fully masked). The
    result holds the ``k * n_cls`` CLS tokens first (in frame order), then clip 0's other
    tokens, clip 1's, ... ``pos`` ``[k, D]`` is added to every token of the matching clip.
    """
    b, c, n, d = x.shape
    pad = (-c) % k
    if pad:
        x = torch.cat([x, x.new_zeros(b, pad, n, d)], dim=1)
        size = torch.cat([size, size.new_zeros(b, pad, n)], dim=1)
    x = x.view(b, -1, k, n, d)  # [B, C', k, N, D]
    size = size.view(b, -1, k, n)
    if pos is not None:
        x = x + pos.to(x.dtype)[:, None, :]  # clip i of each group gets pos[i]
    m = n - n_cls
    cls_x = x[:, :, :, :n_cls].reshape(-1, k * n_cls, d)
    rest_x = x[:, :, :, n_cls:].reshape(-1, k * m, d)
    cls_s = size[:, :, :, :n_cls].reshape(-1, k * n_cls)
    rest_s = size[:, :, :, n_cls:].reshape(-1, k * m)
    return torch.cat([cls_x, rest_x], dim=1), torch.cat([cls_s, rest_s], dim=1)
