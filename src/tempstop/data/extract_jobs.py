"""Per-video extraction jobs and the journal of finished videos.

A job is one video: the file to decode and the store items it yields (:func:`plan_jobs`);
:func:`extract_video` runs it in a worker process. Finished videos are recorded in journals,
``<store>/journal/<shard>.jsonl``: one file per shard, so shards extracted at the same time
on several machines never write to the same file. The first line of a journal holds the
settings (and the writing host and process, for whoever inspects a run); each further line a
finished video (its id, file, ``stamp`` = size and mtime, ``num_valid`` by item key, ``sha1``
of the file). ``<store>/journal.jsonl`` of stores written before shards is read as well.

Journals exist only while a store is unfinished: :func:`remove_journals` deletes them once the
index is written. They hold what differs from run to run (mtimes, host, process, the order
videos finished in, shard ids made from mtimes), and a finished store is a DVC output whose
bytes must depend on its inputs only. A finished store resumes from its index instead, which
records each video's ``sha1``: a video whose file changed since is extracted again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

import numpy as np

from tempstop.data.annotations import VideoRecord
from tempstop.data.store import array_relpath, save_array
from tempstop.data.video import VideoError, sample_clip
from tempstop.utils import file_digest

JOURNAL_FILE = "journal.jsonl"  # single journal of earlier versions (read, never written)
JOURNAL_DIR = "journal"


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


# ---- batches ---------------------------------------------------------------------------
#: Videos up to this size go to a worker several at a time: a 96x96 clip decodes in ~4 ms, and
#: each worker message costs ~0.4 ms of pickling and process wake-ups (a tenth of the work).
SMALL_VIDEO_BYTES = 1 << 20
#: At most this many videos (and 4 MiB of files) per message, so that a batch stays far
#: inside the per-video timeout and a killed batch has little to redo.
BATCH_VIDEOS = 8
BATCH_BYTES = 4 << 20


def batch_jobs(jobs: list[dict]) -> list[list[dict]]:
    """Jobs grouped for the worker pool, in order: consecutive small videos together, every
    other video alone (see :data:`SMALL_VIDEO_BYTES`). ``job["stamp"][0]`` is the file size."""
    batches: list[list[dict]] = []
    current: list[dict] = []
    size = 0
    for job in jobs:
        n = job["stamp"][0]
        if current and (n > SMALL_VIDEO_BYTES or len(current) == BATCH_VIDEOS or size + n > BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        if n > SMALL_VIDEO_BYTES:
            batches.append([job])
            continue
        current.append(job)
        size += n
    if current:
        batches.append(current)
    return batches


# ---- the worker -----------------------------------------------------------------------
def extract_video(job: dict) -> dict:
    """Decode, sample, resize and save one video's items (runs in a worker process).

    ``job``: ``path`` (video file), ``store`` (store folder), ``frames``, ``size``, ``threads``,
    ``items`` (``key``, ``segment``). Returns ``{"num_valid": {key: n}, "sha1": file digest}``.
    Sampling and resizing: :func:`tempstop.data.video.sample_clip`; a clip shorter than
    ``frames`` is zero-padded.
    """
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
    return {"num_valid": num_valid, "sha1": file_sha1(job["path"])}  # the file is in the page cache now


# ---- the journal ----------------------------------------------------------------------
def stamp(path: Path) -> list[int]:
    """(size, mtime) of a video: a changed file is extracted again on resume."""
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise VideoError(f"{path}: file not found")
    return [st.st_size, st.st_mtime_ns]


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file's bytes: what a finished store records of each video (and of the
    annotations), the same on every machine, unlike :func:`stamp`."""
    return file_digest(path, "sha1")


def journal_files(store: Path) -> list[Path]:
    """Every journal of ``store``: the single file of earlier versions first, then by shard."""
    old = [store / JOURNAL_FILE] if (store / JOURNAL_FILE).is_file() else []
    return old + sorted((store / JOURNAL_DIR).glob("*.jsonl"))


def read_journal(path: Path, want: dict) -> list[dict]:
    """The finished-video lines of one journal, in order; raises :class:`ExtractError` when
    it was started with other settings than ``want``. A line cut short by a crash is skipped
    (that video is simply redone)."""
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if n == 0:
            if entry.get("settings") != want:
                raise ExtractError(
                    f"{path}: extraction was started with {entry.get('settings')}, not {want}; use another --out"
                )
            continue
        entries.append(entry)
    return entries


def load_journals(files: list[Path], want: dict) -> dict[str, list[dict]]:
    """Journal entries by video id, oldest first (a re-extraction appends a newer one)."""
    entries: dict[str, list[dict]] = {}
    for path in files:
        for entry in read_journal(path, want):
            entries.setdefault(entry["video_id"], []).append(entry)
    return entries


def finished(job: dict, entries: dict[str, list[dict]], indexed: dict, store: Path) -> dict | None:
    """``{"num_valid": {key: n}, "sha1": digest or None}`` if every item of ``job`` (with its
    ``stamp`` and ``path``) is already extracted: from the newest journal entry for this very
    file (same name, size and mtime), or, for a video no journal holds, from the index of a
    finished store (``indexed``: ``{"num_valid": {key: n}, "sha1": {video_id: digest}}``), if
    the file still has the digest recorded there (an index without one, e.g. of an older
    version, is trusted). ``None`` when anything must be redone."""
    journalled = entries.get(job["video_id"], [])
    same = [e for e in journalled if e.get("stamp") == job["stamp"] and e.get("video") == job["video"]]
    if same:
        have, digest = same[-1].get("num_valid", {}), same[-1].get("sha1")
    elif journalled:
        return None  # journalled, but for another file (it changed since): redo
    else:
        have, digest = indexed.get("num_valid", {}), indexed.get("sha1", {}).get(job["video_id"])
    if not all(it["key"] in have and (store / it["file"]).is_file() for it in job["items"]):
        return None
    if not same and digest is not None and file_sha1(job["path"]) != digest:
        return None  # the file changed since the index was written: redo
    return {"num_valid": {it["key"]: have[it["key"]] for it in job["items"]}, "sha1": digest}


def remove_journals(store: Path) -> None:
    """Delete the journals of a store whose index is written (see the module docstring)."""
    (store / JOURNAL_FILE).unlink(missing_ok=True)
    shutil.rmtree(store / JOURNAL_DIR, ignore_errors=True)


class Journal:
    """Append-only record of one shard's finished videos; one JSON line each, flushed at once."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path, self.settings = path, settings

    def __enter__(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
        if new:
            self.add({"settings": self.settings, "host": socket.gethostname(), "pid": os.getpid()})
        return self

    def add(self, entry: dict) -> None:
        self.fh.write(json.dumps(entry) + "\n")
        self.fh.flush()

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()
