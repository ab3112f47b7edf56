"""Turning stored uint8 frames into model input."""

from __future__ import annotations

import torch

# CLIP's normalisation (open_clip.constants.OPENAI_DATASET_MEAN / STD), fixed here so the
# library does not depend on open_clip just to normalise pixels.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def frames_to_tensor(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``[..., T, H, W, 3]`` -> normalised float ``[..., T, 3, H, W]``."""
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    x = frames.movedim(-1, -3).float().div_(255.0)  # [..., T, 3, H, W]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std
