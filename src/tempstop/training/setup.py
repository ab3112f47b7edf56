"""Trainer set-up pieces: opening and checking data, the model, mixed precision, the step
that DDP wraps.

Kept apart from the loop in :mod:`tempstop.training.trainer` so the loop reads as a loop.
Every check here runs before the first training step: a run should not fail after an hour
on something visible at the start.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tempstop import model as model_module
from tempstop.data.store import FrameStore, StoreError, is_store
from tempstop.data.transforms import frames_to_tensor
from tempstop.inference import checkpoint as ckpt_io
from tempstop.inference.embed import autocast, collate, model_input
from tempstop.training.dataset import ClipCaptionDataset, group_ids
from tempstop.training.distributed import DistInfo
from tempstop.training.sampler import GroupedBatchSampler
from tempstop.utils import model_mode

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on; the message says what to change."""


def open_store(key: str, path: str | Path):
    """The :class:`FrameStore` at ``path`` (``key`` names the setting in errors).

    The trainer reads frame stores only; a raw split folder is extracted at the edge
    (``tempstop train``, or ``tempstop extract`` beforehand).
    """
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{key}: {path} does not exist")
    if not is_store(path):
        if (path / "annotations.json").is_file():
            raise TrainingError(
                f"{key}: {path} is a raw split folder, not a frame store: extract it first "
                "(tempstop extract), or train with `tempstop train`, which does"
            )
        splits = [p.name for p in sorted(path.iterdir()) if is_store(p)] if path.is_dir() else []
        hint = f" (it holds stores: use one of them, e.g. {path / splits[0]})" if splits else ""
        raise TrainingError(f"{key}: {path} is not a frame store (no index.json){hint}")
    try:
        store = FrameStore(path)
        store.check_arrays()
    except StoreError as exc:
        raise TrainingError(f"{key}: {exc}") from None
    if len(store) == 0:
        raise TrainingError(f"{key}: the frame store {path} holds no videos (all failed to extract?)")
    return store


def build_model(cfg):
    """The model of ``cfg`` (``create_unified_model``); a config the model refuses (an unknown
    backbone, a schedule that does not fit it) is a :class:`TrainingError` naming the key."""
    try:
        return model_module.create_unified_model(cfg)
    except ValueError as exc:
        raise TrainingError(str(exc).strip().splitlines()[0]) from None


def init_weights(model: nn.Module, path: str | Path) -> None:
    """Initialise ``model`` from the weights of the checkpoint at ``path`` (``init_from``); a
    module the checkpoint has none of (STOP, for a TempMe-only checkpoint) keeps its initialisation."""
    init = ckpt_io.load_checkpoint(path)
    fresh = tuple(m for m in ("tempme.", "stop.") if not any(k.startswith(m) for k in init["model"]))
    ckpt_io.load_model_weights(model, init["model"], str(path), fresh)
    log.info("initialised weights from %s%s", path,
             f" ({', '.join(m.rstrip('.') for m in fresh)} from initialisation)" if fresh else "")  # fmt: skip


def make_loader(store, sampler, tcfg, device: torch.device) -> DataLoader:
    """The training DataLoader over ``store`` in the batches of ``sampler``."""
    return DataLoader(
        ClipCaptionDataset(store),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=tcfg.num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: worker seeds come from it, not from the global torch RNG.
        generator=torch.Generator().manual_seed(tcfg.seed),
    )


def make_sampler(store, tcfg, recipe, info: DistInfo):
    """The training batch sampler: batches of ``training.batch_size`` per rank, with the demo
    recipe's quadruples and hard batches when it asks for them."""
    items = store.items
    groups = group_ids(store) if recipe.keep_quadruples else None
    if recipe.keep_quadruples and groups is None:
        log.warning("demo_recipe.keep_quadruples: the training data has no quadruple ids; shuffling videos")
    words = recipe.hard_batches > 0 and recipe.hard_batch_source == "words"
    return GroupedBatchSampler(
        groups,
        [len(it["captions"]) for it in items],
        tcfg.batch_size,
        seed=tcfg.seed,
        num_replicas=info.world_size,
        rank=info.rank,
        texts=[" ".join(it["captions"]) for it in items] if words else None,
        hard_fraction=recipe.hard_batches,
    )



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
                f"{frames} (model.frames); re-extract it"
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


class TrainingStep(nn.Module):
    """``forward()`` = ``model.compute_training_loss(...)``: what the trainer trains.

    DDP hooks into a module's ``forward``; the model's ``forward`` returns embeddings and its
    training loss is ``compute_training_loss``, so this wrapper is what DDP wraps. A subclass
    of the model that overrides ``compute_training_loss`` (the user's guide's custom loss) is
    trained with its own terms.

    No gradient factor is needed under DDP: ``tempstop.losses`` gathers features *with*
    gradient and each rank's loss is the mean over its own rows of the global-batch InfoNCE,
    so the gradients summed over ranks are ``world_size`` times the single-process gradient of
    the global batch and DDP's average divides by ``world_size``
    (tests/training/test_ddp_gradients.py).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, video, video_mask, input_ids, attention_mask) -> dict:
        return self.model.compute_training_loss(video, video_mask, input_ids, attention_mask)


class StepRunner:
    """Calls a :class:`TrainingStep`, through DDP when distributed; ``sync_context`` for
    gradient accumulation."""

    def __init__(self, step: nn.Module, info: DistInfo) -> None:
        self.step = step
        self.ddp = None
        if info.distributed:
            ids = [info.device.index] if info.device.type == "cuda" else None
            # Frozen groups are skipped (DDP registers only parameters that require grad at
            # construction, so the trainer wraps again per phase); some prompts may be unused
            # in a step (inactive temporal prompts), hence find_unused_parameters.
            self.ddp = DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)

    def __call__(self, *args):
        return (self.ddp or self.step)(*args)

    def sync_context(self, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps that do not step."""
        if self.ddp is not None and not sync:
            return self.ddp.no_sync()
        return contextlib.nullcontext()


@torch.no_grad()
def preflight(model: nn.Module, val_store, device: torch.device, amp_dtype: torch.dtype | None) -> None:
    """Embed one validation video and caption now: a mistake in the evaluation path should
    show in seconds, not after the first epoch."""
    item = val_store.items[0]
    if not item["captions"]:
        raise TrainingError(f"validation store {val_store.path}: video {item['video_id']} has no caption")
    frames, mask = val_store.load(0)
    video = frames_to_tensor(torch.from_numpy(frames)[None].to(device))  # [1, T, 3, S, S]
    with model_mode(model), autocast(device, amp_dtype):
        model.encode_video(video, torch.from_numpy(mask)[None].to(device))
        ids, attn = model.tokenize(item["captions"][:1])
        model.encode_text(ids.to(device), attn.to(device))


def check_same_model(ckpt: dict[str, Any], cfg, source: str) -> None:
    """Resuming needs the same model config; name the keys that differ."""
    saved = ckpt_io.checkpoint_config(ckpt, source).to_dict()["model"]
    current = cfg.to_dict()["model"]
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        details = ", ".join(f"model.{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:5])
        raise ckpt_io.CheckpointError(
            f"{source}: trained with another model config ({details}); resume with the same config"
        )
