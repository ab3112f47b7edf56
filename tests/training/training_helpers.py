"""Test helpers for the training tests: tiny frame stores and a tiny stand-in model.

``write_store`` writes the documented frame-store layout directly (fast: no video decoding);
``FakeModel`` implements the Model API with a few hundred parameters, for tests of the loop's
logic (NaN handling, schedules, checkpoints) that do not need the real network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WORDS = ["red", "green", "blue", "circle", "square", "moves", "left", "right", "up", "down", "then", "a"]


def write_store(
    root: Path,
    videos: int = 16,
    frames: int = 4,
    size: int = 16,
    captions: int = 2,
    quadruples: bool = True,
    seed: int = 0,
) -> Path:
    """A frame store of random videos whose captions name their (random) frame colours."""
    rng = np.random.default_rng(seed)
    split = root / "source"
    (root / "store" / "arrays").mkdir(parents=True)
    split.mkdir(parents=True, exist_ok=True)
    items, anns = [], []
    for i in range(videos):
        key = f"v{i:03d}"
        frames_arr = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
        np.save(root / "store" / "arrays" / f"{key}.npy", frames_arr)
        caps = [" ".join(rng.choice(WORDS, 6)) for _ in range(captions)]
        items.append(
            {
                "key": key,
                "video_id": key,
                "file": f"arrays/{key}.npy",
                "captions": caps,
                "num_valid": frames,
                "segment": None,
            }
        )
        ann = {"video_id": key, "captions": caps}
        if quadruples:
            ann["quadruple"] = i // 4
        anns.append(ann)
    (split / "annotations.json").write_text(json.dumps(anns))
    index = {
        "version": 1,
        "frames": frames,
        "size": size,
        "source": str(split),
        "datatype": "demo",
        "items": items,
        "failed": [],
    }
    (root / "store" / "index.json").write_text(json.dumps(index))
    return root / "store"


class FakeModel(nn.Module):
    """The Model API on a tiny network: mean colour per frame -> MLP -> mean over time."""

    def __init__(self, cfg=None, dim: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.cfg = getattr(cfg, "model", cfg)
        self.tcfg = getattr(cfg, "training", None)
        self.word = nn.Embedding(len(WORDS) + 1, dim)
        self.text_proj = nn.Linear(dim, dim)
        self.frame_proj = nn.Linear(3, dim)  # "tempme"
        self.time_weight = nn.Parameter(torch.zeros(16))  # "tempme"
        self.prompt = nn.Linear(dim, dim)  # "stop"
        self.drop = nn.Dropout(dropout)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.embed_dim = dim
        nn.init.zeros_(self.prompt.weight)
        nn.init.zeros_(self.prompt.bias)

    def tokenize(self, texts, max_words=None):
        ids = torch.zeros(len(texts), 8, dtype=torch.long)
        for b, text in enumerate(texts):
            for j, w in enumerate(text.split()[:8]):
                ids[b, j] = WORDS.index(w) + 1 if w in WORDS else 0
        return ids, (ids > 0).long()

    def encode_text(self, input_ids, attention_mask):
        e = self.word(input_ids) * attention_mask[..., None]  # [B, L, D]
        e = e.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(self.text_proj(e), dim=-1)

    def _frames(self, video, video_mask):
        f = self.frame_proj(video.mean(dim=(-1, -2)))  # [B, T, D]
        f = f + f * self.time_weight[: f.shape[1], None]
        return self.drop(f), video_mask.float()

    def encode_video(self, video, video_mask):
        f, m = self._frames(video, video_mask)
        f = f + self.prompt(f)
        pooled = (f * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(pooled, dim=-1)

    def compute_training_loss(self, video, video_mask, input_ids, attention_mask, token_type_ids=None):
        v = self.encode_video(video, video_mask)
        t = self.encode_text(input_ids, attention_mask)
        logits = self.logit_scale.exp() * t @ v.T
        labels = torch.arange(len(v))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        stop = loss * 0.5
        return {"tempme_loss": loss, "stop_loss": stop, "total_loss": loss + stop}

    def param_groups(self):
        return {
            "tempme": [self.frame_proj.weight, self.frame_proj.bias, self.time_weight],
            "stop": [self.prompt.weight, self.prompt.bias],
            "backbone": [self.word.weight, self.text_proj.weight, self.text_proj.bias, self.logit_scale],
        }

    def set_training_mode(self, mode, freeze_text=False):
        groups = self.param_groups()
        on = {
            "joint": ("tempme", "stop", "backbone"),
            "tempme_only": ("tempme", "backbone"),
            "stop_only": ("stop",),
        }[mode]
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in on)
