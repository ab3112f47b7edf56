"""Trainer set-up pieces: opening and checking data, mixed precision, the DDP-wrapped loss.

Kept apart from the loop in :mod:`tempstop.training.trainer` so the loop reads as a loop.
Every check here runs before the first training step: a run should not fail after an hour
on something visible at the start.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from tempstop.data.transforms import frames_to_tensor
from tempstop.training.distributed import DistInfo, barrier
from tempstop.training.evaluation import autocast
from tempstop.utils import model_mode

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on; the message says what to change."""


def open_store(key: str, path: str | Path, cfg, info: DistInfo):
    """A :class:`FrameStore` for ``path``: a store as is, a raw split folder extracted into
    ``training.frames_cache`` first (by the main process; the others wait and reuse it)."""
    from tempstop.data.extract import ensure_store
    from tempstop.data.store import FrameStore, is_store

    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{key}: {path} does not exist")
    if not is_store(path) and not (path / "annotations.json").is_file():
        hint = ""
        splits = (
            [p.name for p in sorted(path.iterdir()) if (p / "annotations.json").is_file()]
            if path.is_dir()
            else []
        )
        if splits:
            hint = f" (it looks like a dataset root: use one of its splits, e.g. {path / splits[0]})"
        raise TrainingError(f"{key}: {path} is neither a frame store (index.json) nor a split folder{hint}")
    datatype = cfg.training.datatype
    if is_store(path):
        store_path = path
    else:
        if info.is_main:
            store_path = ensure_store(path, cfg.training.frames_cache, cfg.extract, datatype=datatype)
        barrier()
        if not info.is_main:
            store_path = ensure_store(path, cfg.training.frames_cache, cfg.extract, datatype=datatype)
    store = FrameStore(store_path)
    if len(store) == 0:
        raise TrainingError(f"{key}: the frame store {store_path} holds no videos (all failed to extract?)")
    return store


def model_input(model) -> tuple[int | None, int | None]:
    """``(frames, image size)`` the model expects, where it says (``None`` = any)."""
    frames = getattr(model, "num_frames", None)
    size = getattr(model, "image_size", None)
    if size is None:  # open_clip's vision tower knows its input size
        size = getattr(getattr(getattr(model, "clip", None), "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return frames, size


def check_stores(model, train_store, val_store, tcfg, info: DistInfo) -> None:
    """Batch size against the data, frame sizes against the model and each other."""
    global_batch = tcfg.batch_size * info.world_size
    if global_batch > len(train_store):
        raise TrainingError(
            f"training.batch_size={tcfg.batch_size} x {info.world_size} process(es) = {global_batch} exceeds the "
            f"{len(train_store)} training videos in {train_store.path}"
        )
    frames, size = model_input(model)
    for name, store in (("training", train_store), ("validation", val_store)):
        if size is not None and store.size != size:
            raise TrainingError(
                f"{name} frame store {store.path} holds {store.size} px frames but the model takes {size} px; "
                f"re-extract with extract.size={size}"
            )
        if frames is not None and store.frames != frames:
            raise TrainingError(
                f"{name} frame store {store.path} holds {store.frames} frames per video but the model takes "
                f"{frames}; re-extract with extract.frames={frames}"
            )
    if (train_store.frames, train_store.size) != (val_store.frames, val_store.size):
        raise TrainingError(
            f"training store ({train_store.frames} frames, {train_store.size} px) and validation store "
            f"({val_store.frames} frames, {val_store.size} px) differ"
        )


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``training.amp`` -> (autocast dtype or None, use a GradScaler).

    ``auto``: bf16 on CUDA devices that support it (no scaler needed), else fp16 with a
    GradScaler; off on CPU, where autocast is slower than fp32 for this model.
    """
    cuda = device.type == "cuda"
    if amp == "off" or (amp == "auto" and not cuda):
        return None, False
    if amp == "auto":
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if amp == "fp16":
        if not cuda:
            raise TrainingError("training.amp=fp16 needs a CUDA device; use auto, bf16 or off on CPU")
        return torch.float16, True
    if cuda and not torch.cuda.is_bf16_supported():
        raise TrainingError("training.amp=bf16: this GPU does not support bfloat16; use fp16 or auto")
    return torch.bfloat16, False


class LossForward(nn.Module):
    """``forward()`` = the model's training loss, so that DDP can wrap it.

    DDP hooks into ``forward``; the model's loss lives in ``compute_training_loss``. This
    wrapper adds ``loss_for_backward``: the total loss times ``grad_scale`` (see
    :func:`ddp_grad_scale`), which makes DDP's averaged gradient equal to the single-process
    gradient of the same global batch; tests/training/test_trainer_real.py proves it.
    """

    def __init__(self, model: nn.Module, grad_scale: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.grad_scale = grad_scale

    def forward(self, video, video_mask, input_ids, attention_mask) -> dict:
        out = dict(self.model.compute_training_loss(video, video_mask, input_ids, attention_mask))
        out["loss_for_backward"] = out["total_loss"] * self.grad_scale
        return out


def ddp_grad_scale(world_size: int) -> float:
    """Factor on each rank's loss so that DDP's averaged gradient is the global-batch gradient.

    ``tempstop.losses`` gathers features *with* gradient and each rank's loss is the mean over
    its own rows of the global-batch InfoNCE, ``L_r``. Then ``sum_r L_r = world_size * L``
    (``L`` the single-process loss of the global batch); the gather's backward sends every
    rank's share of the gradient back to the rank that owns the features, so the gradients
    summed over ranks are ``world_size * dL/dtheta``, for ``logit_scale`` as for every other
    parameter, and DDP's average divides by ``world_size``: the factor is 1.

    (With a gather *without* gradient a single factor cannot be right: the features would need
    ``world_size`` and ``logit_scale`` 1. The DDP test would catch a change to that.)
    """
    del world_size
    return 1.0


class Runner:
    """Calls the loss module, through DDP when distributed; ``sync_context`` for accumulation."""

    def __init__(self, module: nn.Module, info: DistInfo) -> None:
        self.module = module
        self.ddp = None
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [info.device.index] if info.device.type == "cuda" else None
            # Frozen groups are skipped (DDP registers only parameters that require grad at
            # construction, so the trainer wraps again per phase); some prompts may be unused
            # in a step (inactive temporal prompts), hence find_unused_parameters.
            self.ddp = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def __call__(self, *args):
        return (self.ddp or self.module)(*args)

    def sync_context(self, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps that do not step."""
        if self.ddp is not None and not sync:
            return self.ddp.no_sync()
        return contextlib.nullcontext()


def wrap_ddp(module: nn.Module, info: DistInfo) -> Runner:
    """A :class:`Runner` over ``module`` (DDP when ``info.distributed``)."""
    return Runner(module, info)


@torch.no_grad()
def preflight(model: nn.Module, val_store, device: torch.device, amp_dtype: torch.dtype | None) -> None:
    """Embed one validation video and caption now: a mistake in the evaluation path should
    show in seconds, not after the first epoch."""
    item = val_store.items[0]
    if not item["captions"]:
        raise TrainingError(
            f"training.val_data_path: {val_store.path}: video {item['video_id']} has no caption"
        )
    frames, mask = val_store.load(0)
    video = frames_to_tensor(torch.from_numpy(frames)[None].to(device))  # [1, T, 3, S, S]
    with model_mode(model), autocast(device, amp_dtype):
        model.encode_video(video, torch.from_numpy(mask)[None].to(device))
        ids, attn = model.tokenize(item["captions"][:1])
        model.encode_text(ids.to(device), attn.to(device))
