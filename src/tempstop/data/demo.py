"""The demo benchmark: two-event moving shapes (docs/design.md §6).

Every clip shows object A moving during the first half and object B during the second half.
Clips come in quadruples over one object pair::

    0: A m1, then B m2          1: A rev(m1), then B rev(m2)
    2: B m2, then A m1          3: B rev(m2), then A rev(m1)

Within a quadruple the objects keep their colour, size and track, and the background keeps its
level, so the four clips hold the same *set* of frames: only their order tells them apart. A
model that ignores time sees four identical bags of frames (about 25 % R@1 at best). Each move
is continuous in time and frame ``i`` shows it at time ``i / fps``, so this also holds for the
frames a uniform sampler keeps (e.g. 8 of 32 at bin centres), not only for all frames.

Three modules: :mod:`tempstop.data.demo_plan` assigns meanings to splits (none in two splits)
and plans every clip's captions and render parameters; :mod:`tempstop.data.demo_render` draws
and encodes a planned clip; this module writes the whole dataset (idempotently) and re-exports
the public names of both.

Determinism: every random draw comes from generators seeded by (seed, split, quadruple, clip),
never by worker scheduling, so a seed gives identical annotations and identical frames.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tempstop.config import DemoConfig
from tempstop.data.annotations import ANNOTATIONS_FILE, VIDEOS_DIR, AnnotationError, read_raw
from tempstop.data.demo_plan import (
    COLOURS,
    MOTIONS,
    REVERSE,
    SHAPES,
    SPLITS,
    TEMPLATES,
    Event,
    Object,
    Unit,
    all_objects,
    all_units,
    assign_units,
    caption,
    num_frames,
    plan_split,
    quadruple_events,
)
from tempstop.data.demo_render import object_layout, render_clip, write_clip
from tempstop.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

#: Bump when the rendering or the annotation layout changes: existing outputs are regenerated.
GENERATOR_VERSION = 2
DATASET_FILE = "dataset.json"

# The plan's and the renderer's public names stay importable from here.
__all__ = [
    "COLOURS", "DATASET_FILE", "GENERATOR_VERSION", "MOTIONS", "REVERSE", "SHAPES", "SPLITS", "TEMPLATES",
    "Event", "Object", "Unit", "all_objects", "all_units", "assign_units", "caption", "generate_demo",
    "num_frames", "object_layout", "plan_split", "quadruple_events", "render_clip",
]  # fmt: skip


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
    bar = tqdm(total=len(jobs), desc="demo clips", unit="clip", disable=not progress or not jobs)
    try:
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                write_clip(job)
                bar.update()
            return
        # "spawn": workers start clean (no inherited threads or locks from the caller, which
        # may be a pytest or Prefect process).
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(write_clip, jobs, chunksize=8):
                bar.update()
    finally:
        bar.close()


def _readme(cfg: DemoConfig, counts: dict[str, int]) -> str:
    return (
        "Two-event moving-shapes demo benchmark (TempMe-STOP, docs/design.md §6).\n"
        "Generated by `tempstop demo-data`; regenerate rather than edit.\n\n"
        f"seed={cfg.seed} size={cfg.size}px fps={cfg.fps} seconds={cfg.seconds} "
        f"frames={num_frames(cfg)}\n"
        + "".join(f"{s}: {n} clips ({n // 4} quadruples)\n" for s, n in counts.items())
        + "\nEach clip: object A moves during the first half, then object B during the second.\n"
        "annotations.json items also carry `quadruple` (id within the split), `variant` (0-3),\n"
        "`events` ([[colour, shape, motion], [colour, shape, motion]]) and `render`.\n"
        "No caption meaning (ordered event tuple) appears in two splits.\n"
    )


def _open_for_writing(out_dir: Path, identity: dict[str, Any]) -> bool:
    """Whether the dataset in ``out_dir`` was made with ``identity`` (its clips can be reused).
    If not, its markers are removed first: the folder counts as incomplete until we finish."""
    marker = out_dir / DATASET_FILE
    try:
        old = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    reuse = isinstance(old, dict) and {k: old.get(k) for k in identity} == identity
    if not reuse:
        _refuse_foreign(out_dir, old)
        for path in [marker, *(out_dir / s / ANNOTATIONS_FILE for s in SPLITS)]:
            path.unlink(missing_ok=True)
    return reuse


def _clip_jobs(
    out_dir: Path, plans: dict[str, list[dict]], cfg: DemoConfig, reuse: bool
) -> tuple[list[tuple[dict, dict, str]], int]:
    """``(jobs, skipped)``: a :func:`write_clip` job per planned clip whose file is missing or
    whose annotation changed (stale clips are deleted), and the number of clips up to date."""
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
    return jobs, skipped


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
    reuse = _open_for_writing(out_dir, identity)
    jobs, skipped = _clip_jobs(out_dir, plans, cfg, reuse)
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
