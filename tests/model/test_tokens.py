"""TempMe's token counts for ViT-B/32 with 12 frames (docs/design.md §2), exactly."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import random_video

from tempstop.config import ModelConfig
from tempstop.model import create_unified_model

# (sequences per video, tokens at input, after concatenation, after cross-clip merge, output)
EXPECTED_B32_12 = [(12, 50 - 2 * i, 50 - 2 * i, 50 - 2 * i, 48 - 2 * i) for i in range(8)] + [
    (6, 34, 68, 48, 44),
    (3, 44, 88, 62, 56),
    (1, 56, 168, 118, 107),
    (1, 107, 107, 107, 97),
]


def _counts(model) -> list[tuple]:
    with torch.no_grad():
        feats = model.video_features(random_video(1, 12, 224), record=True)
    keys = ("sequences", "input", "concat", "after_cross", "output")
    return [tuple(d[k] for k in keys) for d in feats.tokens]


@pytest.fixture(scope="module")
def b32_geometry(tmp_path_factory):
    """A narrow model with ViT-B/32's token geometry (224 px, patch 32, 12 layers): same
    token counts as ViT-B/32 at a fraction of the cost."""
    import open_clip

    from tempstop.model.backbone import register_model_configs

    register_model_configs()
    folder = tmp_path_factory.mktemp("configs")
    cfg = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    }
    (folder / "test-b32-geometry.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return "test-b32-geometry"


@pytest.mark.parametrize("variant", ["tempme", "unified"])
def test_paper_schedule_token_counts(b32_geometry, variant):
    model = create_unified_model(ModelConfig(backbone=b32_geometry, variant=variant)).eval()
    assert _counts(model) == EXPECTED_B32_12


@pytest.mark.slow
def test_vit_b32_token_counts_with_random_weights():
    model = create_unified_model(
        ModelConfig(backbone="ViT-B-32", variant="unified", freeze_backbone=True)
    ).eval()
    counts = _counts(model)
    assert counts == EXPECTED_B32_12
    assert counts[7][4] == 34 and counts[-1][4] == 97


def test_frames_that_do_not_divide_into_clips_are_padded(b32_geometry):
    # 10 frames with k = 2, 2, 3: 10 -> 5 -> 3 (one empty clip) -> 1
    model = create_unified_model(ModelConfig(backbone=b32_geometry, variant="tempme")).eval()
    with torch.no_grad():
        feats = model.video_features(random_video(1, 10, 224), record=True)
    assert [d["sequences"] for d in feats.tokens[8:]] == [5, 3, 1, 1]
    assert feats.frame_cls.shape[:2] == (1, 10)
