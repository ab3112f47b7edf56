"""Test clip factory: small real H.264 files, split folders, and planted defects.

Frames carry their own index as a flat grey level (``level(i)``), so a test can tell from a
decoded, resized frame which source frame it came from, and so check sampling end to end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tempstop.data.mp4 import write_video

# Grey levels 16, 24, ..., so up to 30 distinct frames survive H.264 and resizing unambiguously.
LEVEL0, LEVEL_STEP = 16, 8


def level(i: int) -> int:
    """The grey level that marks frame ``i``."""
    return LEVEL0 + LEVEL_STEP * i


def frame_id(frame: np.ndarray) -> int:
    """Recover the source frame index of a decoded (possibly resized) indexed frame."""
    h, w = frame.shape[:2]
    centre = frame[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].astype(np.float64).mean()
    return int(round((centre - LEVEL0) / LEVEL_STEP))


def indexed_frames(n: int, height: int = 64, width: int = 64) -> np.ndarray:
    """``n`` flat grey frames, frame ``i`` at :func:`level` ``(i)``: uint8 [n, H, W, 3]."""
    if level(n - 1) > 255:
        raise ValueError(f"at most {(255 - LEVEL0) // LEVEL_STEP + 1} indexed frames, asked {n}")
    return np.stack([np.full((height, width, 3), level(i), np.uint8) for i in range(n)])


def make_clip(
    path: Path,
    n: int = 16,
    height: int = 64,
    width: int = 64,
    fps: float = 8,
    pts: list[float] | None = None,
) -> Path:
    """Write an indexed clip (see :func:`indexed_frames`); ``pts`` for variable frame rate."""
    write_video(path, indexed_frames(n, height, width), fps, crf=12, pts_seconds=pts)
    return path


def make_split(split_dir: Path, count: int = 3, **clip) -> list[dict]:
    """A split folder of ``count`` indexed clips ``v0..`` (``clip``: :func:`make_clip` options)
    with two-word captions; returns its items."""
    items = []
    for i in range(count):
        make_clip(split_dir / "videos" / f"v{i}.mp4", **clip)
        items.append({"video_id": f"v{i}", "video": f"v{i}.mp4", "captions": [f"clip number{i}"]})
    write_annotations(split_dir, items)
    return items


def write_annotations(split_dir: Path, items: object) -> Path:
    """Write (possibly invalid) items as ``annotations.json``."""
    path = split_dir / "annotations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to a fraction of its size (a download that stopped half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def sleepy_probe(path: str) -> dict:
    """A probe that hangs, as decord does on some broken files (runs in a worker process)."""
    time.sleep(60)
    return {}
