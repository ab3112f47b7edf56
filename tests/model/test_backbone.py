"""Backbone creation and loading pretrained weights from local files."""

from __future__ import annotations

import warnings

import pytest
import torch

from tempstop.config import ModelConfig
from tempstop.model import create_unified_model
from tempstop.model.backbone import register_model_configs


def _reference_clip(context_length: int = 32):
    """A randomly initialised tiny open_clip model: the 'pretrained' weights of these tests."""
    import open_clip

    register_model_configs()
    torch.manual_seed(123)
    return open_clip.create_model("tempstop-tiny", force_context_length=context_length)


def _assert_loaded(model, reference) -> None:
    ref = reference.state_dict()
    ours = model.clip.state_dict()
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        n = min(value.shape[0], ours[key].shape[0]) if value.dim() else None
        assert torch.equal(ours[key][:n] if n else ours[key], value[:n] if n else value), key


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".safetensors"])
def test_open_clip_state_dict_files_load(tmp_path, suffix):
    reference = _reference_clip()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    elif suffix == ".pt":  # a training checkpoint wrapping the state dict, saved from DDP
        torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    else:
        torch.save(reference.state_dict(), path)
    model = create_unified_model(ModelConfig(pretrained=str(path), freeze_backbone=True))
    _assert_loaded(model, reference)
    assert not any(p.requires_grad for p in model.param_groups()["backbone"])


def test_longer_text_context_is_truncated(tmp_path):
    reference = _reference_clip(context_length=77)  # like OpenAI's weights
    path = tmp_path / "ctx77.bin"
    torch.save(reference.state_dict(), path)
    model = create_unified_model(ModelConfig(pretrained=str(path)))
    assert model.clip.positional_embedding.shape[0] == 32
    _assert_loaded(model, reference)


def test_openai_torchscript_file_loads_with_quickgelu(tmp_path):
    from open_clip.transformer import QuickGELU

    reference = _reference_clip(context_length=77)
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, OpenAI's format is not
        torch.jit.script(reference).save(str(path))
    model = create_unified_model(ModelConfig(pretrained=str(path)))
    _assert_loaded(model, reference)
    assert isinstance(model.clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_missing_or_unknown_pretrained_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "ViT-B-32.pt"
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        create_unified_model(ModelConfig(pretrained=str(missing)))
    with pytest.raises(ValueError, match="neither an existing file nor an open_clip tag"):
        create_unified_model(ModelConfig(pretrained="no-such-tag"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create_unified_model(ModelConfig(backbone="ViT-Z-99"))


def test_training_checkpoint_is_not_mistaken_for_backbone_weights(tmp_path):
    path = tmp_path / "best_model.pth"
    torch.save({"format": "tempstop-checkpoint/1", "model": {}}, path)
    with pytest.raises(ValueError, match="training checkpoint"):
        create_unified_model(ModelConfig(pretrained=str(path)))
