"""Video probing, frame sampling and decoding (decord), resizing (Pillow).

Sampling is uniform in *time*, not in frame index. A frame's presentation interval is
``[start_i, start_{i+1})`` with the start times decord reads from the container, so a
variable-frame-rate clip (screen recordings, phone videos) is sampled evenly over its
duration instead of over-sampling its dense stretches. For a constant-rate clip this gives the
usual ``floor((i + 0.5) * N / T)`` indices. When the container's timestamps are unusable (not
finite, decreasing) the start times are synthesised from the average frame rate, which is plain
index sampling.

A window (the whole clip or one caption's segment) that shows fewer distinct frames than
requested yields every frame it has, in order, and the caller zero-pads; it never repeats a
frame to fill up.

Importing this module imports decord, PyAV and Pillow (~0.3 s): the processes that import it
decode, and worker pools preload it once in their fork server (:mod:`tempstop.data.workers`).
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import decord
import numpy as np
from PIL import Image


class VideoError(RuntimeError):
    """A video cannot be opened or decoded; the message names the file."""


def open_reader(path: str | Path, threads: int = 1, dims: tuple[int, int] | None = None) -> Any:
    """Open ``path`` with decord on the CPU; ``threads`` decoder threads (0 = decord's choice).

    ``dims = (width, height)`` makes FFmpeg scale while converting to RGB (see
    :func:`decode_dims`), much cheaper than converting full HD frames and shrinking them after.
    """
    _quiet_ffmpeg()
    width, height = dims or (-1, -1)
    try:
        return decord.VideoReader(
            str(path), ctx=decord.cpu(0), num_threads=threads, width=width, height=height
        )
    except Exception as exc:  # decord raises DECORDError / RuntimeError with C++ noise
        raise VideoError(f"{path}: cannot open video: {_short(exc)}") from None


def _quiet_ffmpeg() -> None:
    """FFmpeg's own log lines (e.g. "moov atom not found") would tear through progress bars;
    every failure is reported with its reason anyway."""
    global _FFMPEG_QUIET
    if not _FFMPEG_QUIET:
        decord.logging.set_level(decord.logging.QUIET)
        _FFMPEG_QUIET = True


_FFMPEG_QUIET = False


def frame_times(reader: Any) -> tuple[np.ndarray, float]:
    """Start time of every frame (seconds, float64 ``[N]``, non-decreasing, first at 0) and
    the clip duration (end of the last frame).

    Falls back to ``i / avg_fps`` when the container's timestamps are not usable.
    """
    n = len(reader)
    try:
        stamps = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
    except Exception:
        stamps = None
    if stamps is not None and np.all(np.isfinite(stamps)) and np.all(np.diff(stamps[:, 0]) >= 0):
        if n == 0:
            return np.zeros(0), 0.0
        starts = stamps[:, 0] - stamps[0, 0]
        end = stamps[-1, 1] - stamps[0, 0]
        return starts, float(end) if end > starts[-1] else clip_duration(starts)
    fps = reader.get_avg_fps() or 25.0
    starts = np.arange(n, dtype=np.float64) / fps
    return starts, clip_duration(starts)


def clip_duration(starts: np.ndarray) -> float:
    """Duration when only start times are known: the last frame lasts as long as the one before."""
    if len(starts) == 0:
        return 0.0
    step = float(starts[-1] - starts[-2]) if len(starts) > 1 else 0.0
    return float(starts[-1] + (step if step > 0 else 1.0 / 25.0))


def sample_indices(
    starts: np.ndarray,
    num: int,
    segment: tuple[float, float] | None = None,
    duration: float | None = None,
) -> list[int]:
    """Indices of ``num`` frames uniformly spaced in time over ``segment`` (default: the clip).

    ``starts`` are the frames' start times (non-decreasing). Each of ``num`` equal time bins
    contributes the frame shown at its centre. A window showing at most ``num`` distinct frames
    gives all of them (fewer than ``num`` indices: the caller pads). A segment lying entirely
    past the end of the clip gives the single frame nearest to it rather than nothing.
    """
    starts = np.asarray(starts, dtype=np.float64)
    n = len(starts)
    if n == 0 or num < 1:
        return []
    end_of_clip = clip_duration(starts) if duration is None else float(duration)
    lo, hi = (0.0, end_of_clip) if segment is None else (float(segment[0]), float(segment[1]))
    lo, hi = max(lo, 0.0), min(hi, end_of_clip)
    # Frames whose interval [start_i, start_{i+1}) overlaps [lo, hi).
    first = max(int(np.searchsorted(starts, lo, side="right")) - 1, 0)
    last = int(np.searchsorted(starts, hi, side="left")) - 1
    if hi <= lo or last < first:
        nearest = min(max(int(np.searchsorted(starts, lo, side="right")) - 1, 0), n - 1)
        return [nearest]
    if last - first + 1 <= num:
        return list(range(first, last + 1))
    centres = lo + (np.arange(num) + 0.5) * (hi - lo) / num
    idx = np.searchsorted(starts, centres, side="right") - 1
    return np.clip(idx, first, last).astype(int).tolist()


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is ``size`` and crop the centre: uint8 ``[T,H,W,3] -> [T,S,S,3]``.

    Pillow's bilinear filter is antialiased (its support widens with the scale factor), so a
    720p frame shrunk to 64 px does not alias. Only the crop box is resampled, which is the
    same as resize-then-crop and several times cheaper for wide frames; ``reducing_gap`` lets
    Pillow pre-shrink by an integer factor first, a large saving on HD input at no visible cost.
    """
    t, h, w = frames.shape[:3]
    out = np.empty((t, size, size, 3), dtype=np.uint8)
    if h == w == size:
        out[:] = frames
        return out
    # The crop box in source pixels: the centred square of side min(h, w).
    side = min(h, w)
    left, top = (w - side) / 2.0, (h - side) / 2.0
    box = (left, top, left + side, top + side)
    gap = 3.0 if size * 3 < side else None
    frames = np.ascontiguousarray(frames)
    for i in range(t):
        # frombuffer shares the decoded frame's memory instead of copying it.
        img = Image.frombuffer("RGB", (w, h), frames[i], "raw", "RGB", 0, 1)
        out[i] = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=gap)
    return out


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre ``size x size`` window of frames whose short side is already ``size``."""
    h, w = frames.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def decode_dims(source: tuple[int, int] | None, size: int) -> tuple[int, int] | None:
    """``(width, height)`` to decode at so the short side is ``size`` (aspect kept), or
    ``None`` (decode at full size) when the source size is unknown or not larger."""
    if source is None:
        return None
    w, h = source
    if min(w, h) <= size:
        return None
    scale = size / min(w, h)
    return (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)


def decode(reader: Any, indices: list[int], dims: tuple[int, int] | None = None) -> np.ndarray:
    """Decode frames at ``indices`` (any order, repeats allowed): uint8 ``[K, H, W, 3]``.

    Each distinct frame is decoded once, in increasing order (decord seeks backwards badly).
    ``dims = (width, height)`` is the size the reader was opened with, checked on the result:
    decord 0.6.0 returns a garbled layout for some widths (8, 12, 16, 24, 48, 72, ...).
    """
    uniq = sorted(set(indices))
    batch = reader.get_batch(uniq).asnumpy()
    if batch.ndim != 4 or batch.shape[0] != len(uniq) or batch.shape[-1] != 3:
        raise VideoError(f"decoder returned shape {batch.shape} for {len(uniq)} frames")
    if dims is not None and batch.shape[1:3] != (dims[1], dims[0]):
        raise VideoError(
            f"decoder returned {batch.shape[2]}x{batch.shape[1]} frames, asked {dims[0]}x{dims[1]}"
        )
    if uniq == list(indices):
        return batch  # the usual case; copying HD frames would cost milliseconds
    pos = {j: k for k, j in enumerate(uniq)}
    return batch[[pos[j] for j in indices]]


def probe_video(path: str | Path) -> dict:
    """Open a video and decode its first and last frames; return its properties.

    ``{"frames", "fps", "width", "height", "duration"}``. Decoding the *last* frame is what
    catches a truncated file or one whose header over-reports the frame count (decord then
    fails, or hangs: run probes under :func:`tempstop.data.workers.map_with_timeout`).
    Raises :class:`VideoError` with a one-line reason.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    reader = open_reader(path)
    n = len(reader)
    if n == 0:
        raise VideoError(f"{path}: no frames")
    try:
        frames = reader.get_batch(sorted({0, n - 1})).asnumpy()
    except Exception as exc:
        raise VideoError(f"{path}: cannot decode frame {n - 1} of {n}: {_short(exc)}") from None
    height, width = frames.shape[1:3]
    fps = float(reader.get_avg_fps())
    _, duration = frame_times(reader)
    return {
        "frames": int(n),
        "fps": fps if math.isfinite(fps) else 0.0,
        "width": int(width),
        "height": int(height),
        "duration": round(duration, 4),
    }


def video_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` of the first video stream, read from the container header only.

    MP4/MOV headers are parsed directly (tens of microseconds); other containers are asked
    through PyAV. ``None`` when the size cannot be found; nothing is decoded either way.
    """
    try:
        size = _mp4_video_size(Path(path))
        if size is None:
            with av.open(str(path)) as container:
                ctx = container.streams.video[0].codec_context
                size = (int(ctx.width), int(ctx.height))
    except Exception:  # unreadable or unknown: the caller decodes at full size
        return None
    return size if size[0] > 0 and size[1] > 0 else None


def _mp4_video_size(path: Path) -> tuple[int, int] | None:
    """Coded size from the visual sample entry (``moov/trak/mdia/minf/stbl/stsd``) of the
    first ``vide`` track; ``None`` if the file is not MP4/MOV or has no such track."""
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size

        def boxes(start: int, stop: int):  # (type, payload start, box end)
            pos = start
            while pos + 8 <= stop:
                fh.seek(pos)
                size, kind = struct.unpack(">I4s", fh.read(8))
                head = 8
                if size == 1:
                    size, head = struct.unpack(">Q", fh.read(8))[0], 16
                elif size == 0:
                    size = stop - pos
                if size < head:
                    return
                yield kind, pos + head, min(pos + size, stop)
                pos += size

        def child(start: int, stop: int, kind: bytes) -> tuple[int, int] | None:
            return next(((a, b) for k, a, b in boxes(start, stop) if k == kind), None)

        moov = child(0, end, b"moov")
        for kind, a, b in boxes(*moov) if moov else ():
            mdia = child(a, b, b"mdia") if kind == b"trak" else None
            hdlr = child(*mdia, b"hdlr") if mdia else None
            if hdlr is None:
                continue
            fh.seek(hdlr[0] + 8)  # version/flags, pre_defined
            if fh.read(4) != b"vide":
                continue
            node: tuple[int, int] | None = mdia
            for name in (b"minf", b"stbl", b"stsd"):
                node = child(*node, name) if node else None
            if node is None:
                return None
            fh.seek(node[0] + 8 + 8 + 24)  # version/flags + count, entry header, fields before size
            w, h = struct.unpack(">HH", fh.read(4))
            return (w, h) if w and h else None
    return None


def _short(exc: BaseException) -> str:
    """decord errors carry a C++ backtrace; keep the first meaningful line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln for ln in lines if "Stack trace" not in ln), type(exc).__name__)
    return text[:300]


def safe_video_path(split_dir: str | Path, rel: str) -> Path:
    """``<split>/videos/<rel>``, refusing names that leave the split folder.

    Absolute paths, drive letters, backslashes and ``..`` components are rejected (a lexical
    check: a symlink inside ``videos/`` that points elsewhere is the user's choice and allowed).
    """
    reason = unsafe_path_reason(rel)
    if reason:
        raise VideoError(f"{rel!r}: {reason}")
    return Path(split_dir) / "videos" / rel


def unsafe_path_reason(rel: object) -> str | None:
    """Why ``rel`` is not a safe file name under ``videos/`` (``None`` when it is)."""
    if not isinstance(rel, str) or not rel.strip():
        return "video file name is empty"
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return "absolute path (must be relative to the split's videos/ folder)"
    if "\\" in rel:
        return "backslash in path (use '/')"
    if ".." in rel.split("/"):
        return "path leaves the split folder ('..')"
    if "\x00" in rel:
        return "NUL character in path"
    return None


@dataclass
class SampledClip:
    """Frames of one video sampled uniformly in time (see :func:`sample_clip`)."""

    frames: list[np.ndarray]  # per segment: uint8 [k, S, S, 3], k <= num (the caller pads)
    decoded: np.ndarray  # uint8 [K, H, W, 3]: every decoded frame, time order, aspect kept
    duration: float  # seconds
    fps: float
    width: int  # the source's frame size
    height: int
    count: int  # frames in the file


def sample_clip(
    path: str | Path,
    num: int,
    size: int,
    segments: list[tuple[float, float] | None] | None = None,
    threads: int = 1,
) -> SampledClip:
    """Decode ``num`` frames per segment (``None``: the whole clip), uniform in time, resized
    so the short side is ``size`` and centre-cropped; each distinct frame is decoded once.

    When the container header gives the frame size, FFmpeg scales while converting to RGB
    and only a centre crop is left to do; otherwise, or if decord garbles that size, frames
    are decoded at full size and shrunk with Pillow. Raises :class:`VideoError` (one line).
    """
    source = video_size(path)
    dims = decode_dims(source, size)
    reader = open_reader(path, threads, dims)
    count = len(reader)
    if count == 0:
        raise VideoError(f"{path}: no frames")
    starts, duration = frame_times(reader)
    fps = float(reader.get_avg_fps() or 0.0)
    picks = [
        sample_indices(starts, num, None if s is None else tuple(s), duration) for s in segments or [None]
    ]
    wanted = sorted({i for p in picks for i in p})
    try:
        decoded = _decode_checked(reader, wanted, dims, path)  # [K, H, W, 3]
    except VideoError:
        if dims is None:
            raise
        dims, reader = None, open_reader(path, threads)
        decoded = _decode_checked(reader, wanted, None, path)
    # Close the reader now: decord's decoder thread keeps decoding ahead while it lives,
    # burning CPU that the resize (and the other workers) need.
    del reader
    small = center_crop(decoded, size) if dims else resize_center_crop(decoded, size)  # [K, S, S, 3]
    row = {j: k for k, j in enumerate(wanted)}
    frames = []
    for idx in picks:
        rows = [row[j] for j in idx]
        frames.append(small if rows == list(range(len(small))) else small[rows])
    width, height = source or (decoded.shape[2], decoded.shape[1])
    return SampledClip(
        frames, decoded, float(duration), fps if math.isfinite(fps) else 0.0, int(width), int(height), count
    )


def _decode_checked(
    reader: Any, wanted: list[int], dims: tuple[int, int] | None, path: str | Path
) -> np.ndarray:
    """:func:`decode` with decord's errors (a C++ backtrace) turned into a one-line VideoError."""
    try:
        return decode(reader, wanted, dims)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"{path}: decoding failed: {_short(exc)}") from None
