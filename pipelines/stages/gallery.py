"""The retrieval gallery picture of ``tempstop plots``: what the model finds for a few queries.

``tempstop evaluate`` puts a ``gallery`` into the evaluation JSON (``evaluate.gallery_queries``
text queries spread over the split, each with its top-5 videos and their cosine scores) and
the path of the frame store it read (``store``). :func:`draw_gallery` turns it into one row per
query: the query as the row title and, left to right in rank order, a film strip of each top
video (frames left to right in time), boxed in thick green for the correct video and thin grey
for the others. Frames come from the frame store; when there is no gallery or the store is
gone, a placeholder picture says why (with a warning for the store), since DVC declares the file.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from tempstop.data.store import FrameStore, StoreError
from tempstop_pipelines.stages.figures import plt, save_figure

STRIP_FRAMES = 4  # frames per film strip
GAP = 0.08  # dark gap between two frames of a strip, as a fraction of the frame size
FIG_WIDTH = 14.0  # inches
CORRECT, OTHER, MISSED = "#2ca02c", "#9e9e9e", "#b22222"


def film_strip(frames: np.ndarray, mask: np.ndarray, n: int = STRIP_FRAMES) -> np.ndarray:
    """``n`` frames evenly spread over the valid ones, side by side: uint8 ``[S, W, 3]``.

    ``frames`` is uint8 ``[T, S, S, 3]`` and ``mask`` bool ``[T]`` (a store item); a video
    without a valid frame gives a black strip.
    """
    valid = np.flatnonzero(mask)  # [T'] indices of real frames
    size = frames.shape[1]
    gap = np.full((size, max(1, round(GAP * size)), 3), 24, np.uint8)  # [S, g, 3]
    if valid.size == 0:
        picks = [np.zeros_like(frames[0])] * n
    else:
        order = np.linspace(0, valid.size - 1, n).round().astype(int)
        picks = [frames[valid[i]] for i in order]  # each [S, S, 3]
    parts = [p for frame in picks for p in (frame, gap)][:-1]
    return np.concatenate(parts, axis=1)  # [S, n*S + (n-1)*g, 3]


def load_strips(store_path: str | Path, entries: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    """Film strip of every video the gallery shows, by store index; raises if the store is
    missing, unreadable or no longer the evaluated one (video ids differ)."""
    store = FrameStore(store_path)
    strips: dict[int, np.ndarray] = {}
    for entry in entries:
        for hit in entry["top"]:
            i = int(hit["index"])
            if i in strips:
                continue
            if not 0 <= i < len(store) or store.items[i]["video_id"] != hit["video_id"]:
                raise StoreError(f"{store.path}: item {i} is not video {hit['video_id']!r} any more")
            strips[i] = film_strip(*store.load(i))
    return strips


def draw_gallery(evaluation: dict[str, Any], path: Path) -> None:
    """Draw ``path`` from ``evaluation["gallery"]``. Without a gallery, or
    (with a one-line warning on stderr) when its frame store cannot be read, a placeholder
    picture saying why is written instead, so the file a pipeline declares always exists."""
    entries = evaluation.get("gallery") or []
    if not entries:
        _placeholder(path, "no retrieval gallery: the evaluation was run with evaluate.gallery_queries=0")
        return
    store_path = evaluation.get("store")
    try:
        if not store_path:
            raise ValueError("the evaluation JSON names no frame store")
        strips = load_strips(store_path, entries)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # StoreError is a ValueError
        reason = " ".join(str(exc).split())
        print(
            f"tempstop plots: warning: frame store {store_path} is missing or unreadable "
            f"({reason}); {path.name} is a placeholder",
            file=sys.stderr,
        )
        _placeholder(path, f"no retrieval gallery: frame store {store_path} is missing or unreadable")
        return

    cols = max(len(e["top"]) for e in entries)
    strip_h, strip_w = next(iter(strips.values())).shape[:2]
    cell_w = (FIG_WIDTH - 0.6) / cols  # inches per cell
    titles = [_row_title(j, e) for j, e in enumerate(entries)]
    heights = [cell_w * strip_h / strip_w + 0.55 + 0.2 * t.count("\n") for t, _ in titles]
    fig = plt.figure(figsize=(FIG_WIDTH, sum(heights) + 0.5), dpi=110, layout="constrained")
    split = evaluation.get("split", "?")
    fig.suptitle(
        f"Retrieval gallery, {split} split: top {cols} videos per text query "
        "(green box = the correct video; frames left to right in time)",
        fontsize=11,
    )
    rows = fig.subfigures(len(entries), 1, height_ratios=heights)
    for row, entry, (title, missed) in zip(np.atleast_1d(rows), entries, titles, strict=True):
        row.suptitle(title, fontsize=9, color=MISSED if missed else "black", ha="left", x=0.01)
        axes = np.atleast_1d(row.subplots(1, cols))
        targets = set(entry["target"])
        for rank, ax in enumerate(axes, start=1):
            ax.set_xticks([])
            ax.set_yticks([])
            if rank > len(entry["top"]):
                ax.set_axis_off()
                continue
            hit = entry["top"][rank - 1]
            ax.imshow(strips[int(hit["index"])])
            ax.set_title(f"#{rank}  {hit['score']:.3f}", fontsize=9)
            ax.set_xlabel(textwrap.shorten(str(hit["video_id"]), 40, placeholder="..."), fontsize=7)
            correct = int(hit["index"]) in targets
            for spine in ax.spines.values():
                spine.set_color(CORRECT if correct else OTHER)
                spine.set_linewidth(4 if correct else 1)
    save_figure(fig, path)


def _placeholder(path: Path, message: str) -> None:
    """A small picture that only says ``message``."""
    fig = plt.figure(figsize=(6, 1), dpi=100)
    fig.text(0.5, 0.5, textwrap.fill(message, 90), ha="center", va="center", fontsize=9)
    save_figure(fig, path)


def _row_title(j: int, entry: dict[str, Any]) -> tuple[str, bool]:
    """``(wrapped row title, whether the correct video is missing from the top)``."""
    query = textwrap.shorten(" ".join(str(entry["query"]).split()), 330, placeholder=" ...")
    title = textwrap.fill(f'{j + 1}. "{query}"', 180)
    missed = not set(entry["target"]) & {int(h["index"]) for h in entry["top"]}
    if missed:
        title += f"  (correct video not in top {len(entry['top'])})"
    return title, missed
