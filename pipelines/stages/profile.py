"""The cost of a model variant: GFLOPs, tokens per layer, trainable parameters and speed.

    tempstop profile --model ViT-B-32 --frames 12 --variant unified [--size 224] [--batch 2] [--json]

Random weights: cost does not depend on them. GFLOPs are multiply-adds (FLOPs / 2), as
the TempMe paper counts them. TempMe/STOP settings come from the ``model`` section of
``--params`` when given, else from the defaults (TempMe's paper schedule, adapted to the
backbone's depth); ``--set model.tempme.imgme_r=8`` changes one. The backbone is frozen as
with real weights (docs/design.md §1), except for ``tempstop-tiny`` (trained from scratch) and
``meanP`` (CLIP4Clip fine-tunes it); ``--[no-]freeze-backbone`` decides explicitly.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import get_args

import torch

from tempstop.config import ModelConfig, UnifiedModelConfig, Variant
from tempstop.model import create_unified_model
from tempstop.model.profile import profile_model
from tempstop_pipelines.options import add_params_arg, load_params, parse_overrides


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop profile``."""
    p.add_argument("--model", default="ViT-B-32", help="open_clip backbone (ViT-B-32, ViT-B-16, tempstop-tiny)")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--variant", choices=get_args(Variant), default="unified")
    p.add_argument("--size", type=int, default=None, help="frame size in px (default: the backbone's)")
    p.add_argument("--batch", type=int, default=2, help="videos per batch for the speed measurements")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per speed measurement")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="skip the speed measurements")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_params_arg(p)
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    """Build the variant with random weights, measure it, print the result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _model_config(_base_config(args), args)
    torch.manual_seed(0)
    model = create_unified_model(cfg)
    result = profile_model(model, args.frames, args.size, args.batch, args.iters, args.speed)
    result["freeze_backbone"] = cfg.freeze_backbone
    result["threads"] = torch.get_num_threads()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(format_profile(result))
    return 0


def _base_config(args: argparse.Namespace) -> ModelConfig:
    """The ``model`` section of ``--params`` (with ``--set``), else the defaults with ``--set``:
    params.yaml is not read implicitly, as its schedule is the tiny demo model's."""
    if args.params:
        return load_params(args).model
    return UnifiedModelConfig().with_overrides(parse_overrides(args.overrides)).model


def _model_config(base: ModelConfig, args: argparse.Namespace) -> ModelConfig:
    freeze = args.freeze_backbone
    if freeze is None:
        freeze = args.model != "tempstop-tiny" and args.variant != "meanP"
    update = {"backbone": args.model, "variant": args.variant, "freeze_backbone": freeze, "pretrained": None,
              "frames": args.frames}  # fmt: skip
    if args.size is not None:
        update["image_size"] = args.size
    return ModelConfig.model_validate({**base.model_dump(), **update})


def format_profile(r: dict) -> str:
    """Human-readable summary of :func:`tempstop.model.profile.profile_model`'s result."""
    lines = [
        f"{r['backbone']} {r['variant']}: {r['frames']} frames at {r['size']} px",
        f"  visual GFLOPs per video: {r['gflops_per_video']:.2f}  ({r['gflops_convention']})",
        f"  output tokens: {r['output_tokens']}",
        "  tokens per layer (sequences x tokens; ClipMe: concat -> cross -> out):",
    ]
    for d in r["tokens_per_layer"]:
        detail = (
            f"{d['concat']} -> {d['after_cross']} -> {d['output']}"
            if d["concat"] != d["input"]
            else f"{d['output']}"
        )
        lines.append(f"    layer {d['layer']:2d}: {d['sequences']:3d} x {detail}")
    params = r["trainable_parameters"]
    lines.append("  trainable parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    if "inference_videos_per_s" in r:
        train = r["train_videos_per_s"]
        lines.append(
            f"  videos/s (batch {r['batch']}, {r['threads']} threads): inference {r['inference_videos_per_s']}, "
            f"training step {train if train is not None else 'n/a (nothing trains)'}"
        )
    return "\n".join(lines)
