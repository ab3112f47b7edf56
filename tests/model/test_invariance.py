"""A video's embedding depends on that video only: not on its batch mates, not on the content
of its padded (masked) frames. Checked with perturbed TempMe/STOP parameters, so that LoRA,
clip positional embeddings and both kinds of STOP prompts are active."""

from __future__ import annotations

import pytest
import torch
from model_helpers import perturb, random_video, tiny_config

from tempstop.config import TempMeConfig
from tempstop.model import create_unified_model

ATOL = 1e-5


def _model(variant: str, **overrides):
    torch.manual_seed(0)
    model = create_unified_model(tiny_config(variant, **overrides)).eval()
    perturb(model)
    return model


@pytest.mark.parametrize("variant", ["unified", "tempme", "stop", "meanP"])
def test_embedding_does_not_depend_on_batch_mates(variant):
    model = _model(variant)
    video = random_video(4)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        together = model.encode_video(video, mask)
        alone = torch.cat([model.encode_video(video[i : i + 1], mask[i : i + 1]) for i in range(4)])
        reordered = model.encode_video(video.flip(0), mask.flip(0)).flip(0)
    torch.testing.assert_close(together, alone, rtol=0, atol=ATOL)
    torch.testing.assert_close(together, reordered, rtol=0, atol=ATOL)


@pytest.mark.parametrize("variant", ["unified", "tempme", "stop", "meanP"])
def test_masked_padding_frames_change_nothing(variant):
    model = _model(variant)
    video = random_video(3)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, 5:] = False  # padding inside and across ClipMe groups
    mask[1, 1:] = False  # a single real frame
    other = video.clone()
    other[0, 5:] = torch.randn(3, 3, 64, 64) * 4
    other[1, 1:] = 0.0
    with torch.no_grad():
        a = model.encode_video(video, mask)
        b = model.encode_video(other, mask)
        ids, amask = model.tokenize(["x", "y", "z"])
        la = model.compute_training_loss(video, mask, ids, amask)
        lb = model.compute_training_loss(other, mask, ids, amask)
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    for key in la:
        torch.testing.assert_close(la[key], lb[key], rtol=0, atol=ATOL)


def test_padding_invariance_with_padded_clips():
    # 6 frames with k = 2, 2, 2: 6 -> 3 -> 2 (one empty clip) -> 1
    model = _model(
        "unified",
        tempme=TempMeConfig(imgme_layers=[0, 1], imgme_r=8, clipme_layers=[2, 3, 4], clipme_k=[2, 2, 2]),
    )
    video = random_video(2, frames=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    other = video.clone()
    other[0, 4:] = -video[0, 4:]
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_video(video, mask), model.encode_video(other, mask), rtol=0, atol=ATOL
        )
        alone = model.encode_video(video[1:], mask[1:])
        torch.testing.assert_close(model.encode_video(video, mask)[1:], alone, rtol=0, atol=ATOL)
