"""Symmetric InfoNCE over the global batch (docs/design.md §1).

Under ``torch.distributed`` every rank gathers all ranks' features *with* gradient and
scores its own rows against the global batch (open_clip's "local loss + gather with grad").
Each rank's value is the mean over its own rows; with DDP's gradient averaging the gradient
is exactly that of the global-batch loss. Without distributed training it is the plain loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: CLIP clamps the learned temperature at 100.
MAX_LOGIT_SCALE = math.log(100.0)


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``, ``(0, 1)`` when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[B, D]`` from every rank along dim 0, keeping the gradient to every
    rank's part; the identity when not distributed. All ranks must pass the same ``B``."""
    _, world = _distributed()
    if world == 1:
        return x
    # Here, not at the top: the module exists only in torch builds with distributed support.
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def logit_scale_value(logit_scale: torch.Tensor) -> torch.Tensor:
    """``exp(logit_scale)`` with ``logit_scale`` clamped to ``ln 100``."""
    return logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def symmetric_infonce(text: torch.Tensor, video: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of the text->video and video->text cross-entropies of matching pairs.

    ``text``, ``video`` ``[B, D]`` L2-normalised, row i of one matching row i of the other;
    ``logit_scale`` the learned log temperature (clamped to ``ln 100``).
    """
    if text.shape != video.shape:
        raise ValueError(f"text {tuple(text.shape)} and video {tuple(video.shape)} features must match")
    rank, _ = _distributed()
    all_text, all_video = gather_features(text), gather_features(video)
    scale = logit_scale_value(logit_scale).to(text.dtype)
    t2v = scale * text @ all_video.T  # [B, B_global]: my texts against every video
    v2t = scale * video @ all_text.T  # [B, B_global]
    labels = torch.arange(text.shape[0], device=text.device) + rank * text.shape[0]
    return (F.cross_entropy(t2v.float(), labels) + F.cross_entropy(v2t.float(), labels)) / 2


class RetrievalLoss(nn.Module):
    """The unified model's training losses from its outputs (docs/design.md §4).

    ``outputs`` is what :meth:`UnifiedTempMeSTOPModel.forward` returns: ``text`` ``[B, E]``,
    ``video`` (the retrieval embedding), ``tempme_video`` / ``stop_video`` (the embeddings
    each module's loss scores, None when the variant lacks the module) and ``logit_scale``.
    Returns ``{"tempme_loss", "stop_loss", "total_loss"}``: with both modules ``total =
    tempme_weight * tempme_loss + stop_weight * stop_loss``; with one, its loss; with none
    (meanP), the loss of ``video``. A missing module's loss is reported as 0.
    """

    def __init__(self, tempme_weight: float = 1.0, stop_weight: float = 1.0) -> None:
        super().__init__()
        self.tempme_weight = float(tempme_weight)
        self.stop_weight = float(stop_weight)

    def forward(self, outputs: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        text, scale = outputs["text"], outputs["logit_scale"]
        losses = {
            name: symmetric_infonce(text, outputs[f"{name}_video"], scale)
            for name in ("tempme", "stop")
            if outputs.get(f"{name}_video") is not None
        }
        if len(losses) == 2:
            total = self.tempme_weight * losses["tempme"] + self.stop_weight * losses["stop"]
        elif losses:
            total = next(iter(losses.values()))
        else:
            total = symmetric_infonce(text, outputs["video"], scale)
        zero = total.detach().new_zeros(())
        return {
            "tempme_loss": losses.get("tempme", zero),
            "stop_loss": losses.get("stop", zero),
            "total_loss": total,
        }
