"""Convert a checkpoint of the official TempMe code into a project checkpoint.

    tempstop import-checkpoint --format tempme OFFICIAL.pth --out models/tempme_msrvtt.pth

The official ``save_model`` output (``clip.*`` OpenAI CLIP tensors plus ``TVPt_*`` TempMe
parameters, float16 or float32) becomes a self-describing checkpoint (variant ``tempme``)
that ``tempstop evaluate``, ``index``, ``search``, ``--init-from`` and ``tempstop.load_model``
accept. The backbone (widths, layers, patch, image size, embedding size, context length,
vocabulary), the frame count and the ClipMe layers are read from the weights; the merge
amounts, which the weights do not hold, are the preset of the backbone's patch size unless
``--set model.tempme.imgme_r=...`` (``cross_merge``, ``intra_merge``) says otherwise. The file
is read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from tempstop.config import ConfigError, UnifiedModelConfig
from tempstop.inference.checkpoint import (
    CheckpointError,
    UnreadableFileError,
    load_model_weights,
    load_weights_only,
    save_checkpoint,
)
from tempstop.model import create_unified_model
from tempstop.model.official import OfficialCheckpointError, convert_tempme_state_dict
from tempstop.utils import sha256_file
from tempstop_pipelines.options import parse_overrides


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop import-checkpoint``."""
    p.add_argument("source", metavar="OFFICIAL.pth", help="the official code's saved state dict")
    p.add_argument("--format", required=True, choices=["tempme"], help="which official code saved it")
    p.add_argument("--out", required=True, metavar="MODEL.pth", help="the project checkpoint to write")
    p.add_argument("--max-words", type=int, default=32, help="text length in tokens (official max_words: 32)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model key the weights do not hold, e.g. --set model.tempme.imgme_r=2")  # fmt: skip
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    """Convert, check that the result loads, write it atomically; exit 2 with one line on bad input."""
    source, out = Path(args.source), Path(args.out)
    try:
        if not source.is_file():
            raise OfficialCheckpointError(
                f"{source}: {'not a regular file' if source.exists() else 'file not found'}"
            )
        state = _read_weights_only(source)
        model_cfg, weights = convert_tempme_state_dict(state, str(source), args.max_words)
        cfg = UnifiedModelConfig(model=model_cfg)
        cfg = cfg.with_overrides(
            {"extract.size": model_cfg.architecture.image_size, **parse_overrides(args.overrides)}
        )
        model = create_unified_model(cfg)  # the imported weights must fit the model they describe
        load_model_weights(model, weights, str(source))
    except (OfficialCheckpointError, CheckpointError, ConfigError, ValueError) as exc:
        print(f"tempstop import-checkpoint: {exc}", file=sys.stderr)
        return 2
    payload = {
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "epoch": 0,
        "step": 0,
        "phase": "imported",
        "best_metric": float("-inf"),
        "metrics": {},
        "imported_from": {"format": args.format, "file": str(source), "sha256": sha256_file(source)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, payload)
    m = cfg.model
    arch = m.architecture
    print(
        f"imported {source} ({len(state)} tensors, {next(iter(state.values())).dtype}) -> {out}\n"
        f"  backbone: OpenAI-layout ViT, width {arch.vision_width}, {arch.vision_layers} layers, patch "
        f"{arch.patch_size}, {arch.image_size} px; text width {arch.text_width}, {arch.text_layers} layers; "
        f"embedding {arch.embed_dim}; QuickGELU\n"
        f"  TempMe: {m.frames} frames, LoRA rank {m.tempme.lora_rank}, ClipMe layers {m.tempme.clipme_layers} "
        f"(k = {m.tempme.clipme_k}); {sum(p.numel() for p in model.tempme.parameters()):,} TempMe parameters\n"
        f"  evaluate: tempstop evaluate --checkpoint {out} --data DATA (frames of {arch.image_size} px)\n"
        f"  to train from it (--init-from {out}), put this in the model section of params.yaml:\n"
        + _model_yaml(cfg),
    )
    return 0


def _read_weights_only(path: Path) -> dict:
    """The file's tensors (weights-only); anything else is one line naming the file."""
    try:
        return load_weights_only(path)
    except UnreadableFileError as exc:
        raise OfficialCheckpointError(str(exc)) from None


def _model_yaml(cfg) -> str:
    """The keys of the ``model`` section that describe the imported model, as YAML lines."""
    keys = ("backbone", "architecture", "frames", "quick_gelu", "freeze_backbone", "max_words")
    model = {k: cfg.to_dict()["model"][k] for k in keys}
    model["tempme"] = {
        k: cfg.to_dict()["model"]["tempme"][k]
        for k in ("lora_rank", "lora_alpha", "clipme_layers", "clipme_k")
    }
    text = yaml.safe_dump({"model": model}, default_flow_style=None, sort_keys=False, width=100)
    return "\n".join("    " + line for line in text.splitlines())
