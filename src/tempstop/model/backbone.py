"""The CLIP backbone: an open_clip model, optionally with pretrained weights.

``pretrained`` is an open_clip tag (``"openai"``; needs internet) or a local checkpoint file:
an OpenAI TorchScript ``.pt``, an open_clip state dict (``.bin``, ``.pt``, ``.pth``,
``.safetensors``) or a CLIP4Clip-family checkpoint (CLIP weights under ``clip.``). The tiny
test/demo architecture ``tempstop-tiny`` ships as a JSON config in ``tempstop/model_configs``
and is registered with open_clip on first use. ``model.architecture`` builds an OpenAI-layout
ViT from its numbers instead of a named config (what :func:`architecture_from_weights` reads
off a state dict, as open_clip's OpenAI loader does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch
from open_clip.convert import convert_state_dict
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, resize_pos_embed
from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model
from safetensors.torch import load_file
from torch import nn

from tempstop.config import BackboneArchitecture, ModelConfig
from tempstop.model.blocks import check_block

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# Non-tensor entries of OpenAI's TorchScript archives.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_registered = False


def register_model_configs() -> None:
    """Make the packaged configs (``tempstop-tiny``) known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def create_clip(cfg: ModelConfig) -> nn.Module:
    """Build the open_clip CLIP of ``cfg`` (``backbone`` or ``architecture``) and load
    ``pretrained`` weights if given.

    ``max_words`` sets the text positional embedding; longer pretrained embeddings are
    truncated, as CLIP4Clip does. ``quick_gelu`` ``None`` picks it from the weights: OpenAI
    weights (tag ``openai``, a TorchScript file, a CLIP4Clip-family ``clip.`` state dict, an
    imported architecture) were trained with QuickGELU.
    """
    register_model_configs()
    if cfg.architecture is None and cfg.backbone not in open_clip.list_models():
        raise ValueError(
            f"model.backbone: unknown open_clip model {cfg.backbone!r} (e.g. ViT-B-32, ViT-B-16, tempstop-tiny)"
        )
    path = resolve_pretrained(cfg.backbone, cfg.pretrained)
    quick_gelu = cfg.quick_gelu
    if quick_gelu is None:
        quick_gelu = (
            cfg.pretrained == "openai"
            or cfg.architecture is not None
            or (path is not None and is_openai_format(path))
        )
    with quiet_open_clip():
        if cfg.architecture is not None:
            model = _clip_from_architecture(cfg.architecture, cfg.max_words, cfg.image_size, bool(quick_gelu))
        else:
            model = open_clip.create_model(
                cfg.backbone,
                pretrained=None,
                force_quick_gelu=bool(quick_gelu),
                force_context_length=cfg.max_words,
                force_image_size=cfg.image_size,
            )
    for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
        check_block(block)
    if path is not None:
        load_clip_weights(model, path)
        log.info("loaded backbone weights for %s from %s", cfg.backbone, path)
    return model


def _clip_from_architecture(
    arch: BackboneArchitecture, context_length: int, image_size: int | None, quick_gelu: bool
) -> nn.Module:
    """An open_clip ``CLIP`` with OpenAI's layout and the numbers of ``arch`` (heads = width // 64)."""
    vision = CLIPVisionCfg(
        layers=arch.vision_layers,
        width=arch.vision_width,
        head_width=64,
        patch_size=arch.patch_size,
        image_size=image_size or arch.image_size,
    )
    text = CLIPTextCfg(
        context_length=min(context_length, arch.context_length),
        vocab_size=arch.vocab_size,
        width=arch.text_width,
        heads=arch.text_width // 64,
        layers=arch.text_layers,
    )
    return CLIP(arch.embed_dim, vision, text, quick_gelu=quick_gelu)


def architecture_from_weights(state: dict[str, torch.Tensor], source: str) -> BackboneArchitecture:
    """The numbers of an OpenAI-layout CLIP ViT read off its state dict (unprefixed keys)."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise ValueError(f"{source}: no {key!r}: not the weights of an OpenAI-layout CLIP ViT")
        return state[key].shape

    def depth(prefix: str) -> int:
        blocks = {k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)}
        if not blocks:
            raise ValueError(f"{source}: no {prefix}* keys: not the weights of an OpenAI-layout CLIP ViT")
        return len(blocks)

    patch = shape("visual.conv1.weight")[-1]
    grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
    return BackboneArchitecture(
        embed_dim=shape("text_projection")[1],
        image_size=patch * grid,
        patch_size=patch,
        vision_width=shape("visual.conv1.weight")[0],
        vision_layers=depth("visual.transformer.resblocks."),
        context_length=shape("positional_embedding")[0],
        vocab_size=shape("token_embedding.weight")[0],
        text_width=shape("ln_final.weight")[0],
        text_layers=depth("transformer.resblocks."),
    )


def get_tokenizer(cfg: ModelConfig, context_length: int):
    """open_clip's tokenizer for the backbone (CLIP's BPE for an ``architecture``)."""
    register_model_configs()
    with quiet_open_clip():
        if cfg.architecture is not None:
            return open_clip.SimpleTokenizer(context_length=context_length)
        return open_clip.get_tokenizer(cfg.backbone, context_length=context_length)


def resolve_pretrained(name: str, pretrained: str | None) -> str | None:
    """Local checkpoint path for ``pretrained`` (downloading a tag), or None for random init."""
    if not pretrained:
        return None
    expanded = os.path.expanduser(pretrained)
    if os.path.isfile(expanded):
        return expanded
    looks_like_path = (
        os.sep in pretrained or "/" in pretrained or pretrained.lower().endswith(_CHECKPOINT_SUFFIXES)
    )
    if looks_like_path:
        raise FileNotFoundError(f"model.pretrained: checkpoint file not found: {pretrained}")
    cfg = get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = list_pretrained_tags_by_model(name)
        raise ValueError(
            f"model.pretrained: {pretrained!r} is neither an existing file nor an open_clip tag for "
            f"{name} (tags: {', '.join(tags) or 'none'})"
        )
    try:
        return download_pretrained(cfg)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(
            f"model.pretrained: could not download {name}/{pretrained} ({exc}); without internet, "
            "pass the path of a local checkpoint file instead"
        ) from exc


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive (OpenAI's released ``.pt`` files)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def is_openai_format(path: str | Path) -> bool:
    """OpenAI's TorchScript archives and CLIP4Clip-family checkpoints (CLIP weights under
    ``clip.``, OpenAI's names), whose CLIP was trained with QuickGELU."""
    if is_torchscript(path):
        return True
    try:
        obj = (
            torch.load(path, map_location="meta", weights_only=True)
            if not str(path).endswith(".safetensors")
            else {}
        )
    except Exception:  # unreadable: read_state_dict reports it
        return False
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    return any(isinstance(k, str) and k.startswith(("clip.", "module.clip.")) for k in state)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """CLIP weights from a checkpoint file, whichever of the supported formats it is."""
    path = str(path)
    if path.endswith(".safetensors"):
        state = load_file(path, device="cpu")
    elif is_torchscript(path):
        # OpenAI's format is a TorchScript module; its state dict has open_clip's key names.
        with warnings.catch_warnings():  # torch.jit.load is deprecated; OpenAI's format is not going away
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(path, map_location="cpu").state_dict()
        for key in _OPENAI_EXTRA_KEYS:
            state.pop(key, None)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and str(obj.get("format", "")).startswith("tempstop-checkpoint"):
            raise ValueError(
                f"{path} is a TempMe-STOP training checkpoint, not CLIP backbone weights; "
                "load it with the trainer's init_from / tempstop evaluate --checkpoint"
            )
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: no state dict found")
    for prefix in ("module.", "clip."):  # DDP wrapping; CLIP4Clip-family models keep CLIP under clip.
        if all(str(k).startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any("TVPt_" in str(k) for k in state):
        raise ValueError(
            f"{path} is an official TempMe checkpoint (TVPt_* parameters), not CLIP backbone weights; "
            "convert it with `tempstop import-checkpoint --format tempme`"
        )
    return dict(state)


def load_clip_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint file into an open_clip CLIP ``model`` (strict).

    Adapts what differs legitimately: the text positional embedding is truncated to the
    model's context length, the image one is interpolated to the model's grid.
    """
    state = convert_state_dict(model, read_state_dict(path))
    # Scripted (OpenAI-format) files also store buffers the model rebuilds itself (attn_mask).
    rebuilt = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    state = {k: v for k, v in state.items() if k not in rebuilt}
    pos = state.get("positional_embedding")
    if pos is not None and pos.shape[0] > model.positional_embedding.shape[0]:
        state["positional_embedding"] = pos[: model.positional_embedding.shape[0]]
    resize_pos_embed(state, model)
    if "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit this backbone: {exc}") from None


class _OpenClipChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from_open_clip = "open_clip" in record.pathname
        return not (
            from_open_clip
            and (record.levelno <= logging.INFO or "initialized randomly" in record.getMessage())
        )


@contextlib.contextmanager
def quiet_open_clip():
    """open_clip logs its progress on the root logger, and warns that the model is random
    before we load the weights; keep that out of our logs (its real warnings pass)."""
    flt = _OpenClipChatter()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
