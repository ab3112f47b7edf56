"""Building a collection index: any folder of videos, or a frame store (a dataset split).

:func:`index_videos` scans a folder, decodes new or changed videos in worker processes (with
a timeout each), embeds them in batches while the workers decode the next ones, and appends
them to shards; :func:`index_store` embeds a frame store written by ``tempstop extract``.
Both end by building the vector index over the live rows and writing the manifest (layout:
:mod:`tempstop.collection.manifest`). A killed run keeps every finished shard: the next run
embeds only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempstop import vector_index as vi
from tempstop.collection import manifest as mf
from tempstop.collection import shards
from tempstop.collection.decode import thumbnail_strip
from tempstop.collection.scan import FoundVideo, file_hash, scan_videos
from tempstop.config import IndexConfig
from tempstop.data.annotations import read_annotations
from tempstop.inference.embed import embed_videos, model_input
from tempstop.utils import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSettings:
    """How a collection is indexed: the model's input (``frames`` per video of ``size`` px)
    and the ``index`` section of the config (shards, batches, workers, vector index...)."""

    frames: int
    size: int
    index: IndexConfig = field(default_factory=IndexConfig)

    @classmethod
    def for_model(cls, model, index: IndexConfig) -> IndexSettings:
        """The settings that feed ``model`` the frames it was trained on (its frame count and
        frame size: ``model.num_frames``, ``model.image_size``)."""
        frames, size = model_input(model)
        if frames is None or size is None:
            raise mf.CollectionError("the model does not say its frame count and size; cannot index with it")
        return cls(frames, size, index)

    def recorded(self) -> dict[str, Any]:
        """What must stay the same for old rows to be reused (not workers, batch or timeout)."""
        return {"frames": self.frames, "size": self.size, "thumb_frames": self.index.thumb_frames,
                "thumb_height": self.index.thumb_height}  # fmt: skip


def _start(out: Path, root: Path, source: str, model_info: dict, settings: IndexSettings, dim: int) -> dict:
    """The existing manifest when it was built the same way (same model, settings and root),
    else a new one (everything is embedded again)."""
    if mf.is_collection(out):
        old = mf.read_manifest(out)
        same = (
            old["model"].get("sha256") == model_info.get("sha256")
            and old["settings"] == settings.recorded()
            and old["root"] == str(root)
            and old["source"] == source
        )
        if same:
            return old
        log.info("%s: built with another model, settings or root; indexing everything again", out)
    (out / mf.THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    return mf.new_manifest(str(root), source, model_info, settings.recorded(), dim)


def index_videos(
    model, root: str | Path, out: str | Path, settings: IndexSettings, model_info: dict, device="cpu",
    progress: bool = True,
) -> dict:  # fmt: skip
    """Index every video under ``root`` into ``out``; returns a summary dict.

    Incremental: a video whose size and modification time are unchanged keeps its row;
    new and changed videos are embedded, deleted ones dropped. A video that fails to decode
    (or hangs past ``index.timeout_s``) is listed under ``failed`` with its reason.
    """
    t0 = time.perf_counter()
    root, out = Path(root).resolve(), Path(out)
    if not root.is_dir():
        raise mf.CollectionError(f"{root}: not a folder")
    manifest, todo, known, found = plan_update(root, out, settings, model_info, model.embed_dim)
    opts = settings.index
    jobs = shards.plan_shards(todo, opts.shard_size, model_info.get("sha256", ""), settings.recorded())
    decode = partial(shards.decode_shard, root, settings=settings.recorded(), out=out, workers=opts.workers,
                     timeout_s=opts.timeout_s, progress=progress)  # fmt: skip
    pool = ThreadPoolExecutor(1)  # the next shard decodes while this one is embedded
    try:
        pending = pool.submit(decode, jobs[0]) if jobs else None
        for i, job in enumerate(jobs):
            pending.result()
            if i + 1 < len(jobs):
                pending = pool.submit(decode, jobs[i + 1])
            shards.merge_part(manifest, shards.embed_shard(model, out, job.id, opts.batch_size, device))
            manifest["vector_index"] = None  # stale until the run ends
            mf.write_manifest(out, manifest)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return counted(finish(out, manifest, settings), found, todo, known, t0)


def counted(summary: dict, found: list, todo: list, known: dict, t0: float) -> dict:
    """``summary`` with what a run found, reused, embedded and removed, and its seconds."""
    summary.update(found=len(found), reused=len(found) - len(todo), embedded=len(todo) - len(summary["failed"]),
                   removed=len(set(known) - {f.path for f in found}), seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    return summary


def plan_update(root: Path, out: Path, settings: IndexSettings, model_info: dict, dim: int):
    """The manifest to continue (unchanged videos only), the videos to embed, the videos the
    manifest knew and the videos found now."""
    manifest = _start(out, root, "videos", model_info, settings, dim)
    found = scan_videos(root)
    known = {v["path"]: v for v in manifest["videos"]}
    unchanged = {f.path for f in found if _same_file(known.get(f.path), f)}
    manifest["videos"] = [v for v in manifest["videos"] if v["path"] in unchanged]
    manifest["failed"] = []
    return manifest, [f for f in found if f.path not in unchanged], known, found


def _same_file(entry: dict | None, f: FoundVideo) -> bool:
    return entry is not None and entry["bytes"] == f.bytes and entry["mtime_ns"] == f.mtime_ns


def index_store(
    model, store, out: str | Path, settings: IndexSettings, model_info: dict, device="cpu", progress: bool = True
) -> dict:
    """Index a frame store (``tempstop extract``'s output for a split) into ``out``.

    Every item is embedded again (a store is already decoded: this is one pass of the model);
    the videos are the split's ``videos/`` files where they still exist, thumbnails are drawn
    from the stored frames.
    """
    t0, opts = time.perf_counter(), settings.index
    out = Path(out)
    root = Path(store.source) / "videos" if getattr(store, "source", None) else Path(store.path)
    manifest = mf.new_manifest(str(root.resolve()), "store", model_info, settings.recorded(), model.embed_dim)
    (out / mf.THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    vectors = embed_videos(model, store, torch.device(device), opts.batch_size, progress=progress).numpy()
    files = _store_files(store)
    entries = []
    for i, item in enumerate(store.items):
        frames, mask = store.load(i)
        vid = mf.video_id(item["key"])
        thumb = f"{mf.THUMBS_DIR}/{vid}.jpg"
        atomic_write(out / thumb, lambda tmp, f=frames[mask]: tmp.write_bytes(
            thumbnail_strip(f, opts.thumb_frames, opts.thumb_height)))  # fmt: skip
        rel = files.get(item["video_id"], "")
        entries.append({"id": vid, "path": rel, "bytes": 0, "mtime_ns": 0,
                        "hash": file_hash(Path(store.path) / item["file"]), "duration": None, "fps": None,
                        "width": None, "height": None, "frames": int(mask.sum()), "thumbnail": thumb,
                        "segment": item.get("segment"), "video_id": item["video_id"]})  # fmt: skip
    for start in range(0, len(entries), opts.shard_size):
        chunk = vectors[start : start + opts.shard_size]
        name = hashlib.sha1(json.dumps([e["id"] for e in entries[start : start + len(chunk)]]).encode()).hexdigest()[:16]
        shard = mf.write_shard(out, name, chunk)
        shards.merge_part(manifest, {"shard": shard, "videos": entries[start : start + len(chunk)], "failed": []})
    summary = finish(out, manifest, settings)
    summary.update(found=len(entries), reused=0, embedded=len(entries), removed=0,
                   seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    return summary


def _store_files(store) -> dict[str, str]:
    """video_id -> the video's path under the split's ``videos/`` (from its annotations)."""
    source = getattr(store, "source", None)
    if not source or not (Path(source) / "annotations.json").is_file():
        return {}
    try:
        records = read_annotations(Path(source))
    except Exception:  # the split moved on since extraction: videos are then not served
        return {}
    return {r.video_id: r.video for r in records}


def finish(out: Path, manifest: dict, settings: IndexSettings) -> dict:
    """Sort, compact, build the vector index over the live rows, write the manifest last;
    the shards' work folders are removed (everything in them is merged)."""
    manifest["videos"].sort(key=lambda v: (v["path"], v.get("video_id") or "", v["id"]))
    _compact(out, manifest, settings.index.shard_size)
    shutil.rmtree(out / shards.WORK_DIR, ignore_errors=True)
    referenced = {v["thumbnail"] for v in manifest["videos"]}
    for thumb in (out / mf.THUMBS_DIR).glob("*.jpg"):  # of deleted or changed videos
        if f"{mf.THUMBS_DIR}/{thumb.name}" not in referenced:
            thumb.unlink(missing_ok=True)
    vectors = mf.live_embeddings(out, manifest)
    if len(vectors) == 0:  # nothing indexed (yet): a valid, empty index
        (out / mf.VECTORS_FILE).unlink(missing_ok=True)
        manifest["vector_index"] = {"file": None, "rows": 0, "spec": None, "describe": None}
    else:
        spec = vi.choose_index_spec(len(vectors), manifest["dim"], settings.index.vector_index)
        index = vi.build_index(vectors, np.arange(len(vectors), dtype=np.int64), spec)
        vi.save_index(index, out / mf.VECTORS_FILE)
        manifest["vector_index"] = {"file": mf.VECTORS_FILE, "rows": len(vectors), "spec": spec.to_dict(),
                                    "describe": vi.describe(index)}  # fmt: skip
    mf.write_manifest(out, manifest)
    return {"videos": len(manifest["videos"]), "failed": list(manifest["failed"]), "index": str(out),
            "vector_index": manifest["vector_index"]["describe"]}  # fmt: skip


def _compact(out: Path, manifest: dict, shard_size: int) -> None:
    """Rewrite the live rows into fresh shards when dead rows outnumber them."""
    total = sum(s["rows"] for s in manifest["shards"])
    if total <= 2 * len(manifest["videos"]):
        return
    vectors = mf.live_embeddings(out, manifest)
    old = [out / s["file"] for s in manifest["shards"]]
    manifest["shards"] = []
    for start in range(0, len(vectors), shard_size):
        ids = [v["id"] for v in manifest["videos"][start : start + shard_size]]
        name = "c" + hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:15]
        manifest["shards"].append(mf.write_shard(out, name, vectors[start : start + shard_size]))
    for i, v in enumerate(manifest["videos"]):
        v["shard"], v["row"] = divmod(i, shard_size)
    mf.write_manifest(out, manifest)
    kept = {out / s["file"] for s in manifest["shards"]}
    for path in old:
        if path not in kept:
            path.unlink(missing_ok=True)
