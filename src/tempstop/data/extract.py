"""Frame pre-extraction: a split folder -> a :class:`~tempstop.data.store.FrameStore`.

Each video is decoded once, in a worker process with a timeout (decord can hang), into
``frames`` frames sampled uniformly in time (see :mod:`tempstop.data.video`), resized so the
short side is ``size`` and centre-cropped, and saved as ``arrays/<key>.npy``. The resize
happens inside the decoder when the container header tells the frame size (FFmpeg scales
while converting YUV to RGB, ~40 % cheaper than converting full HD frames), with Pillow as the
fallback. With ``per_segment`` a video with timestamps gives one item per caption segment,
all decoded in the same pass.

Resuming: after each video the parent appends a line to ``<store>/journal.jsonl`` (the video,
its file size and mtime, and ``num_valid`` of its items). A later run skips a video whose
journal line matches the current file and whose arrays all exist; anything else is redone.
Arrays and ``index.json`` are written atomically, and the index only at the end, so a store
with an index is always complete and an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tempstop.data.annotations import VideoRecord, read_annotations, read_raw, record_from_json, split_paths
from tempstop.data.store import (
    INDEX_FILE,
    STORE_VERSION,
    StoreError,
    array_relpath,
    is_store,
    read_index,
    remove_stale_temporaries,
    save_array,
    write_index,
)

if TYPE_CHECKING:  # worker processes import this module: keep pydantic out of their start-up
    from tempstop.config import ExtractConfig, ValidateConfig

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.jsonl"
#: Annotation problems named in the error that refuses a split (all are in the exception's count).
MAX_LISTED = 20
# Imported once by the worker pool's fork server rather than by every worker.
_WORKER_PRELOAD = ("numpy", "decord", "PIL.Image", "tempstop.data.video")


class ExtractError(RuntimeError):
    """Extraction cannot start (bad split, incompatible existing store)."""


# ---- planning -------------------------------------------------------------------------
def make_key(video_id: str) -> str:
    """A file-name-safe, collision-free key for a video id (ids stay readable when safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", video_id).strip("._") or "video"
    if safe == video_id and len(safe) <= 100:
        return safe
    # Sanitising can map two ids to one name ("a b", "a_b"): a short hash of the id keeps them apart.
    return f"{safe[:80]}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


def plan_jobs(records: list[VideoRecord], per_segment: bool) -> tuple[list[dict], list[dict]]:
    """One job per video (the file to decode and the store items it yields), and rejects.

    A repeated video id is rejected (its keys would collide); the first occurrence is kept.
    """
    jobs: list[dict] = []
    rejects: list[dict] = []
    ids: set[str] = set()
    seen: set[str] = set()  # store keys in use
    for rec in records:
        key = make_key(rec.video_id)
        if rec.video_id in ids:
            rejects.append({"video_id": rec.video_id, "file": rec.video, "reason": "duplicate video_id"})
            continue
        if per_segment and rec.timestamps:
            items = [
                {"key": f"{key}__{k}", "captions": [cap], "segment": [float(s), float(e)]}
                for k, (cap, (s, e)) in enumerate(zip(rec.captions, rec.timestamps, strict=True))
            ]
        else:
            items = [{"key": key, "captions": list(rec.captions), "segment": None}]
        keys = {key} | {it["key"] for it in items}
        if keys & seen:  # e.g. video "a__0" against segment 0 of video "a"
            reason = f"store key {sorted(keys & seen)[0]!r} is taken by another video"
            rejects.append({"video_id": rec.video_id, "file": rec.video, "reason": reason})
            continue
        seen |= keys
        ids.add(rec.video_id)
        for item in items:
            item.update(video_id=rec.video_id, file=array_relpath(item["key"]))
        jobs.append({"video_id": rec.video_id, "video": rec.video, "items": items})
    return jobs, rejects


# ---- the worker -----------------------------------------------------------------------
def extract_video(job: dict) -> dict:
    """Decode, sample, resize and save one video's items (runs in a worker process).

    ``job``: ``path`` (video file), ``store`` (store folder), ``frames``, ``size``, ``threads``,
    ``items`` (``key``, ``segment``). Returns ``{"num_valid": {key: n}}``. Sampling and
    resizing: :func:`tempstop.data.video.sample_clip`; a clip shorter than ``frames`` is
    zero-padded.
    """
    from tempstop.data.video import sample_clip

    t, s = job["frames"], job["size"]
    segments = [None if it["segment"] is None else tuple(it["segment"]) for it in job["items"]]
    clip = sample_clip(job["path"], t, s, segments, job.get("threads", 1))
    num_valid = {}
    for item, frames in zip(job["items"], clip.frames, strict=True):
        num_valid[item["key"]] = len(frames)
        if len(frames) < t:
            padded = np.zeros((t, s, s, 3), dtype=np.uint8)  # zero padding past num_valid
            padded[: len(frames)] = frames
            frames = padded
        save_array(Path(job["store"]) / array_relpath(item["key"]), frames)
    return {"num_valid": num_valid}


# ---- the journal ----------------------------------------------------------------------
def _stamp(path: Path) -> list[int]:
    """(size, mtime) of a video: a changed file is extracted again on resume."""
    from tempstop.data.video import VideoError

    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise VideoError(f"{path}: file not found")
    return [st.st_size, st.st_mtime_ns]


def _settings(cfg: ExtractConfig, frames: int) -> dict:
    return {"frames": frames, "size": cfg.size, "per_segment": cfg.per_segment}


def _load_done(store: Path, want: dict) -> tuple[dict[str, dict], dict[str, int]]:
    """What earlier runs finished: journal entries by video id, and ``num_valid`` by key
    from an existing index (trusted only when there is no journal, e.g. a copied store).

    Raises :class:`ExtractError` when the folder holds a store made with other settings
    (``want``: frames, size, per_segment).
    """
    indexed: dict[str, int] = {}
    if is_store(store):
        try:
            index = read_index(store)
        except StoreError as exc:  # a corrupt index is rebuilt, not trusted
            log.warning("ignoring existing index: %s", exc)
            index = None
        if index is not None:
            have = {"frames": index["frames"], "size": index["size"]}
            have["per_segment"] = index.get("per_segment", want["per_segment"])
            if have != want:
                raise ExtractError(f"{store}: holds a store made with {have}, not {want}; use another --out")
            indexed = {it["key"]: it["num_valid"] for it in index["items"]}
    journal = store / JOURNAL_FILE
    if not journal.is_file():
        return {}, indexed
    entries: dict[str, dict] = {}
    for n, line in enumerate(journal.read_text(encoding="utf-8").splitlines()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: that video is simply redone
        if n == 0:
            if entry.get("settings") != want:
                raise ExtractError(
                    f"{journal}: extraction was started with {entry.get('settings')}, not {want}; "
                    "use another --out"
                )
            continue
        entries[entry["video_id"]] = entry  # later lines (re-extractions) win
    return entries, {}


def _finished(
    job: dict, entries: dict[str, dict], indexed: dict[str, int], stamp: list[int], store: Path
) -> dict | None:
    """``num_valid`` by key if every item of ``job`` is already extracted, else ``None``."""
    entry = entries.get(job["video_id"])
    if entry is not None:
        if entry.get("stamp") != stamp or entry.get("video") != job["video"]:
            return None  # the video file changed since: redo
        have = entry.get("num_valid", {})
    else:
        have = indexed
    if all(it["key"] in have and (store / it["file"]).is_file() for it in job["items"]):
        return {it["key"]: have[it["key"]] for it in job["items"]}
    return None


# ---- the split ------------------------------------------------------------------------
def extract_split(
    split_dir: str | Path,
    out_dir: str | Path,
    cfg: ExtractConfig,
    frames: int,
    progress: bool = True,
    *,
    workers: int | None = None,
    datatype: str | None = None,
    annotations: str | Path | None = None,
    checks: ValidateConfig | None = None,
) -> dict:
    """Extract every video of ``split_dir`` into the frame store ``out_dir``; resumable.

    ``frames`` per video (``model.frames``). ``workers`` overrides ``cfg.workers`` (0 runs in
    this process, without timeouts); ``annotations`` reads another annotation file (e.g. a
    cleaned one written by ``tempstop validate --drop-invalid``) instead of
    ``<split>/annotations.json``. With ``checks``, the annotations first pass the annotation
    checks of ``tempstop validate`` (:func:`tempstop.data.validate.check_annotations`): an
    error refuses the split with :class:`ExtractError` naming every problem.
    Returns a summary: ``videos, done, skipped, failed, failures, items, seconds,
    videos_per_s, store``; ``failures`` lists each video that failed (``video_id, file,
    reason``).
    """
    from tempstop.data.video import VideoError, safe_video_path
    from tempstop.data.workers import map_with_timeout

    t0 = time.perf_counter()
    split_dir, store = Path(split_dir), Path(out_dir)
    ann_path = Path(annotations) if annotations else split_paths(split_dir)[0]
    if checks is not None:
        _refuse_invalid(split_dir, ann_path, checks)
    records = _read_records(split_dir, ann_path)
    jobs, failed = plan_jobs(records, cfg.per_segment)
    settings = _settings(cfg, frames)
    store.mkdir(parents=True, exist_ok=True)
    entries, indexed = _load_done(store, settings)
    remove_stale_temporaries(store)  # from a run that was killed mid-write

    todo: list[dict] = []
    finished: dict[str, int] = {}  # key -> num_valid
    for job in jobs:
        try:
            path = safe_video_path(split_dir, job["video"])
            stamp = _stamp(path)
        except (VideoError, OSError) as exc:
            failed.append({"video_id": job["video_id"], "file": job["video"], "reason": str(exc)})
            continue
        previous = _finished(job, entries, indexed, stamp, store)
        if previous is not None:
            finished.update(previous)
            continue
        # Absolute paths: workers fork from a server that keeps the working folder it started in.
        where = {"path": os.path.abspath(path), "store": os.path.abspath(store)}
        todo.append(dict(job, **where, stamp=stamp, **settings, threads=1))
    skipped = len(records) - len(todo) - len(failed)

    n_workers = cfg.workers if workers is None else workers
    n_done = 0
    t_work = time.perf_counter()
    with _Journal(store / JOURNAL_FILE, settings) as journal:
        results = map_with_timeout(
            extract_video, todo, n_workers, cfg.timeout_s, f"extract {split_dir.name}",
            progress=progress, preload=_WORKER_PRELOAD, unit="video",
        )  # fmt: skip
        for job, result in results:
            if isinstance(result, Exception):
                reason = str(result).removeprefix("VideoError: ")
                failed.append({"video_id": job["video_id"], "file": job["video"], "reason": reason})
                continue
            done = {k: job[k] for k in ("video_id", "video", "stamp")}
            journal.add(dict(done, num_valid=result["num_valid"]))
            finished.update(result["num_valid"])
            n_done += 1
    work_s = time.perf_counter() - t_work

    items = [
        dict(it, num_valid=finished[it["key"]])
        for job in jobs
        for it in job["items"]
        if it["key"] in finished
    ]
    index = {
        "version": STORE_VERSION,
        **{k: settings[k] for k in ("frames", "size", "per_segment")},
        "source": str(split_dir.resolve()),
        "annotations_sha1": _sha1(ann_path),
        "datatype": datatype,
        "items": [_ordered(it) for it in items],
        "failed": failed,
    }
    write_index(store, index)
    seconds = time.perf_counter() - t0
    return {
        "store": str(store),
        "videos": len(records),
        "done": n_done,
        "skipped": skipped,
        "failed": len(failed),
        "failures": failed,
        "items": len(items),
        "seconds": round(seconds, 3),
        "videos_per_s": round(n_done / work_s, 2) if n_done and work_s > 0 else 0.0,
    }


def _refuse_invalid(split_dir: Path, ann_path: Path, checks: ValidateConfig) -> None:
    """Raise :class:`ExtractError` naming every annotation error of the split (the first on
    the first line, the others below)."""
    from tempstop.data.validate import check_annotations, format_problem

    errors = [p for p in check_annotations(split_dir, checks, ann_path) if p["severity"] == "error"]
    if errors:
        lines = [format_problem(p) for p in errors[:MAX_LISTED]]
        if len(errors) > MAX_LISTED:
            lines.append(f"... and {len(errors) - MAX_LISTED} more (tempstop validate lists them all)")
        raise ExtractError(
            f"{ann_path}: {len(errors)} annotation error(s), not extracted: " + "\n  ".join(lines)
        )


def _read_records(split_dir: Path, ann_path: Path) -> list[VideoRecord]:
    if not split_dir.is_dir():
        raise ExtractError(f"{split_dir}: split folder not found")
    if ann_path == split_paths(split_dir)[0]:
        return read_annotations(split_dir)
    return [record_from_json(item, f"{ann_path}: item {i}") for i, item in enumerate(read_raw(ann_path))]


def _ordered(item: dict) -> dict:
    """Index items with the documented field order (readable index.json)."""
    fields = ("key", "video_id", "file", "captions", "num_valid", "segment")
    return {f: item[f] for f in fields}


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


class _Journal:
    """Append-only record of finished videos; one JSON line each, flushed at once."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path, self.settings = path, settings

    def __enter__(self) -> _Journal:
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
        if new:
            self.add({"settings": self.settings})
        return self

    def add(self, entry: dict) -> None:
        self.fh.write(json.dumps(entry) + "\n")
        self.fh.flush()

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()


# ---- raw split or store ---------------------------------------------------------------
def ensure_store(
    path: str | Path,
    cache_root: str | Path,
    cfg: ExtractConfig,
    frames: int,
    *,
    datatype: str | None = None,
    checks: ValidateConfig | None = None,
    progress: bool = True,
) -> tuple[Path, dict | None]:
    """A frame store for ``path``: the path itself if it is a store, else an extraction of it.

    A raw split folder (holding annotations.json) is extracted into
    ``cache_root/<split>-<hash of its absolute path, frames, size, per_segment>/``; an existing
    cache is reused while the split's annotations are unchanged, and completed otherwise.
    ``checks`` as in :func:`extract_split`. Returns the store and the extraction summary
    (``None`` when nothing was extracted).
    """
    path = Path(path)
    if is_store(path):
        return path, None
    ann_path, _ = split_paths(path)
    if not ann_path.is_file():
        raise ExtractError(
            f"{path}: neither a frame store ({INDEX_FILE}) nor a split folder (annotations.json)"
        )
    key = f"{path.resolve()}|{frames}|{cfg.size}|{cfg.per_segment}"
    cache = Path(cache_root) / f"{path.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if is_store(cache):
        try:
            if read_index(cache).get("annotations_sha1") == _sha1(ann_path):
                return cache, None
        except StoreError as exc:
            log.warning("rebuilding frame cache: %s", exc)
    log.info("extracting %s into the frame cache %s", path, cache)
    summary = extract_split(path, cache, cfg, frames, progress, datatype=datatype, checks=checks)
    return cache, summary
