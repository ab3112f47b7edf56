"""GPU check: mixed precision, memory, throughput, NCCL DDP and TempMe parity on a CUDA card.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu.json]     # make gpu-check
    python benchmarks/gpu_check.py --dry-run                               # the same code on the CPU, tiny

In one go (about 3-5 minutes on an H100; budget 8):

1. **AMP training** of the unified model (ViT-B/32, random weights, frozen backbone as with
   CLIP weights, 12 frames at 224 px, batch 32): forward, backward and an AdamW step under
   bf16 autocast and under fp16 autocast with a GradScaler; peak memory and training videos/s
   (the TempMe paper reports 12.4 GB at batch 32).
2. **Inference videos/s**, unified against meanP (CLIP4Clip mean pooling), ViT-B/32 and
   ViT-B/16 with their paper presets, bf16 autocast, batch 32, side by side.
3. **DDP over NCCL**, one process: one training step through DistributedDataParallel gives the
   gradients of the same step without it.
4. **TempMe parity** (tests/fixtures/tempme) on the GPU in float32: with TF32 off the official
   outputs are met within 1e-5 (the fixture's CPU tolerance is 2e-6; GPU kernels sum in
   another order); with TF32 matmuls (10-bit mantissa) within 5e-3.

Writes the figures to ``--out`` (JSON). Without a CUDA device it says so and exits 0.
``--dry-run`` runs every step on the CPU with the tiny backbone, gloo for DDP and two
iterations, so the script is tested where there is no GPU (tests/unit/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tempstop.config import ModelConfig
from tempstop.data.transforms import frames_to_tensor
from tempstop.inference.checkpoint import load_model_weights
from tempstop.model import create_unified_model
from tempstop.model.official import convert_tempme_state_dict
from tempstop.model.profile import dummy_batch, token_schedule
from tempstop_pipelines.env import telemetry_off

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tempme"
TOLERANCE = {"fp32": 1e-5, "tf32": 5e-3}


def build(backbone: str, variant: str, device, frames: int = 12):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, variant=variant, frames=frames, freeze_backbone=variant != "meanP")
    return create_unified_model(cfg).to(device)


def batch_for(model, batch: int, frames: int, device) -> dict:
    data = dummy_batch(model, batch, frames)
    return {k: v.to(device) for k, v in data.items()}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def amp_training(backbone: str, frames: int, batch: int, iters: int, device) -> dict:
    """Peak memory and training videos/s under bf16 and fp16 (+ GradScaler) autocast."""
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model = build(backbone, "unified", device, frames).train()
        data = batch_for(model, batch, frames, device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        losses, times = [], []
        for i in range(iters + 1):  # the first step warms up
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype):
                loss = model.compute_training_loss(**data)["total_loss"]
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i:
                times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
        out[name] = {
            "train_videos_per_s": round(batch * len(times) / sum(times), 2),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device.type == "cuda"
            else None,
            "losses_finite": all(map(torch.isfinite, map(torch.tensor, losses))),
            "grad_scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
        }
        del model, opt
    return out


def inference(backbones: list[str], frames: int, batch: int, iters: int, device) -> dict:
    """Inference videos/s of meanP and unified per backbone (bf16 autocast), and their ratio."""
    out = {}
    for backbone in backbones:
        row = {}
        for variant in ("meanP", "unified"):
            model = build(backbone, variant, device, frames).eval()
            data = batch_for(model, batch, frames, device)
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                model.encode_video(data["video"], data["video_mask"])  # warm-up
                sync(device)
                start = time.perf_counter()
                for _ in range(iters):
                    model.encode_video(data["video"], data["video_mask"])
                sync(device)
            seconds = time.perf_counter() - start
            tokens = token_schedule(model.float(), frames)[-1]
            row[variant] = {
                "videos_per_s": round(batch * iters / seconds, 2),
                "output_tokens": tokens["sequences"] * tokens["output"],
            }
            del model
        row["unified_over_meanP"] = round(row["unified"]["videos_per_s"] / row["meanP"]["videos_per_s"], 3)
        out[backbone] = row
    return out


def ddp_step(backbone: str, frames: int, device) -> dict:
    """One DDP training step (world size 1) against the same step without DDP."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        grads = []
        for wrap in (False, True):
            model = build(backbone, "unified", device, frames).train()
            for layer in model.stop.layers if model.stop is not None else []:
                layer.drop.p = 0.0  # the same step twice: no dropout
            data = batch_for(model, 4, frames, device)
            runner = _LossModule(model)
            if wrap:
                ids = [device.index or 0] if device.type == "cuda" else None
                runner = DistributedDataParallel(runner, device_ids=ids, find_unused_parameters=True)
            runner(**data)["total_loss"].backward()
            grads.append(
                {
                    n: p.grad.detach().float().clone()
                    for n, p in model.named_parameters()
                    if p.grad is not None
                }
            )
        diff = max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0])
        return {"backend": backend, "parameters_with_grad": len(grads[1]), "max_grad_difference": diff,
                "same_keys": grads[0].keys() == grads[1].keys()}  # fmt: skip
    finally:
        dist.destroy_process_group()


class _LossModule(torch.nn.Module):
    """``forward`` = the model's training loss, so DDP's hooks see the step."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch):
        return self.model.compute_training_loss(**batch)


def parity(device) -> dict:
    """The official TempMe outputs of tests/fixtures/tempme on ``device``, TF32 off and on."""
    ref = torch.load(FIXTURE / "reference.pt", map_location="cpu", weights_only=True)
    state = torch.load(FIXTURE / "official_model.pt", map_location="cpu", weights_only=True)
    cfg, weights = convert_tempme_state_dict(state, "official_model.pt")
    model = create_unified_model(cfg)
    load_model_weights(model, weights, "official_model.pt")
    model = model.to(device).eval()
    video = frames_to_tensor(torch.from_numpy(np.load(FIXTURE / "frames.npy"))).to(device)
    mask = torch.ones(video.shape[:2], dtype=torch.bool, device=device)
    out = {}
    for mode in ("fp32", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
        with torch.no_grad():
            feats = model.video_features(video, mask, record=True)
            frame = F.normalize(model.clip.visual.ln_post(feats.frame_cls) @ model.clip.visual.proj, dim=-1)
            ids, attn = model.tokenize(ref["sentences"])
            text = model.encode_text(ids.to(device), attn.to(device)).cpu()
            emb = model.encode_video(video, mask).cpu()
        diffs = {
            "frame_features": (frame.cpu() - ref["frame_features"]).abs().max().item(),
            "video_embedding": (emb - ref["video_embedding"]).abs().max().item(),
            "text_embedding": (text - ref["text_embedding"]).abs().max().item(),
            "cosine_similarity": (text @ emb.T - ref["cosine_similarity"]).abs().max().item(),
        }
        tokens = [d["output"] for d in feats.tokens] == ref["tokens_per_layer"].tolist()
        out[mode] = {"max_abs_difference": diffs, "tolerance": TOLERANCE[mode], "token_counts_match": tokens,
                     "ok": tokens and max(diffs.values()) <= TOLERANCE[mode]}  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    parser.add_argument("--dry-run", action="store_true", help="tiny backbone on the CPU (tests the script)")
    args = parser.parse_args(argv)
    telemetry_off()
    if args.dry_run:
        device, b32, b16, frames, batch, iters = (
            torch.device("cpu"),
            "tempstop-tiny",
            "tempstop-tiny",
            8,
            4,
            2,
        )
    elif torch.cuda.is_available():
        device, b32, b16, frames, batch, iters = torch.device("cuda", 0), "ViT-B-32", "ViT-B-16", 12, 32, 10
    else:
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False): nothing measured")
        return 0
    start = time.perf_counter()
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU dry run ({platform.machine()})",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "setup": {
            "frames": frames,
            "batch": batch,
            "timed_iterations": iters,
            "weights": "random",
            "backbone_frozen": "all variants but meanP",
        },  # fmt: skip
    }
    steps = [("amp_training", lambda: amp_training(b32, frames, batch, iters, device)),
             ("inference", lambda: inference(sorted({b32, b16}), frames, batch, iters, device)),
             ("ddp", lambda: ddp_step(b32, frames, device)),
             ("parity", lambda: parity(device))]  # fmt: skip
    for name, step in steps:
        t0 = time.perf_counter()
        result[name] = step()
        print(
            f"gpu-check: {name} done in {time.perf_counter() - t0:.0f} s: {json.dumps(result[name])}",
            flush=True,
        )
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"gpu-check: {result['device']}, {result['seconds']} s -> {args.out}")
    ok = all(v["ok"] for v in result["parity"].values()) and result["ddp"]["same_keys"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
