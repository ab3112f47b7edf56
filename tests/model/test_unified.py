"""The model API of docs/ARCHITECTURE.md on the tiny backbone."""

from __future__ import annotations

import math

import pytest
import torch
from model_helpers import random_video, tiny_config

from tempstop.config import ModelConfig, StopConfig, TempMeConfig, UnifiedModelConfig
from tempstop.model import UnifiedTempMeSTOPModel, create_unified_model


@pytest.fixture(scope="module")
def model() -> UnifiedTempMeSTOPModel:
    torch.manual_seed(0)
    return create_unified_model(tiny_config())


def test_default_config_builds_the_full_api():
    model = create_unified_model(ModelConfig())
    ids, mask = model.tokenize(["a red circle moves left, then a blue square moves up", "hi"])
    video = random_video(2)
    out = model.compute_training_loss(video, torch.ones(2, 8, dtype=torch.bool), ids, mask)
    assert set(out) == {"tempme_loss", "stop_loss", "total_loss"}
    assert torch.isfinite(out["total_loss"])


def test_tokenize_and_encoders(model):
    ids, mask = model.tokenize(["a green triangle moves down", "first a white square moves right"])
    assert ids.shape == mask.shape == (2, 32) and ids.dtype == torch.long
    assert mask[0].sum() == (ids[0] != 0).sum()
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        video = model.encode_video(random_video(2), torch.ones(2, 8))
    assert text.shape == video.shape == (2, model.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(video.norm(dim=-1), torch.ones(2))
    short_ids, short_mask = model.tokenize(["a b c d e f g h i j k l"], max_words=8)
    assert short_ids.shape == (1, 8) and short_ids[0, -1] == short_ids.max()  # truncated, ends in EOT


def test_eot_pooling_ignores_trailing_padding(model):
    ids, mask = model.tokenize(["a purple circle moves up"])
    with torch.no_grad():
        full = model.encode_text(ids, mask)
        by_argmax = model.encode_text(ids, None)
    torch.testing.assert_close(full, by_argmax, rtol=0, atol=1e-6)


def test_forward_returns_embeddings_and_the_loss_module_weighs_them():
    cfg = UnifiedModelConfig(model=tiny_config())
    cfg.training.tempme_loss_weight, cfg.training.stop_loss_weight = 0.25, 2.0
    torch.manual_seed(0)
    model = create_unified_model(cfg)
    ids, mask = model.tokenize(["a", "b", "c"])
    video, vmask = random_video(3), torch.ones(3, 8)
    with torch.no_grad():
        emb = model(video, vmask, ids, mask)
        out = model.compute_training_loss(video, vmask, ids, mask)
    assert {k for k, v in emb.items() if v is not None} == {"text", "video", "tempme_video", "stop_video", "logit_scale"}
    assert emb["video"].shape == emb["stop_video"].shape == (3, model.embed_dim)
    assert emb["tempme_video"] is emb["video"]
    assert not torch.allclose(emb["video"], emb["stop_video"])  # final vs pre-ClipMe embedding
    torch.testing.assert_close(out, model.loss(emb))
    torch.testing.assert_close(out["total_loss"], 0.25 * out["tempme_loss"] + 2.0 * out["stop_loss"])
    assert out["tempme_loss"] != out["stop_loss"]


@pytest.mark.parametrize(
    ("variant", "groups"),
    [("unified", {"tempme", "stop"}), ("tempme", {"tempme"}), ("stop", {"stop"}), ("meanP", set())],
)
def test_variants_and_their_losses(variant, groups):
    model = create_unified_model(tiny_config(variant))
    pg = model.param_groups()
    assert {g for g in ("tempme", "stop") if pg[g]} == groups
    ids, mask = model.tokenize(["a", "b"])
    with torch.no_grad():
        out = model.compute_training_loss(random_video(2), torch.ones(2, 8), ids, mask)
    assert math.isfinite(float(out["total_loss"]))
    if variant == "tempme":
        assert out["stop_loss"] == 0 and out["total_loss"] == out["tempme_loss"]
    if variant == "stop":
        assert out["tempme_loss"] == 0 and out["total_loss"] == out["stop_loss"]
    if variant == "meanP":
        assert out["tempme_loss"] == 0 and out["stop_loss"] == 0


def test_param_groups_cover_every_parameter_once(model):
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert any(p is model.logit_scale for p in groups["backbone"])
    names = {g: [n for n, _ in ps] for g, ps in model.named_param_groups().items()}
    assert any("lora" in n for n in names["tempme"]) and any("clip_pos" in n for n in names["tempme"])
    assert any("scorer" in n for n in names["stop"]) and any("queries" in n for n in names["stop"])


def test_training_modes_set_requires_grad():
    model = create_unified_model(tiny_config(freeze_backbone=True))
    groups = model.param_groups()
    expected = {"joint": (True, True), "tempme_only": (True, False), "stop_only": (False, True)}
    for mode, (tempme, stop) in expected.items():
        model.set_training_mode(mode)
        assert all(p.requires_grad == tempme for p in groups["tempme"])
        assert all(p.requires_grad == stop for p in groups["stop"])
        assert not any(p.requires_grad for p in groups["backbone"])
    with pytest.raises(ValueError, match="training mode"):
        model.set_training_mode("sequential")


def test_auto_schedule_and_stop_layers_fit_any_depth():
    model = create_unified_model(ModelConfig())  # paper schedule pattern on the 6-layer tiny model
    plans = model.tempme.schedule
    assert [p.clipme_k for p in plans] == [0, 0, 2, 2, 3, 0]
    assert len(model.stop.layers) == 1


def test_clear_config_errors():
    with pytest.raises(ValueError, match="clipme_layers"):
        create_unified_model(ModelConfig(tempme=TempMeConfig(clipme_layers=[7, 8, 9])))
    with pytest.raises(ValueError, match="stop.layers"):
        create_unified_model(tiny_config(stop=StopConfig(layers=3)))
    with pytest.raises(ValueError, match="px"):
        create_unified_model(tiny_config()).encode_video(random_video(1, size=32))


def test_config_file_path_and_long_mask(tmp_path):
    cfg = UnifiedModelConfig(model=tiny_config())
    path = tmp_path / "config.json"
    cfg.to_json(path)
    model = create_unified_model(str(path)).eval()
    video = random_video(2)
    with torch.no_grad():
        a = model.encode_video(video, torch.ones(2, 8, dtype=torch.long))
        b = model.encode_video(video, torch.ones(2, 8, dtype=torch.bool))
    assert torch.equal(a, b)
