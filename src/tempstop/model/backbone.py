"""The CLIP backbone: an open_clip model, optionally with pretrained weights.

``pretrained`` is an open_clip tag (``"openai"``; needs internet) or a local checkpoint file:
an OpenAI TorchScript ``.pt`` or an open_clip state dict (``.bin``, ``.pt``, ``.pth``,
``.safetensors``). The tiny test/demo architecture ``tempstop-tiny`` ships as a JSON config in
``tempstop/model_configs`` and is registered with open_clip on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

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
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def create_clip(
    name: str,
    pretrained: str | None = None,
    context_length: int = 32,
    image_size: int | None = None,
    quick_gelu: bool | None = None,
) -> nn.Module:
    """Build the open_clip CLIP model ``name`` and load ``pretrained`` weights if given.

    ``context_length`` sets the text positional embedding (= max words); longer pretrained
    embeddings are truncated, as CLIP4Clip does. ``quick_gelu`` ``None`` picks it from the
    weights: OpenAI weights (tag ``openai`` or a TorchScript file) were trained with QuickGELU.
    """
    import open_clip

    register_model_configs()
    if name not in open_clip.list_models():
        raise ValueError(
            f"model.backbone: unknown open_clip model {name!r} (e.g. ViT-B-32, ViT-B-16, tempstop-tiny)"
        )
    path = resolve_pretrained(name, pretrained)
    if quick_gelu is None:
        quick_gelu = pretrained == "openai" or (path is not None and is_torchscript(path))
    with quiet_open_clip():
        model = open_clip.create_model(
            name,
            pretrained=None,
            force_quick_gelu=bool(quick_gelu),
            force_context_length=context_length,
            force_image_size=image_size,
        )
    for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
        check_block(block)
    if path is not None:
        load_clip_weights(model, path)
        log.info("loaded backbone weights for %s from %s", name, path)
    return model


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
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """CLIP weights from a checkpoint file, whichever of the supported formats it is."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

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
    if next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_clip_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint file into an open_clip CLIP ``model`` (strict).

    Adapts what differs legitimately: the text positional embedding is truncated to the
    model's context length, the image one is interpolated to the model's grid.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import resize_pos_embed

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
