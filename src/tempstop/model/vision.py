"""The visual forward pass: open_clip's vision tower driven block by block, with TempMe's
merges and STOP's prompts in between.

Sequence layouts: frame phase ``[B*T, 1 + n, D]`` (CLS first); clip phase ``[B*C, f + n, D]``
(the ``f`` CLS tokens of the clip's frames first, in frame order). ``size`` ``[G, N]``
follows every token (see :mod:`tempstop.model.merge`). After a merge the order is the
official one: CLS, unmerged side-A tokens, side-B tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tempstop.model.blocks import PromptKV, attention_half, mlp_half, prompt_kv_from_code
from tempstop.model.merge import merge_count, merge_sum, merge_tokens, size_bias
from tempstop.model.stop import STOP, FrameGrid
from tempstop.model.tempme import LayerPlan, TempMe, clip_position, first_clip_layer, join_sequences


@dataclass
class VideoFeatures:
    """Per-frame CLS tokens (width ``W``, before ``ln_post``) and token bookkeeping."""

    frame_cls: torch.Tensor  # [B, T, W] at the end of the tower
    stop_cls: torch.Tensor | None  # [B, T, W] just before the first ClipMe layer (None: no ClipMe)
    tokens: list[dict] = field(default_factory=list)  # per layer, see encode_frames
    hidden: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)  # per layer


def embed_frames(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch + CLS + positional embedding and ``ln_pre`` of open_clip's VisionTransformer.

    ``images`` ``[N, 3, H, W]`` -> ``[N, 1 + gh * gw, D]``.
    """
    expected = tuple(visual.image_size)
    if tuple(images.shape[-2:]) != expected:
        raise ValueError(
            f"frames are {tuple(images.shape[-2:])} px but the backbone expects {expected} "
            "(set model.image_size or extract frames at that size)"
        )
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # [N, D, gh, gw]
    x = x.flatten(2).transpose(1, 2)  # [N, gh*gw, D]
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


class _Walker:
    """State of one forward pass through the tower (kept small: tensors plus counters)."""

    def __init__(self, x: torch.Tensor, valid: torch.Tensor, grid_hw: tuple[int, int], track_grid: bool):
        self.b, self.t = valid.shape
        self.x = x  # [G, N, D]
        self.size: torch.Tensor | None = None  # None while every token has size 1
        self.valid = valid
        self.clip_phase = False
        self.n_cls = 1  # CLS tokens at the head of each sequence
        self.cls_attn: torch.Tensor | None = None  # [BT, Np] CLS attention of the last block
        self.grid: FrameGrid | None = None
        if track_grid:
            n_patch = grid_hw[0] * grid_hw[1]
            src = torch.arange(n_patch, device=x.device).expand(x.shape[0], n_patch)
            self.grid = FrameGrid(src, valid, self.b, self.t, *grid_hw)

    def sizes(self) -> torch.Tensor:
        if self.size is None:
            self.size = self.x.new_ones(self.x.shape[:2], dtype=torch.float32)
        return self.size

    def enter_clip_phase(self) -> None:
        """Frames become clips of one frame; padded frames' tokens get size 0."""
        size = self.sizes() * self.valid.reshape(-1, 1).float()
        self.size = size
        self.clip_phase = True
        self.grid = None


def encode_frames(
    visual: nn.Module,
    video: torch.Tensor,
    video_mask: torch.Tensor,
    tempme: TempMe | None,
    stop: STOP | None,
    record: bool = False,
) -> VideoFeatures:
    """Run the vision tower over ``video`` ``[B, T, 3, H, W]`` with ``video_mask`` ``[B, T]``.

    With ``record``, ``tokens`` lists per layer ``{"layer", "sequences", "input", "concat",
    "after_cross", "output"}``: sequences per video after the layer, and tokens per sequence
    at the layer's input, after ClipMe's join, after its cross-clip merge and after the layer
    (STOP's prompt tokens are extra keys, not counted); ``hidden`` holds each layer's output
    tokens ``[G, N, D]`` and their sizes ``[G, N]`` (None before the first merge).
    """
    b, t = video.shape[:2]
    blocks = visual.transformer.resblocks
    schedule = tempme.schedule if tempme is not None else [LayerPlan()] * len(blocks)
    loras = tempme.visual_lora if tempme is not None else None
    n_stop = len(stop.layers) if stop is not None else 0
    _check_stop_layers(n_stop, schedule, len(blocks))
    valid = video_mask.to(torch.bool)
    x = embed_frames(visual, video.flatten(0, 1))  # [BT, 1 + gh*gw, D]
    w = _Walker(x, valid, tuple(visual.grid_size), track_grid=n_stop > 0)
    stop_cls, tokens, hidden = None, [], []
    for i, (block, plan) in enumerate(zip(blocks, schedule, strict=True)):
        lora = loras[i] if loras is not None else None
        if plan.clip_phase and not w.clip_phase:
            stop_cls = w.x[:, 0].reshape(b, t, -1)
            w.enter_clip_phase()
        n_in = n_concat = w.x.shape[1]
        if plan.clipme_k:
            n_concat = _cross_clip(w, plan, tempme.clip_pos[plan.clip_pos])
        n_cross = w.x.shape[1]
        prompts = None
        if 1 <= i <= n_stop:
            prompts = _stop_layer(w, stop.layers[i - 1], block, lora)
        bias = size_bias(w.size, w.x.dtype) if w.size is not None else None
        merge_after = (plan.imgme_r > 0) if not w.clip_phase else plan.intra_merge > 0
        out = attention_half(
            block, w.x, lora, bias, prompts=prompts, want_keys=merge_after, want_cls_attn=i + 1 <= n_stop
        )
        w.x = out.x
        if out.cls_attn is not None:
            w.cls_attn = out.cls_attn[:, 1:]  # CLS attention to the patch tokens
        if merge_after:
            _merge_after_attention(w, plan, out.keys, track=i + 1 <= n_stop)
        w.x = mlp_half(block, w.x)
        if record:
            tokens.append({"layer": i, "sequences": w.x.shape[0] // b, "input": n_in, "concat": n_concat,
                           "after_cross": n_cross, "output": w.x.shape[1]})  # fmt: skip
            hidden.append((w.x, w.size))
    return VideoFeatures(_final_cls(w, b, t), stop_cls, tokens, hidden)


def _check_stop_layers(n_stop: int, schedule: list[LayerPlan], n_blocks: int) -> None:
    """STOP's layers must all come before the first ClipMe layer and the last block."""
    if n_stop >= min(first_clip_layer(schedule), n_blocks):
        raise ValueError(
            f"model.stop.layers={n_stop}: STOP prompts the inputs of blocks 1..{n_stop}, which must "
            f"come before the first ClipMe layer ({first_clip_layer(schedule)}) and the last block"
        )


def _cross_clip(w: _Walker, plan: LayerPlan, pos: torch.Tensor) -> int:
    """ClipMe before attention: join ``k`` sequences, match on the joined residual stream
    (detached), add the clip positional embedding ``pos`` (one row per sequence of the video)
    after the matching and before the size-weighted merge, so the similarity never sees it
    and merged tokens carry the weighted mean of theirs (official module_tome_patch.py:29,
    52-79; only when something merges). Returns the token count after the join."""
    k = plan.clipme_k
    g, n, d = w.x.shape
    sequences = g // w.b
    x, size, origin = join_sequences(
        w.x.view(w.b, sequences, n, d), w.sizes().view(w.b, sequences, n), w.n_cls, k
    )
    w.n_cls *= k
    total = x.shape[1]
    r = merge_count(total, w.n_cls, plan.cross_merge)
    if r == 0:
        w.x, w.size = x, size
        return total
    metric = x.detach()
    x = (x.view(w.b, -1, total, d) + clip_position(pos, sequences, k, origin).to(x.dtype)).view(-1, total, d)
    w.x, w.size, _ = merge_tokens(x, size, w.n_cls, r, metric, masked=True)
    return total


def _merge_after_attention(w: _Walker, plan: LayerPlan, keys: torch.Tensor, track: bool) -> None:
    """ImgMe (frame phase, ``r`` pairs per frame) or the clip phase's merge (a fraction of
    the tokens), both with similarity on head-averaged keys; capped at half the non-CLS tokens."""
    n = w.x.shape[1]
    if w.clip_phase:
        r = merge_count(n, w.n_cls, plan.intra_merge)
    else:
        r = min(plan.imgme_r, (n - w.n_cls) // 2)
    if r == 0:
        return
    w.x, w.size, step = merge_tokens(w.x, w.sizes(), w.n_cls, r, keys, masked=w.clip_phase)
    if track and w.grid is not None:  # follow the patches for the next STOP layer (CLS at 0)
        w.grid.src = step.new_pos[:, 1:].gather(1, w.grid.src) - 1
        w.cls_attn = merge_sum(step, F.pad(w.cls_attn, (1, 0)))[:, 1:]


def _stop_layer(w: _Walker, layer: nn.Module, block: nn.Module, lora: nn.Module | None) -> PromptKV | None:
    """STOP on the input of ``block``: prompt the tokens, return the temporal prompts' keys/values."""
    w.x, code, active = layer(w.x, w.cls_attn, w.grid)
    if code is None:
        return None
    k, v = prompt_kv_from_code(block, lora, code, layer.out)
    bias, any_active = layer.prompt_bias(active)
    return PromptKV(k, v, layer.gate, bias, any_active)


def _final_cls(w: _Walker, b: int, t: int) -> torch.Tensor:
    """Every frame's CLS token at the end of the tower, ``[B, T, D]``."""
    if not w.clip_phase:
        return w.x[:, 0].reshape(b, t, -1)
    cls = w.x[:, : w.n_cls]  # [B*C, f, D]: the clip's frames in order
    return cls.reshape(b, -1, cls.shape[-1])[:, :t]  # drop padding clips' CLS
