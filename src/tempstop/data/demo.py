"""The demo benchmark: two-event moving shapes (DESIGN section 6).

Every clip shows object A moving during the first half and object B during the second half.
Clips come in quadruples over one object pair::

    0: A m1, then B m2          1: A rev(m1), then B rev(m2)
    2: B m2, then A m1          3: B rev(m2), then A rev(m1)

Within a quadruple the objects keep their colour, size and track, and the background keeps its
level, so the four clips hold the same *set* of frames: only their order tells them apart. A
model that ignores time sees four identical bags of frames (about 25 % R@1 at best). Each move
is continuous in time and frame ``i`` shows it at time ``i / fps``, so this also holds for the
frames a uniform sampler keeps (e.g. 8 of 32 at bin centres), not only for all frames.

Meanings and splits. A caption's meaning is the ordered event tuple (c1, s1, m1, c2, s2, m2).
With 18 objects (6 colours x 3 shapes) there are 18 * 17 * 16 = 4896 meanings, and each
quadruple covers exactly four of them. Grouping meanings into quadruple "units" (an unordered
object pair and a motion pair up to reversing both motions) partitions them into
153 * 8 = 1224 units. Splits receive disjoint sets of units, so no meaning is in two splits
(and none repeats inside val or test). Units are shuffled by seed; val and test are drawn
first, so changing the training size leaves them unchanged.

Determinism: every random draw comes from generators seeded by (seed, split, quadruple, clip),
never by worker scheduling, so a seed gives identical annotations and identical frames.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np

from tempstop.config import DemoConfig
from tempstop.data.annotations import ANNOTATIONS_FILE, VIDEOS_DIR, AnnotationError, read_raw
from tempstop.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

#: Bump when the rendering or the annotation layout changes: existing outputs are regenerated.
GENERATOR_VERSION = 2
DATASET_FILE = "dataset.json"
SPLITS = ("train", "val", "test")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (230, 220, 40),
    "purple": (165, 55, 205),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down")
REVERSE = {"left": "right", "right": "left", "up": "down", "down": "up"}
TEMPLATES = (
    "a {c1} {s1} moves {m1}, then a {c2} {s2} moves {m2}",
    "first a {c1} {s1} moves {m1} and then a {c2} {s2} moves {m2}",
    "after a {c1} {s1} moves {m1}, a {c2} {s2} moves {m2}",
)
# Geometry at the reference size of 96 px; scaled linearly for other sizes.
_REF_SIZE = 96
_PATH = (22.0, 74.0)
_RADIUS = (8.0, 14.0)
_BACKGROUND = (20, 60)
_STATIC_NOISE, _FRAME_NOISE = 3.0, 1.5
_COLOUR_JITTER = 12

Object = tuple[str, str]  # (colour, shape)
Event = tuple[str, str, str]  # (colour, shape, motion)
Unit = tuple[Object, Object, str, str]  # (A, B, m1, m2): one quadruple's meanings


def all_objects() -> list[Object]:
    """The 18 objects, in a fixed order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def all_units() -> list[Unit]:
    """Every quadruple unit once: unordered object pair x motion pair up to double reversal.

    The canonical form has A before B in :func:`all_objects` order and m1 in {left, up}
    (the other representative is (rev m1, rev m2)).
    """
    objects = all_objects()
    motion_pairs = [(m1, m2) for m1 in ("left", "up") for m2 in MOTIONS]
    return [(a, b, m1, m2) for a, b in itertools.combinations(objects, 2) for m1, m2 in motion_pairs]


def quadruple_events(unit: Unit) -> list[tuple[Event, Event]]:
    """The four clips' event pairs of a unit, in the order of the module docstring."""
    a, b, m1, m2 = unit
    r1, r2 = REVERSE[m1], REVERSE[m2]
    return [
        ((*a, m1), (*b, m2)),
        ((*a, r1), (*b, r2)),
        ((*b, m2), (*a, m1)),
        ((*b, r2), (*a, r1)),
    ]


def caption(events: tuple[Event, Event], template: int) -> str:
    """Render one caption from the grammar."""
    (c1, s1, m1), (c2, s2, m2) = events
    return TEMPLATES[template].format(c1=c1, s1=s1, m1=m1, c2=c2, s2=s2, m2=m2)


def assign_units(cfg: DemoConfig) -> dict[str, list[Unit]]:
    """Disjoint units per split, deterministic by ``cfg.seed``.

    Val and test take theirs first; training takes the rest and, when it asks for more
    quadruples than remain, cycles through its own units (new renders, same meanings), so
    splits never share a meaning whatever the sizes.
    """
    units = all_units()
    order = np.random.default_rng([cfg.seed, 0x5B17]).permutation(len(units))
    shuffled = [units[i] for i in order]
    held_out = cfg.val_quadruples + cfg.test_quadruples
    if held_out >= len(units):
        raise ValueError(
            f"demo.val_quadruples + demo.test_quadruples = {held_out}, but only {len(units)} "
            "distinct quadruples exist and training needs at least one"
        )
    val = shuffled[: cfg.val_quadruples]
    test = shuffled[cfg.val_quadruples : held_out]
    pool = shuffled[held_out:]
    if cfg.train_quadruples > len(pool):
        log.warning(
            "demo.train_quadruples=%d exceeds the %d distinct quadruples left for training: "
            "meanings repeat (with new renders) inside train",
            cfg.train_quadruples,
            len(pool),
        )
    train = [pool[i % len(pool)] for i in range(cfg.train_quadruples)]
    return {"train": train, "val": val, "test": test}


def _scale(cfg: DemoConfig) -> float:
    return cfg.size / _REF_SIZE


def num_frames(cfg: DemoConfig) -> int:
    """Frames per clip (32 at the defaults: 8 fps x 4 s)."""
    return max(2, int(round(cfg.fps * cfg.seconds)))


def _plan_quadruple(cfg: DemoConfig, split: str, q: int, unit: Unit, width: int) -> list[dict]:
    """Annotation items (with their render parameters) for the four clips of a quadruple."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), q])
    a, b, m1, m2 = unit
    # Which object plays "A" and which direction comes first is random; the set of
    # meanings of the unit stays the same.
    if rng.random() < 0.5:
        a, b, m1, m2 = b, a, m2, m1
    if rng.random() < 0.5:
        m1, m2 = REVERSE[m1], REVERSE[m2]
    s = _scale(cfg)
    background = int(rng.integers(_BACKGROUND[0], _BACKGROUND[1] + 1))
    # Per object: fixed across the quadruple so the four clips hold the same frames.
    looks = {}
    for obj in (a, b):
        rgb = np.clip(
            np.array(COLOURS[obj[0]]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255
        )
        looks[obj] = {
            "radius": round(float(rng.uniform(*_RADIUS)) * s, 2),
            "offset": round(float(rng.uniform(*_PATH)) * s, 2),
            "rgb": [int(v) for v in rgb],
        }
    n_caps = cfg.train_captions if split == "train" else 1
    items = []
    for k, events in enumerate(quadruple_events((a, b, m1, m2))):
        templates = rng.permutation(len(TEMPLATES))[:n_caps]
        video_id = f"{split}_{q:0{width}d}_{k}"
        items.append(
            {
                "video_id": video_id,
                "video": f"{video_id}.mp4",
                "captions": [caption(events, int(t)) for t in templates],
                "quadruple": q,
                "variant": k,
                "events": [list(e) for e in events],
                "render": {
                    "background": background,
                    "noise_seed": int(rng.integers(0, 2**31 - 1)),
                    "objects": [looks[e[:2]] for e in events],
                },
            }
        )
    return items


def plan_split(cfg: DemoConfig, split: str, units: list[Unit]) -> list[dict]:
    """All annotation items of a split, in quadruple order."""
    if cfg.train_captions > len(TEMPLATES):
        raise ValueError(
            f"demo.train_captions={cfg.train_captions}: the grammar has only {len(TEMPLATES)} "
            "caption templates, so at most that many distinct paraphrases exist"
        )
    width = max(4, len(str(len(units) - 1)))
    return [item for q, unit in enumerate(units) for item in _plan_quadruple(cfg, split, q, unit, width)]


# ---- rendering ------------------------------------------------------------------------
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


def _track(motion: str, offset: float, steps: int, scale: float) -> list[tuple[float, float]]:
    """Centres of ``steps`` frames of a straight 22 px -> 74 px move (scaled) along ``motion``.

    The move is continuous over the event's half clip and frame ``i`` shows it at its own
    time ``i / steps`` (the end point belongs to the next event). This keeps the motion
    symmetric in time: a sampler that takes frames at bin centres (8 of 32 frames, say) sees
    the same positions forwards and reversed, so frame sets do not give away the direction.
    """
    lo, hi = _PATH[0] * scale, _PATH[1] * scale
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
        for cx, cy in _track(motion, look["offset"], steps, _scale(cfg)):
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


def _write_clip(job: tuple[dict, dict, str]) -> str:
    """Worker: render one clip and write it (atomically). Returns the video id."""
    from tempstop.data.mp4 import write_video

    item, cfg_dict, path = job
    cfg = DemoConfig(**cfg_dict)
    try:
        write_video(path, render_clip(item, cfg), fps=cfg.fps)
    except Exception as exc:  # name the clip: a bare codec error says nothing
        raise RuntimeError(f"demo clip {item['video_id']} -> {path}: {exc}") from exc
    return item["video_id"]


# ---- the whole dataset ----------------------------------------------------------------
def _identity(cfg: DemoConfig) -> dict[str, Any]:
    """What determines the output: generator version and every param except ``workers``."""
    params = cfg.model_dump(mode="json")
    params.pop("workers", None)
    return {"generator": "tempstop-demo", "version": GENERATOR_VERSION, "params": params}


def _reusable_items(split_dir: Path) -> dict[str, dict]:
    """Items of an existing annotations.json by video id (empty when absent or broken)."""
    path = split_dir / ANNOTATIONS_FILE
    if not path.is_file():
        return {}
    try:
        raw = read_raw(path)
    except AnnotationError as exc:
        log.warning("%s; regenerating the split", exc)
        return {}
    return {it["video_id"]: it for it in raw if isinstance(it, dict) and "video_id" in it}


def _remove_stale(videos_dir: Path, split: str, keep: set[str]) -> None:
    """Delete generator-named clips no longer planned and temp files of killed writes.

    Only names this generator produces are touched, so a user's own files survive.
    """
    for path in videos_dir.iterdir():
        ours = path.name.startswith(f"{split}_") and path.suffix == ".mp4" and path.name not in keep
        temp = path.name.startswith(f".{split}_") and path.suffix == ".tmp"
        if (ours or temp) and path.is_file():
            path.unlink()


def _refuse_foreign(out_dir: Path, marker: Any) -> None:
    """Refuse to overwrite a dataset this generator did not make (e.g. an imported one)."""
    if isinstance(marker, dict) and marker.get("generator") == "tempstop-demo":
        return
    for split in SPLITS:
        items = _reusable_items(out_dir / split)
        if any("events" not in it or "quadruple" not in it for it in items.values()):
            raise ValueError(
                f"{out_dir / split / ANNOTATIONS_FILE}: a dataset not made by the demo generator "
                "is there; choose another --out (nothing was changed)"
            )


def _run_jobs(jobs: list[tuple[dict, dict, str]], workers: int, progress: bool) -> None:
    """Render and write clips, in worker processes when ``workers > 1``."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="demo clips", unit="clip", disable=not progress or not jobs)
    try:
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                _write_clip(job)
                bar.update()
            return
        # "spawn": workers start clean (no inherited threads or locks from the caller, which
        # may be a pytest or Prefect process).
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_write_clip, jobs, chunksize=8):
                bar.update()
    finally:
        bar.close()


def _readme(cfg: DemoConfig, counts: dict[str, int]) -> str:
    return (
        "Two-event moving-shapes demo benchmark (TempMe-STOP, DESIGN section 6).\n"
        "Generated by `tempstop demo-data`; regenerate rather than edit.\n\n"
        f"seed={cfg.seed} size={cfg.size}px fps={cfg.fps} seconds={cfg.seconds} "
        f"frames={num_frames(cfg)}\n"
        + "".join(f"{s}: {n} clips ({n // 4} quadruples)\n" for s, n in counts.items())
        + "\nEach clip: object A moves during the first half, then object B during the second.\n"
        "annotations.json items also carry `quadruple` (id within the split), `variant` (0-3),\n"
        "`events` ([[colour, shape, motion], [colour, shape, motion]]) and `render`.\n"
        "No caption meaning (ordered event tuple) appears in two splits.\n"
    )


def generate_demo(out_dir: str | Path, cfg: DemoConfig | None = None, progress: bool = True) -> dict:
    """Write the demo dataset into ``out_dir/{train,val,test}/`` and return a summary.

    Idempotent: rerunning with the same params skips clips whose file exists and whose
    annotation is unchanged; other params regenerate. ``annotations.json`` of each split is
    written after its videos and ``dataset.json`` last, so a complete ``dataset.json``
    means a complete dataset.
    """
    cfg = cfg or DemoConfig()
    start = time.perf_counter()
    identity = _identity(cfg)
    units = assign_units(cfg)  # impossible sizes fail here, before anything is written
    plans = {split: plan_split(cfg, split, units[split]) for split in SPLITS}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    marker = out_dir / DATASET_FILE
    try:
        old = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    reuse = isinstance(old, dict) and {k: old.get(k) for k in identity} == identity
    if not reuse:  # other params: the folder counts as incomplete until we finish
        _refuse_foreign(out_dir, old)
        for path in [marker, *(out_dir / s / ANNOTATIONS_FILE for s in SPLITS)]:
            path.unlink(missing_ok=True)

    cfg_dict = cfg.model_dump()
    jobs, skipped = [], 0
    for split, items in plans.items():
        split_dir = out_dir / split
        videos = split_dir / VIDEOS_DIR
        videos.mkdir(parents=True, exist_ok=True)
        _remove_stale(videos, split, {it["video"] for it in items})
        existing = _reusable_items(split_dir) if reuse else {}
        for item in items:
            path = videos / item["video"]
            same = existing.get(item["video_id"]) == json.loads(json.dumps(item))
            if same and path.is_file() and path.stat().st_size > 0:
                skipped += 1
            else:
                jobs.append((item, cfg_dict, str(path)))
    log.info("demo: %d clips to write, %d up to date", len(jobs), skipped)
    _run_jobs(jobs, cfg.workers, progress)

    counts = {}
    for split, items in plans.items():
        atomic_write_json(out_dir / split / ANNOTATIONS_FILE, items)
        counts[split] = len(items)
    atomic_write_text(out_dir / "README.txt", _readme(cfg, counts))
    seconds = time.perf_counter() - start
    atomic_write_json(marker, {"datatype": "demo", **identity, "splits": counts, "frames": num_frames(cfg)})
    return {
        "clips": sum(counts.values()),
        "written": len(jobs),
        "skipped": skipped,
        "splits": counts,
        "seconds": round(seconds, 2),
    }
