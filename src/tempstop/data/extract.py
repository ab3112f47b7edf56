"""Frame pre-extraction: a split folder -> a :class:`~tempstop.data.store.FrameStore`.

Each video is decoded once, in a worker process with a timeout (decord can hang), into
``frames`` frames sampled uniformly in time (see :mod:`tempstop.data.video`), resized so the
short side is ``size`` and centre-cropped, and saved as ``arrays/<key>.npy``. The resize
happens inside the decoder when the container header tells the frame size (FFmpeg scales
while converting YUV to RGB, ~40 % cheaper than converting full HD frames), with Pillow as the
fallback. With ``per_segment`` a video with timestamps gives one item per caption segment,
all decoded in the same pass.

A split is extracted in three steps that take and give paths and small dicts, never arrays,
so they run the same way in this process and as tasks on a cluster
(``tempstop_pipelines.flows.extract``): :func:`plan_split` (what is left to do, cut into
shards of ``shard_size`` videos), :func:`extract_shard` (one shard, in worker processes) and
:func:`finish_split` (the index). :func:`extract_split` runs them one after the other.

Resuming: each shard appends a line per finished video to its journal
(:mod:`tempstop.data.extract_jobs`). A later run, or a retry of the shard, skips a video whose
journal line matches the current file and whose arrays all exist; anything else is redone.
Arrays and ``index.json`` are written atomically, and the index only at the end, so a store
with an index is always complete and an interrupted run leaves nothing half-written.

Reproducible: a finished store (a DVC output) holds only what follows from its inputs, so two
runs on the same split write the same bytes on any machine. The journals are deleted once the
index is written (a rerun skips what the index holds, checking each file's ``sha1``), the
index names its split relative to the store and failed videos relative to the split, and its
lists are in annotation order whatever order the work finished in. Timings are only in the
returned summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tempstop.config import ExtractConfig, ValidateConfig
from tempstop.data.annotations import VideoRecord, read_annotations, read_raw, record_from_json, split_paths
from tempstop.data.extract_jobs import (
    JOURNAL_DIR,
    ExtractError,
    Journal,
    batch_jobs,
    extract_video,
    file_sha1,
    finished,
    journal_files,
    load_journals,
    make_key,
    plan_jobs,
    remove_journals,
    stamp,
)
from tempstop.data.store import (
    INDEX_FILE,
    STORE_VERSION,
    StoreError,
    is_store,
    read_index,
    remove_stale_temporaries,
    write_index,
)
from tempstop.data.validate import check_annotations, format_problem
from tempstop.data.video import VideoError, safe_video_path
from tempstop.data.workers import map_batched

__all__ = ["ExtractError", "SplitPlan", "extract_shard", "extract_split", "extract_video",
           "finish_split", "make_key", "plan_jobs", "plan_split"]  # fmt: skip

log = logging.getLogger(__name__)

#: Annotation problems named in the error that refuses a split (all are in the exception's count).
MAX_LISTED = 20
# Imported once by the worker pool's fork server rather than by every worker (the workers run
# tempstop.data.extract_jobs.extract_video: they never import this module).
_WORKER_PRELOAD = ("numpy", "decord", "PIL.Image", "tempstop.data.video")


# ---- plan -----------------------------------------------------------------------------
@dataclass
class SplitPlan:
    """What :func:`plan_split` found: every planned video (``jobs``, annotation order), the
    items earlier runs finished (``finished``: key -> num_valid, ``sha1``: video id -> file
    digest), the videos refused (``failed``), and ``shards`` of the videos left to do
    (``{"id", "jobs"}``; a job holds absolute paths, its file ``stamp`` and the settings, all
    a worker needs)."""

    split_dir: str
    store: str
    annotations: str
    datatype: str | None
    settings: dict
    videos: int
    jobs: list[dict]
    failed: list[dict]
    finished: dict[str, int]
    shards: list[dict]
    sha1: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)  # clock of the planning process
    planned: float = field(default_factory=time.perf_counter)  # planning done, extraction starts

    def to_dict(self) -> dict:
        return asdict(self)


def plan_split(
    split_dir: str | Path,
    out_dir: str | Path,
    cfg: ExtractConfig,
    frames: int,
    *,
    shard_size: int = 1000,
    datatype: str | None = None,
    annotations: str | Path | None = None,
    checks: ValidateConfig | None = None,
) -> SplitPlan:
    """Read the split, check it (``checks``: see :func:`extract_split`), find what earlier
    runs finished and cut the rest into shards of ``shard_size`` videos. A shard's id is a
    hash of its videos (file, size, mtime) and the settings."""
    t0 = time.perf_counter()
    split_dir, store = Path(os.path.abspath(split_dir)), Path(os.path.abspath(out_dir))
    ann_path = Path(annotations) if annotations else split_paths(split_dir)[0]
    if checks is not None:
        _refuse_invalid(split_dir, ann_path, checks)
    records = _read_records(split_dir, ann_path)
    jobs, failed = plan_jobs(records, cfg.per_segment)
    settings = {"frames": frames, "size": cfg.size, "per_segment": cfg.per_segment}
    store.mkdir(parents=True, exist_ok=True)
    indexed = _indexed(store, settings)
    entries = load_journals(journal_files(store), settings)
    remove_stale_temporaries(store)  # from a run that was killed mid-write

    todo, done, digests = [], {}, {}
    for job in jobs:
        try:
            path = safe_video_path(split_dir, job["video"])
            job["stamp"] = stamp(path)
        except (VideoError, OSError) as exc:
            failed.append({"video_id": job["video_id"], "file": job["video"], "reason": str(exc)})
            continue
        work = dict(job, path=str(path), store=str(store), **settings, threads=1)
        previous = finished(work, entries, indexed, store)
        if previous is None:
            todo.append(work)
            continue
        done.update(previous["num_valid"])
        if previous["sha1"]:
            digests[job["video_id"]] = previous["sha1"]
    shards = [_shard(todo[i : i + shard_size], settings) for i in range(0, len(todo), max(1, shard_size))]
    return SplitPlan(str(split_dir), str(store), str(ann_path), datatype, settings, len(records),
                     jobs, failed, done, shards, sha1=digests, started=t0, planned=time.perf_counter())  # fmt: skip


def _shard(jobs: list[dict], settings: dict) -> dict:
    key = json.dumps([settings, [(j["video_id"], j["video"], j["stamp"]) for j in jobs]]).encode()
    return {"id": hashlib.sha1(key).hexdigest()[:16], "jobs": jobs}


def _indexed(store: Path, want: dict) -> dict:
    """``{"num_valid": {key: n}, "sha1": {video_id: digest}}`` from an existing index (for the
    videos no journal holds: see :func:`~tempstop.data.extract_jobs.finished`);
    :class:`ExtractError` when it was made with other settings."""
    if not is_store(store):
        return {}
    try:
        index = read_index(store)
    except StoreError as exc:  # a corrupt index is rebuilt, not trusted
        log.warning("ignoring existing index: %s", exc)
        return {}
    have = {
        "frames": index["frames"],
        "size": index["size"],
        "per_segment": index.get("per_segment", want["per_segment"]),
    }
    if have != want:
        raise ExtractError(f"{store}: holds a store made with {have}, not {want}; use another --out")
    return {
        "num_valid": {it["key"]: it["num_valid"] for it in index["items"]},
        "sha1": index.get("video_sha1", {}),
    }


# ---- one shard --------------------------------------------------------------------------
def extract_shard(
    shard: dict, workers: int = 1, timeout_s: float | None = 120.0, *, progress: bool = False, desc: str = ""
) -> dict:
    """Extract one shard's videos in ``workers`` processes (0: in this process, no timeout),
    each recorded in the shard's journal as it finishes; a video already there (an earlier
    attempt of this shard) is skipped. Returns ``{"id", "done", "num_valid": {key: n},
    "sha1": {video_id: file digest}, "failed": [{"video_id", "file", "reason"}]}``."""
    jobs = shard["jobs"]
    if not jobs:
        return {"id": shard["id"], "done": 0, "num_valid": {}, "sha1": {}, "failed": []}
    store = Path(jobs[0]["store"])
    settings = {k: jobs[0][k] for k in ("frames", "size", "per_segment")}
    path = store / JOURNAL_DIR / f"{shard['id']}.jsonl"
    entries = load_journals([path] if path.is_file() else [], settings)
    num_valid: dict[str, int] = {}
    digests: dict[str, str] = {}
    todo = []
    for job in jobs:
        previous = finished(job, entries, {}, store) if entries else None
        if previous is None:
            todo.append(job)
            continue
        num_valid.update(previous["num_valid"])
        if previous["sha1"]:
            digests[job["video_id"]] = previous["sha1"]
    failed = []
    with Journal(path, settings) as journal:
        # Small clips travel to the workers a few at a time (batch_jobs); a batch that times out
        # or crashes is redone video by video, so only the culprit is reported.
        results = map_batched(extract_video, batch_jobs(todo), workers, timeout_s, desc or f"extract shard {shard['id'][:8]}",
                              progress=progress, preload=_WORKER_PRELOAD, unit="video")  # fmt: skip
        for job, result in results:
            if isinstance(result, Exception):
                reason = str(result).removeprefix("VideoError: ")
                failed.append({"video_id": job["video_id"], "file": job["video"], "reason": reason})
                continue
            journal.add(
                {k: job[k] for k in ("video_id", "video", "stamp")}
                | {k: result[k] for k in ("num_valid", "sha1")}
            )
            num_valid.update(result["num_valid"])
            digests[job["video_id"]] = result["sha1"]
    return {"id": shard["id"], "done": len(jobs) - len(failed), "num_valid": num_valid, "sha1": digests,
            "failed": failed}  # fmt: skip


# ---- finish -----------------------------------------------------------------------------
def finish_split(plan: SplitPlan | dict, results: list[dict]) -> dict:
    """Write the index of ``plan``'s store from its shards' ``results`` (any order) and delete
    its journals; returns the summary of :func:`extract_split`. Items, failures and digests
    are in annotation order, so the index does not depend on how the work was cut or ordered."""
    plan = plan if isinstance(plan, SplitPlan) else SplitPlan(**plan)
    store = Path(plan.store)
    by_id = {r["id"]: r for r in results}
    missing = [s["id"] for s in plan.shards if s["id"] not in by_id]
    if missing:
        raise ExtractError(f"{store}: shard(s) {', '.join(missing)} have no result; the index is not written")
    done, digests, failed = dict(plan.finished), dict(plan.sha1), []
    for shard in plan.shards:
        done.update(by_id[shard["id"]]["num_valid"])
        digests.update(by_id[shard["id"]].get("sha1", {}))
        failed += by_id[shard["id"]]["failed"]
    order = {job["video_id"]: i for i, job in enumerate(plan.jobs)}
    failed = [dict(f, reason=_relative(f["reason"], plan.split_dir)) for f in
              plan.failed + sorted(failed, key=lambda f: order.get(f["video_id"], len(order)))]  # fmt: skip
    remove_stale_temporaries(store)  # left by a worker that died mid-write
    items = [
        dict(it, num_valid=done[it["key"]]) for job in plan.jobs for it in job["items"] if it["key"] in done
    ]
    split = Path(plan.split_dir).resolve()
    index = {
        "version": STORE_VERSION,
        **plan.settings,
        "source": Path(os.path.relpath(split, store.resolve())).as_posix(),  # FrameStore.source: absolute
        "annotations_sha1": file_sha1(Path(plan.annotations)),
        "datatype": plan.datatype,
        "items": [_ordered(it) for it in items],
        "failed": failed,
        "video_sha1": {
            job["video_id"]: digests[job["video_id"]] for job in plan.jobs if job["video_id"] in digests
        },
    }
    write_index(store, index)
    remove_journals(store)  # the index holds all a rerun needs; journals differ from run to run
    now = time.perf_counter()
    seconds, work_s = now - plan.started, now - plan.planned
    n_done = sum(by_id[s["id"]]["done"] for s in plan.shards)
    todo = sum(len(s["jobs"]) for s in plan.shards)
    return {
        "store": str(store),
        "videos": plan.videos,
        "done": n_done,
        "skipped": plan.videos - todo - (len(plan.failed)),
        "failed": len(failed),
        "failures": failed,
        "items": len(items),
        "shards": len(plan.shards),
        "seconds": round(seconds, 3),
        "videos_per_s": round(n_done / work_s, 2) if n_done and work_s > 0 else 0.0,
    }


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
    shard_size: int | None = None,
) -> dict:
    """Extract every video of ``split_dir`` into the frame store ``out_dir``; resumable.

    ``frames`` per video (``model.frames``). ``workers`` overrides ``cfg.workers`` (0 runs in
    this process, without timeouts); ``shard_size`` overrides ``cfg.shard_size``;
    ``annotations`` reads another annotation file (e.g. a cleaned one written by ``tempstop
    validate --drop-invalid``) instead of ``<split>/annotations.json``. With ``checks``, the
    annotations first pass the annotation checks of ``tempstop validate``
    (:func:`tempstop.data.validate.check_annotations`): an error refuses the split with
    :class:`ExtractError` naming every problem. :func:`plan_split`, then
    :func:`extract_shard` for each shard here, then :func:`finish_split`.
    Returns a summary: ``videos, done, skipped, failed, failures, items, shards, seconds,
    videos_per_s, store``; ``failures`` lists each video that failed (``video_id, file,
    reason``).
    """
    plan = plan_split(split_dir, out_dir, cfg, frames, shard_size=shard_size or cfg.shard_size, datatype=datatype,
                      annotations=annotations, checks=checks)  # fmt: skip
    n_workers = cfg.workers if workers is None else workers
    name = Path(plan.split_dir).name
    results = [
        extract_shard(shard, n_workers, cfg.timeout_s, progress=progress,
                      desc=f"extract {name}" + (f" [{i + 1}/{len(plan.shards)}]" if len(plan.shards) > 1 else ""))
        for i, shard in enumerate(plan.shards)
    ]  # fmt: skip
    return finish_split(plan, results)


def _refuse_invalid(split_dir: Path, ann_path: Path, checks: ValidateConfig) -> None:
    """Raise :class:`ExtractError` naming every annotation error of the split (the first on
    the first line, the others below)."""
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


def _relative(reason: str, split_dir: str) -> str:
    """A failure reason with the split's absolute path cut from the file names it holds
    (``videos/x.mp4: file not found``): the index must not name the machine's folders."""
    return reason.replace(split_dir.rstrip(os.sep) + os.sep, "")
