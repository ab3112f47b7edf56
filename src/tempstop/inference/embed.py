"""Embedding videos of a frame store and text queries with a model, in batches.

Used by evaluation, validation during training, indexing and serving. One process embeds
everything; a caller that splits the work over several processes (the trainer under DDP)
passes its :class:`Shards`: each process embeds its share and gets every row back.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tempstop.data.transforms import frames_to_tensor


class Shards(Protocol):
    """How one of several processes shares the embedding of ``n`` items."""

    def indices(self, n: int) -> list[int]:
        """The items this process embeds."""

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """All ``n`` rows, in order, from the rows of :meth:`indices` computed here."""


class VideoDataset(Dataset):
    """``dataset[i]`` -> frames and mask of store item ``indices[i]`` (for embedding videos)."""

    def __init__(self, store, indices: list[int] | None = None) -> None:
        self.store = store
        self.indices = list(range(len(store))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        frames, mask = self.store.load(index)  # uint8 [T, S, S, 3], bool [T]
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(frames)),
            "mask": torch.from_numpy(np.asarray(mask, dtype=np.bool_)),
            "index": index,
        }


def collate(items: list[dict]) -> dict:
    """Stack samples: ``frames`` uint8 ``[B, T, S, S, 3]``, ``mask`` bool ``[B, T]``,
    ``index`` long ``[B]`` and, for caption datasets, ``captions`` (list of B strings)."""
    out = {
        "frames": torch.stack([it["frames"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }
    if "caption" in items[0]:
        out["captions"] = [it["caption"] for it in items]
    return out


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def tokenize(model, texts: list[str], max_words: int | None = None):
    """``model.tokenize`` with a word limit when the model accepts one (paragraph queries)."""
    if max_words is not None and "max_words" in inspect.signature(model.tokenize).parameters:
        return model.tokenize(texts, max_words=max_words)
    return model.tokenize(texts)


def model_input(model) -> tuple[int | None, int | None]:
    """``(frames, image size)`` the model expects, where it says (``None`` = any)."""
    frames = getattr(model, "num_frames", None)
    size = getattr(model, "image_size", None)
    if size is None:  # open_clip's vision tower knows its input size
        size = getattr(getattr(getattr(model, "clip", None), "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return frames, size


@torch.no_grad()
def embed_videos(
    model,
    store,
    device: torch.device,
    batch_size: int = 64,
    shards: Shards | None = None,
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """L2-normalised embeddings of every store item: float32 ``[N, D]`` on CPU."""
    mine = shards.indices(len(store)) if shards else list(range(len(store)))
    loader = DataLoader(
        VideoDataset(store, mine), batch_size=batch_size, num_workers=num_workers, collate_fn=collate
    )
    parts = []
    for batch in tqdm(loader, desc="embed videos", disable=not progress, leave=False):
        video = frames_to_tensor(batch["frames"].to(device, non_blocking=True))  # [B, T, 3, S, S]
        with autocast(device, amp_dtype):
            emb = model.encode_video(video, batch["mask"].to(device))  # [B, D]
        parts.append(emb.float())
    return _joined(parts, model, device, len(store), shards)


@torch.no_grad()
def embed_texts(
    model,
    texts: list[str],
    device: torch.device,
    batch_size: int = 256,
    max_words: int | None = None,
    shards: Shards | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """L2-normalised embeddings of ``texts``: float32 ``[Q, D]`` on CPU."""
    mine = shards.indices(len(texts)) if shards else list(range(len(texts)))
    parts = []
    for start in tqdm(range(0, len(mine), batch_size), desc="embed texts", disable=not progress, leave=False):
        chunk = [texts[i] for i in mine[start : start + batch_size]]
        ids, mask = tokenize(model, chunk, max_words)
        with autocast(device, amp_dtype):
            emb = model.encode_text(ids.to(device), mask.to(device))  # [b, D]
        parts.append(emb.float())
    return _joined(parts, model, device, len(texts), shards)


def _joined(parts: list[torch.Tensor], model, device: torch.device, n: int, shards: Shards | None) -> torch.Tensor:
    # A process with nothing to embed (fewer items than processes) still joins the gather,
    # with the model's embedding width.
    local = torch.cat(parts) if parts else torch.zeros((0, int(model.embed_dim)), device=device)
    return (shards.gather(local, n) if shards else local).cpu()
