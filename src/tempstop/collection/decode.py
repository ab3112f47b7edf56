"""Work done per video in a worker process: sample frames, describe the file, draw a thumbnail.

Runs under :func:`tempstop.data.workers.map_with_timeout` (decord can hang or crash on a bad
file; a worker is killed after the timeout and the video is listed as failed), so it must be
a module-level function and return picklable values.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tempstop.collection.scan import file_hash
from tempstop.data.video import sample_clip


def thumbnail_strip(frames: np.ndarray, count: int, height: int) -> bytes:
    """JPEG of ``count`` frames spread over ``frames`` (uint8 ``[K, H, W, 3]``, time order),
    each scaled to ``height`` pixels (aspect kept), side by side."""
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    tiles = []
    for i in picks:
        img = Image.fromarray(np.ascontiguousarray(frames[i]))
        width = max(1, round(img.width * height / img.height))
        tiles.append(img.resize((width, height), Image.BILINEAR))
    strip = Image.new("RGB", (sum(t.width for t in tiles), height))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def pad_frames(frames: np.ndarray, num: int) -> tuple[np.ndarray, int]:
    """``[k <= num, S, S, 3]`` -> zero-padded ``[num, S, S, 3]`` and ``k`` (the valid frames)."""
    k = len(frames)
    if k == num:
        return frames, k
    out = np.zeros((num, *frames.shape[1:]), dtype=np.uint8)
    out[:k] = frames[:num]
    return out, min(k, num)


def decode_for_index(job: dict) -> dict:
    """One video of a collection: ``job`` holds ``path`` (absolute), ``frames``, ``size``,
    ``thumb_frames``, ``thumb_height``. Returns the padded model input (``frames`` uint8
    ``[T, S, S, 3]``, ``num_valid``), the file's metadata and content hash, and a JPEG
    thumbnail strip. Raises :class:`tempstop.data.video.VideoError` for a bad file."""
    clip = sample_clip(job["path"], job["frames"], job["size"])
    frames, num_valid = pad_frames(clip.frames[0], job["frames"])
    return {
        "frames": frames,
        "num_valid": num_valid,
        "meta": {
            "duration": round(clip.duration, 3),
            "fps": round(clip.fps, 3),
            "width": clip.width,
            "height": clip.height,
        },
        "hash": file_hash(job["path"]),
        "thumbnail": thumbnail_strip(clip.decoded, job["thumb_frames"], job["thumb_height"]),
    }
