"""Parity with the official TempMe code (tests/fixtures/tempme, made with LunarShen/TempMe at
e62493037bc6): the official checkpoint, imported, reproduces every reference output within
the fixture's tolerances (its README: atol 2e-6 on unit-norm outputs, 2e-4 on logits,
5e-6 x max|ref| on hidden states; ids, masks, token counts and sizes exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tempstop.data.transforms import frames_to_tensor
from tempstop.inference.checkpoint import load_model_weights
from tempstop.model import create_unified_model
from tempstop.model.official import convert_tempme_state_dict

FIXTURE = Path(__file__).parents[1] / "fixtures" / "tempme"
UNIT_ATOL, LOGIT_ATOL, HIDDEN_RTOL = 2e-6, 2e-4, 5e-6


def official_model(device: str = "cpu"):
    """The fixture's official checkpoint as this project's model, float32, eval mode."""
    state = torch.load(FIXTURE / "official_model.pt", map_location="cpu", weights_only=True)
    cfg, weights = convert_tempme_state_dict(state, "official_model.pt")
    model = create_unified_model(cfg)
    load_model_weights(model, weights, "official_model.pt")
    return model.to(device).eval()


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(FIXTURE / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def run(ref):
    """Our outputs on the fixture's videos and sentences."""
    model = official_model()
    video = frames_to_tensor(torch.from_numpy(np.load(FIXTURE / "frames.npy")))  # [2, 12, 3, 224, 224]
    mask = torch.ones(video.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        feats = model.video_features(video, mask, record=True)
        frame_features = F.normalize(
            model.clip.visual.ln_post(feats.frame_cls) @ model.clip.visual.proj, dim=-1
        )
        ids, attn = model.tokenize(ref["sentences"])
        text = model.encode_text(ids, attn)
        videos = model.encode_video(video, mask)
    return {"model": model, "feats": feats, "frame_features": frame_features, "ids": ids, "attn": attn,
            "text": text, "video": videos}  # fmt: skip


def test_imported_config_reads_the_architecture_off_the_weights():
    model = official_model()
    cfg = model.cfg
    arch = cfg.architecture
    assert (arch.vision_width, arch.vision_layers, arch.patch_size, arch.image_size) == (128, 12, 32, 224)
    assert (arch.text_width, arch.text_layers, arch.embed_dim, arch.context_length) == (64, 2, 64, 77)
    assert model.clip.visual.transformer.resblocks[0].attn.num_heads == 2  # width // 64
    assert cfg.frames == 12 and cfg.tempme.clipme_layers == [8, 9, 10] and cfg.tempme.clipme_k == [2, 2, 3]
    assert cfg.tempme.lora_rank == 8 and cfg.tempme.lora_alpha == 8.0 and cfg.quick_gelu


def test_token_counts_per_layer(run, ref):
    tokens = run["feats"].tokens
    assert [d["output"] for d in tokens] == ref["tokens_per_layer"].tolist()
    assert [d["sequences"] for d in tokens] == ref["sequences_per_video_per_layer"].tolist()


def test_text_token_ids_and_mask(run, ref):
    assert torch.equal(run["ids"], ref["text_token_ids"])
    assert torch.equal(run["attn"], ref["text_mask"])


def test_frame_video_and_text_embeddings(run, ref):
    torch.testing.assert_close(run["frame_features"], ref["frame_features"], rtol=0, atol=UNIT_ATOL)
    torch.testing.assert_close(run["video"], ref["video_embedding"], rtol=0, atol=UNIT_ATOL)
    torch.testing.assert_close(run["text"], ref["text_embedding"], rtol=0, atol=UNIT_ATOL)


def test_similarities(run, ref):
    cosine = run["text"] @ run["video"].T
    torch.testing.assert_close(cosine, ref["cosine_similarity"], rtol=0, atol=UNIT_ATOL)
    scale = run["model"].logit_scale.exp()
    torch.testing.assert_close(scale, ref["logit_scale_exp"], rtol=0, atol=1e-5)
    torch.testing.assert_close(scale * cosine, ref["similarity"], rtol=0, atol=LOGIT_ATOL)


def test_every_frames_cls_after_every_layer(run, ref):
    cls = []
    for x, _ in run["feats"].hidden:  # frame phase: one CLS per sequence; clip phase: the first f
        per_seq = x.shape[0] // 2
        cls.append(x[:, : 12 // per_seq].reshape(2, 12, -1))
    got = torch.stack(cls)  # [12 layers, 2, 12, 128]
    expected = ref["cls_per_layer"]
    torch.testing.assert_close(got, expected, rtol=0, atol=HIDDEN_RTOL * expected.abs().max().item())


@pytest.mark.parametrize("layer", [0, 8, 10, 11])
def test_hidden_states_and_token_sizes_in_the_official_order(run, ref, layer):
    x, size = run["feats"].hidden[layer]
    expected = ref[f"hidden_after_layer{layer}"]
    assert x.shape == expected.shape
    torch.testing.assert_close(x, expected, rtol=0, atol=HIDDEN_RTOL * expected.abs().max().item())
    assert torch.equal(size, ref[f"token_size_after_layer{layer}"])
