"""The training dataset over a frame store (``tempstop.data.store.FrameStore``): a video's
frames with one of its captions; and the quadruple ids of a store's videos (demo data).

Samples stay uint8 until they reach the device (4x less to copy than float); the trainer
normalises them there with :func:`tempstop.data.transforms.frames_to_tensor`. Captions are
tokenised in the main process with ``model.tokenize`` (a batch at a time: cheap, and it keeps
the model out of DataLoader workers).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)


class ClipCaptionDataset(Dataset):
    """``dataset[(video_index, caption_index)]`` -> frames, mask, caption of a store item.

    The sampler picks the caption (one random caption per video per epoch), so this class is
    deterministic. A plain integer key means caption 0 (validation).
    """

    def __init__(self, store) -> None:
        self.store = store
        self.captions = [list(item["captions"]) for item in store.items]

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key) -> dict:
        index, caption = key if isinstance(key, tuple) else (int(key), 0)
        frames, mask = self.store.load(index)  # uint8 [T, S, S, 3], bool [T]
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(frames)),
            "mask": torch.from_numpy(np.asarray(mask, dtype=np.bool_)),
            "caption": self.captions[index][caption],
            "index": index,
        }


def group_ids(store) -> list | None:
    """Quadruple id of each store item (demo data), or ``None`` when the data has none.

    The id comes from the store item (``"quadruple"``) or, for stores written without the
    annotation extras, from the source split's annotations.json (matched by video id).
    """
    items = store.items
    if items and all("quadruple" in it for it in items):
        return [it["quadruple"] for it in items]
    source = getattr(store, "source", None) or _store_source(store)
    if source:
        ann = Path(source) / "annotations.json"
        if ann.is_file():
            try:
                raw = json.loads(ann.read_text(encoding="utf-8"))
                by_id = {
                    r["video_id"]: r["quadruple"] for r in raw if isinstance(r, dict) and "quadruple" in r
                }
            except (OSError, ValueError, KeyError, TypeError, RecursionError):
                by_id = {}
            if by_id and all(it["video_id"] in by_id for it in items):
                return [by_id[it["video_id"]] for it in items]
    return None


def _store_source(store) -> str | None:
    path = getattr(store, "path", None) or getattr(store, "root", None)
    if path is None:
        return None
    index = Path(path) / "index.json"
    try:
        return json.loads(index.read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
