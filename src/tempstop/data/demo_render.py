"""Drawing the demo benchmark's clips (docs/design.md §6): each planned item
(:mod:`tempstop.data.demo_plan`) becomes frames, then an mp4; a pure function of the item and
the config, so a seed gives identical frames in any worker.
"""

from __future__ import annotations

import functools

import numpy as np

from tempstop.config import DemoConfig
from tempstop.data.demo_plan import PATH, num_frames, scale
from tempstop.data.mp4 import write_video

_STATIC_NOISE, _FRAME_NOISE = 3.0, 1.5  # grey levels of the background's fixed and per-frame noise
_SUB = np.array([-1 / 3, 0.0, 1 / 3])  # 3x3 supersampling offsets for anti-aliased edges
_TRI_NORMALS = np.array([[0.0, 1.0], [0.8660254, -0.5], [-0.8660254, -0.5]])


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Point-in-shape test; shapes are scaled to roughly equal areas for a radius ``r``."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "triangle":  # equilateral, pointing up, circumradius 1.35 r
        inradius = 0.5 * 1.35 * r
        return np.all(_TRI_NORMALS[:, 0] * dx[..., None] + _TRI_NORMALS[:, 1] * dy[..., None] <= inradius, -1)
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=256)
def _coverage(shape: str, r: float, fx: float, fy: float) -> np.ndarray:
    """Anti-aliased coverage ``float32 [2K, 2K, 1]`` of a shape centred at ``(K + fx, K + fy)``.

    Only the sub-pixel phase matters, and a steady move repeats a few phases, so most frames
    reuse a cached patch.
    """
    k = int(1.4 * r) + 2
    # Pixel centres at +0.5; 9 sub-samples per pixel give a coverage in [0, 1].
    ys = np.arange(2 * k)[:, None, None, None] + 0.5 + _SUB[None, None, :, None] - (k + fy)
    xs = np.arange(2 * k)[None, :, None, None] + 0.5 + _SUB[None, None, None, :] - (k + fx)
    return _inside(shape, xs, ys, r).mean(axis=(2, 3), dtype=np.float32)[..., None]


def _draw(frame: np.ndarray, shape: str, cx: float, cy: float, r: float, rgb: np.ndarray) -> None:
    """Blend an anti-aliased shape into ``frame`` (uint8 [H, W, 3]) in place."""
    ix, iy = int(np.floor(cx)), int(np.floor(cy))
    cover = _coverage(shape, r, round(cx - ix, 6), round(cy - iy, 6))
    k = cover.shape[0] // 2
    x0, y0 = ix - k, iy - k  # frame position of the patch's top-left pixel
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(frame.shape[1], x0 + 2 * k), min(frame.shape[0], y0 + 2 * k)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    cover = cover[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    patch = frame[fy0:fy1, fx0:fx1]
    patch[:] = np.rint(patch * (1.0 - cover) + cover * rgb)  # a convex mix: stays in 0..255


def _track(motion: str, offset: float, steps: int, factor: float) -> list[tuple[float, float]]:
    """Centres of ``steps`` frames of a straight 22 px -> 74 px move (times ``factor``) along ``motion``.

    The move is continuous over the event's half clip and frame ``i`` shows it at its own
    time ``i / steps`` (the end point belongs to the next event). This keeps the motion
    symmetric in time: a sampler that takes frames at bin centres (8 of 32 frames, say) sees
    the same positions forwards and reversed, so frame sets do not give away the direction.
    """
    lo, hi = PATH[0] * factor, PATH[1] * factor
    start, end = (hi, lo) if motion in ("left", "up") else (lo, hi)
    pos = np.linspace(start, end, steps, endpoint=False)
    if motion in ("left", "right"):
        return [(float(p), offset) for p in pos]
    return [(offset, float(p)) for p in pos]


def object_layout(item: dict, cfg: DemoConfig) -> list[tuple[str, tuple[int, ...], float, float, float]]:
    """Per frame: ``(shape, rgb, centre x, centre y, radius)`` of the object shown."""
    t = num_frames(cfg)
    out = []
    for (_, shape, motion), look, steps in zip(
        item["events"], item["render"]["objects"], (t // 2, t - t // 2), strict=True
    ):
        rgb = tuple(look["rgb"])
        for cx, cy in _track(motion, look["offset"], steps, scale(cfg)):
            out.append((shape, rgb, cx, cy, look["radius"]))
    return out


def render_clip(item: dict, cfg: DemoConfig) -> np.ndarray:
    """Frames ``uint8 [T, size, size, 3]`` of one planned clip (pure function of item and cfg)."""
    t, size, render = num_frames(cfg), cfg.size, item["render"]
    rng = np.random.default_rng(render["noise_seed"])
    # Grey noise: a static pattern plus a little flicker (mild, and cheap to encode). It is
    # made in one channel and rounded before the RGB copy: rendering then costs less than
    # encoding.
    grey = rng.standard_normal((t, size, size), np.float32) * _FRAME_NOISE
    grey += rng.standard_normal((size, size), np.float32) * _STATIC_NOISE + render["background"]
    frames = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    for i, (shape, rgb, cx, cy, radius) in enumerate(object_layout(item, cfg)):
        _draw(frames[i], shape, cx, cy, radius, np.asarray(rgb, np.float32))
    return frames


def write_clip(job: tuple[dict, dict, str]) -> str:
    """Worker: render one clip and write it (atomically). Returns the video id."""
    item, cfg_dict, path = job
    cfg = DemoConfig(**cfg_dict)
    try:
        write_video(path, render_clip(item, cfg), fps=cfg.fps)
    except Exception as exc:  # name the clip: a bare codec error says nothing
        raise RuntimeError(f"demo clip {item['video_id']} -> {path}: {exc}") from exc
    return item["video_id"]
