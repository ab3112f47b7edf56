"""Helpers of the model tests: small configs of the tiny backbone, random batches."""

from __future__ import annotations

import torch

from tempstop.config import ModelConfig, StopConfig, TempMeConfig

FRAMES = 8
SIZE = 64


def tiny_config(variant: str = "unified", **overrides) -> ModelConfig:
    """The tiny backbone (6 layers, 64 px, patch 8) with a schedule that reaches one clip:
    ImgMe on layers 0-1, ClipMe on 2, 3, 4 (k = 2, 2, 2), STOP on block 1. ``eta`` is high so
    temporal prompts are active on random frames."""
    cfg = ModelConfig(
        variant=variant,
        tempme=TempMeConfig(imgme_layers=[0, 1], imgme_r=8, clipme_layers=[2, 3, 4], clipme_k=[2, 2, 2]),
        stop=StopConfig(layers=1, eta=100.0, dropout=0.0),
    )
    return cfg.model_copy(update=overrides)


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move every TempMe/STOP parameter off its initial value (zero-init layers included), so
    tests see prompts and LoRA that actually do something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("tempme.", "stop.")):
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def random_video(batch: int, frames: int = FRAMES, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=gen)
