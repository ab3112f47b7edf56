"""Cost of a model: visual GFLOPs, tokens per layer, trainable parameters, measured speed.

GFLOPs follow the convention of the TempMe/ToMe papers: multiply-adds, i.e. counted FLOPs / 2
(ViT-B/32 at 224 px is ~4.4 "GFLOPs" per frame). They are counted by
``torch.utils.flop_counter.FlopCounterMode`` over matmuls, convolutions and attention
(torch does not count the CPU attention kernel itself; a formula is added for it), so
element-wise work (norms, activations, merging's gathers) is not included.
"""

from __future__ import annotations

import time

import torch
from torch.utils import flop_counter

from tempstop.config import PARAM_GROUPS
from tempstop.model.unified import UnifiedTempMeSTOPModel
from tempstop.utils import model_mode

CONVENTION = "GFLOPs = multiply-adds / 1e9 = counted FLOPs / 2 / 1e9 (TempMe/ToMe papers' convention)"
_CAPTIONS = ["a red circle moves left, then a blue square moves up", "first a green triangle moves right"]


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A FlopCounterMode that also counts the CPU flash-attention kernel."""
    aten = torch.ops.aten
    return flop_counter.FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
        },
    )


def dummy_batch(model: UnifiedTempMeSTOPModel, batch: int, frames: int, size: int | None = None) -> dict:
    """Random frames ``[batch, frames, 3, S, S]``, a full mask and tokenised captions."""
    size = size or model.clip.visual.image_size[0]
    texts = [_CAPTIONS[i % len(_CAPTIONS)] for i in range(batch)]
    ids, attn = model.tokenize(texts)
    return {
        "video": torch.randn(batch, frames, 3, size, size),
        "video_mask": torch.ones(batch, frames, dtype=torch.bool),
        "input_ids": ids,
        "attention_mask": attn,
    }


@torch.no_grad()
def visual_gflops(model: UnifiedTempMeSTOPModel, frames: int, size: int | None = None) -> float:
    """Visual GFLOPs (multiply-adds / 1e9) to embed one video of ``frames`` frames at
    inference (weights folded from LoRA and prompt projections are cached, as when serving)."""
    data = dummy_batch(model, 1, frames, size)
    with model_mode(model):
        model.encode_video(data["video"], data["video_mask"])  # builds the folded-weight caches
        with flop_counter_mode() as counter:
            model.encode_video(data["video"], data["video_mask"])
    return counter.get_total_flops() / 2 / 1e9


@torch.no_grad()
def token_schedule(model: UnifiedTempMeSTOPModel, frames: int, size: int | None = None) -> list[dict]:
    """Per layer: sequences per video and tokens per sequence (see ``encode_frames``)."""
    data = dummy_batch(model, 1, frames, size)
    with model_mode(model):
        return model.video_features(data["video"], data["video_mask"], record=True).tokens


def trainable_parameters(model: UnifiedTempMeSTOPModel) -> dict[str, int]:
    """Trainable parameter count per group (and ``total``)."""
    out = {g: sum(p.numel() for p in ps if p.requires_grad) for g, ps in model.param_groups().items()}
    out["total"] = sum(out[g] for g in PARAM_GROUPS)
    return out


def measure_speed(
    model: UnifiedTempMeSTOPModel,
    frames: int,
    size: int | None = None,
    batch: int = 2,
    iters: int = 3,
    warmup: int = 1,
    train: bool = False,
) -> float | None:
    """Measured videos per second: inference (``encode_video``) or a training step (loss,
    backward, AdamW step over the trainable parameters). None if nothing trains."""
    data = dummy_batch(model, batch, frames, size)
    params = [p for p in model.parameters() if p.requires_grad]
    if train and not params:
        return None
    opt = torch.optim.AdamW(params, lr=1e-6) if train else None
    was_training = model.training
    model.train(train)

    def step() -> None:
        if not train:
            with torch.inference_mode():
                model.encode_video(data["video"], data["video_mask"])
            return
        model.compute_training_loss(**data)["total_loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        for _ in range(warmup):
            step()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return batch * iters / seconds


def profile_model(
    model: UnifiedTempMeSTOPModel,
    frames: int,
    size: int | None = None,
    batch: int = 2,
    iters: int = 3,
    speed: bool = True,
) -> dict:
    """GFLOPs, tokens, trainable parameters and (with ``speed``) videos/s of ``model``."""
    tokens = token_schedule(model, frames, size)
    out = {
        "backbone": model.cfg.backbone,
        "variant": model.cfg.variant,
        "frames": frames,
        "size": size or model.clip.visual.image_size[0],
        "gflops_per_video": round(visual_gflops(model, frames, size), 3),
        "gflops_convention": CONVENTION,
        "tokens_per_layer": tokens,
        "output_tokens": tokens[-1]["sequences"] * tokens[-1]["output"],
        "trainable_parameters": trainable_parameters(model),
    }
    if speed:
        out["batch"] = batch
        out["inference_videos_per_s"] = _round(measure_speed(model, frames, size, batch, iters))
        out["train_videos_per_s"] = _round(measure_speed(model, frames, size, batch, iters, train=True))
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
