"""TempMe (docs/design.md §2): the layer schedule, its parameters and the ClipMe join.

A layer is in the *frame* phase (every frame its own sequence; ImgMe merges ``r`` pairs per
frame after attention) until the first ClipMe layer; from there it is in the *clip* phase
(a sequence holds the tokens of several frames, all their CLS tokens first). A ClipMe layer
joins ``k`` consecutive sequences, merges across the joined patch list before attention
(similarity on the residual stream; the clip positional embedding is added after the
matching) and merges again after attention (similarity on keys); later clip-phase layers
only do the latter. Each rule follows the official code; tests/fixtures/tempme/README.md
cites the file and line of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tempstop.config import TEMPME_PRESETS, TempMeConfig
from tempstop.model.lora import LoRA


@dataclass(frozen=True)
class LayerPlan:
    """What TempMe does in one transformer layer."""

    clip_phase: bool = False
    imgme_r: int = 0  # frame phase: pairs merged per frame after attention
    clipme_k: int = 0  # > 0: a ClipMe layer that joins k sequences at its input
    cross_merge: float = 0.0  # ClipMe: fraction of the joined tokens merged before attention
    intra_merge: float = 0.0  # clip phase: fraction merged after attention
    clip_pos: int = -1  # ClipMe: index of its clip positional embedding


@dataclass(frozen=True)
class Schedule:
    """The resolved numbers of a :class:`TempMeConfig` (presets filled in)."""

    imgme_r: int
    cross_merge: float
    intra_merge: float


def resolve_numbers(cfg: TempMeConfig, patch_size: int) -> Schedule:
    """``imgme_r``, ``cross_merge`` and ``intra_merge``, ``None`` replaced by the preset of
    ``patch_size`` (:data:`tempstop.config.TEMPME_PRESETS`; ViT-B/32's for other sizes)."""
    preset = TEMPME_PRESETS.get(patch_size, TEMPME_PRESETS[32])
    values = (cfg.imgme_r, cfg.cross_merge, cfg.intra_merge)
    return Schedule(*(p if v is None else v for v, p in zip(values, preset, strict=True)))


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


def build_schedule(depth: int, cfg: TempMeConfig | None, patch_size: int = 32) -> list[LayerPlan]:
    """One :class:`LayerPlan` per layer; ``cfg`` None means no merging at all."""
    if cfg is None:
        return [LayerPlan() for _ in range(depth)]
    nums = resolve_numbers(cfg, patch_size)
    img_layers, clip_layers = resolve_layers(depth, cfg)
    plans = []
    for i in range(depth):
        if i in clip_layers:
            j = clip_layers.index(i)
            plans.append(LayerPlan(True, 0, cfg.clipme_k[j], nums.cross_merge, nums.intra_merge, j))
        elif clip_layers and i > clip_layers[0]:
            plans.append(LayerPlan(clip_phase=True, intra_merge=nums.intra_merge))
        else:
            plans.append(LayerPlan(imgme_r=nums.imgme_r if i in img_layers else 0))
    return plans


def first_clip_layer(schedule: list[LayerPlan]) -> int:
    """Index of the first ClipMe layer (the depth if there is none)."""
    return next((i for i, p in enumerate(schedule) if p.clip_phase), len(schedule))


def clip_pos_rows(frames: int, clipme_k: list[int]) -> list[int]:
    """Rows of each ClipMe layer's positional embedding: one per sequence of the video at
    that layer's input (12 frames, k = 2, 2, 3: 12, 6, 3), as the official code has them."""
    rows, seqs = [], frames
    for k in clipme_k:
        rows.append(seqs)
        seqs = math.ceil(seqs / k)
    return rows


class TempMe(nn.Module):
    """TempMe's trainable parameters: LoRA on every q/k/v projection (visual, and text when
    ``lora_text``) and one clip positional embedding per ClipMe layer (zero init; one row per
    sequence of a ``frames``-frame video at that layer), plus the layer schedule (plain data).
    """

    def __init__(
        self,
        cfg: TempMeConfig,
        frames: int,
        visual_width: int,
        visual_depth: int,
        text_width: int,
        text_depth: int,
        patch_size: int = 32,
    ):
        super().__init__()
        self.schedule = build_schedule(visual_depth, cfg, patch_size)
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
        self.clip_pos = nn.ParameterList(
            nn.Parameter(torch.zeros(rows, visual_width)) for rows in clip_pos_rows(frames, cfg.clipme_k)
        )


def join_sequences(
    x: torch.Tensor, size: torch.Tensor, n_cls: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Join ``k`` consecutive sequences: ``x`` ``[B, C, N, D]`` (each sequence ``n_cls`` CLS
    tokens, then its patches), ``size`` ``[B, C, N]`` -> ``[B * C', k * N, D]``,
    ``[B * C', k * N]`` and the sequence each joined token came from, ``[k * N]`` (0..k-1).

    ``C`` is padded to a multiple of ``k`` with empty sequences (size 0: fully masked). A
    joined sequence holds the ``k * n_cls`` CLS tokens first, in sequence order, then all
    patches of its first sequence, of its second, ... (official module_tome_patch.py:36-50).
    """
    b, c, n, d = x.shape
    pad = (-c) % k
    if pad:
        x = torch.cat([x, x.new_zeros(b, pad, n, d)], dim=1)
        size = torch.cat([size, size.new_zeros(b, pad, n)], dim=1)
    x = x.view(b, -1, k, n, d)  # [B, C', k, N, D]
    size = size.view(b, -1, k, n)
    m = n - n_cls
    joined = torch.cat(
        [x[:, :, :, :n_cls].reshape(-1, k * n_cls, d), x[:, :, :, n_cls:].reshape(-1, k * m, d)], 1
    )
    sizes = torch.cat(
        [size[:, :, :, :n_cls].reshape(-1, k * n_cls), size[:, :, :, n_cls:].reshape(-1, k * m)], 1
    )
    seq = torch.arange(k, device=x.device)
    origin = torch.cat([seq.repeat_interleave(n_cls), seq.repeat_interleave(m)])  # [k * N]
    return joined, sizes, origin


def clip_position(pos: torch.Tensor, sequences: int, k: int, origin: torch.Tensor) -> torch.Tensor:
    """The clip positional embedding of every joined token, ``[C', k * N, D]``.

    ``pos`` ``[rows, D]`` has one row per sequence of the video (absolute index, not the
    index inside a group); ``sequences`` is how many the video has here (padding sequences
    added by :func:`join_sequences` get zeros). ``origin`` is from :func:`join_sequences`.
    """
    if sequences > pos.shape[0]:
        raise ValueError(
            f"{sequences} sequences per video at a ClipMe layer, but its positional embedding has "
            f"{pos.shape[0]} rows: the video has more frames than model.frames"
        )
    rows = pos[:sequences]
    pad = (-sequences) % k
    if pad:
        rows = torch.cat([rows, rows.new_zeros(pad, rows.shape[1])])
    return rows.view(-1, k, rows.shape[1])[:, origin]  # [C', k * N, D]
