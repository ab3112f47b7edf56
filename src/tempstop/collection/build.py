"""Building a collection index: any folder of videos, or a frame store (a dataset split).

:func:`index_videos` scans a folder, decodes new or changed videos in worker processes (with
a timeout each), embeds them in batches while the workers decode the next ones, and appends
them to shards; :func:`index_store` embeds a frame store written by ``tempstop extract``.
Both end by building the vector index over the live rows and writing the manifest (layout:
:mod:`tempstop.collection.manifest`). A killed run keeps every finished shard: the next run
embeds only what is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempstop.collection import manifest as mf
from tempstop.collection.decode import decode_for_index, thumbnail_strip
from tempstop.collection.scan import FoundVideo, file_hash, scan_videos
from tempstop.utils import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSettings:
    """How a collection is indexed. ``frames``/``size``: the model's input; ``vector_index``:
    an index type for :func:`tempstop.vector_index.choose_index_spec` (None: by size)."""

    frames: int
    size: int
    shard_size: int = 1000
    batch_size: int = 32
    workers: int = 2
    timeout_s: float = 120.0
    thumb_frames: int = 4
    thumb_height: int = 72
    vector_index: str | None = None

    def recorded(self) -> dict[str, Any]:
        """What must stay the same for old rows to be reused (not workers, batch or timeout)."""
        return {k: v for k, v in asdict(self).items() if k in ("frames", "size", "thumb_frames", "thumb_height")}


class _ShardWriter:
    """Collects (entry, embedding) pairs and writes a shard, then the manifest, every
    ``shard_size`` videos, so an interrupted run loses at most one shard's worth of work."""

    def __init__(self, out: Path, manifest: dict, shard_size: int) -> None:
        self.out, self.manifest, self.shard_size = out, manifest, shard_size
        self.entries: list[dict] = []
        self.vectors: list[np.ndarray] = []

    def add(self, entries: list[dict], vectors: np.ndarray) -> None:
        self.entries += entries
        self.vectors += list(vectors)
        if len(self.entries) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        number = _next_shard_number(self.manifest)
        self.manifest["shards"].append(mf.write_shard(self.out, number, np.stack(self.vectors)))
        for row, entry in enumerate(self.entries):
            entry.update(shard=len(self.manifest["shards"]) - 1, row=row)
        self.manifest["videos"] += self.entries
        self.manifest["vector_index"] = None  # stale until the run ends
        mf.write_manifest(self.out, self.manifest)
        self.entries, self.vectors = [], []


def _next_shard_number(manifest: dict) -> int:
    numbers = [int(Path(s["file"]).stem) for s in manifest["shards"]]
    return max(numbers, default=-1) + 1


@torch.no_grad()
def _embed(model, frames: np.ndarray, masks: np.ndarray, device) -> np.ndarray:
    """``[B, T, S, S, 3]`` uint8 frames -> ``[B, D]`` float32 embeddings."""
    from tempstop.data.transforms import frames_to_tensor

    video = frames_to_tensor(torch.from_numpy(frames).to(device))  # [B, T, 3, S, S]
    return model.encode_video(video, torch.from_numpy(masks).to(device)).float().cpu().numpy()


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
    (or hangs past ``settings.timeout_s``) is listed under ``failed`` with its reason.
    """
    t0 = time.perf_counter()
    root, out = Path(root).resolve(), Path(out)
    if not root.is_dir():
        raise mf.CollectionError(f"{root}: not a folder")
    manifest = _start(out, root, "videos", model_info, settings, model.embed_dim)
    found = scan_videos(root)
    known = {v["path"]: v for v in manifest["videos"]}
    unchanged = {f.path for f in found if _same_file(known.get(f.path), f)}
    manifest["videos"] = [v for v in manifest["videos"] if v["path"] in unchanged]
    manifest["failed"] = []
    todo = [f for f in found if f.path not in unchanged]
    writer = _ShardWriter(out, manifest, settings.shard_size)
    jobs = [{"path": str(root / f.path), "found": f, "frames": settings.frames, "size": settings.size,
             "thumb_frames": settings.thumb_frames, "thumb_height": settings.thumb_height} for f in todo]  # fmt: skip
    _decode_and_embed(model, jobs, writer, settings, out, device, progress)
    writer.flush()
    summary = _finish(out, manifest, settings)
    removed = len(set(known) - {f.path for f in found})
    summary.update(found=len(found), reused=len(unchanged), embedded=len(todo) - len(manifest["failed"]),
                   removed=removed, seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    return summary


def _same_file(entry: dict | None, f: FoundVideo) -> bool:
    return entry is not None and entry["bytes"] == f.bytes and entry["mtime_ns"] == f.mtime_ns


def _decode_and_embed(model, jobs, writer, settings, out, device, progress) -> None:
    from tempstop.data.workers import WorkerError, map_with_timeout

    batch: list[tuple[dict, dict]] = []

    def embed() -> None:
        frames = np.stack([r["frames"] for _, r in batch])
        masks = np.stack([np.arange(settings.frames) < r["num_valid"] for _, r in batch])
        vectors = _embed(model, frames, masks, device)
        writer.add([_entry(job["found"], r, out) for job, r in batch], vectors)
        batch.clear()

    results = map_with_timeout(decode_for_index, jobs, settings.workers, settings.timeout_s, "index videos",
                               progress=progress, unit="video", preload=("tempstop.collection.decode",))  # fmt: skip
    for job, result in results:
        if isinstance(result, WorkerError):
            writer.manifest["failed"].append({"path": job["found"].path, "reason": str(result)})
            continue
        batch.append((job, result))
        if len(batch) >= settings.batch_size:
            embed()
    if batch:
        embed()


def _entry(f: FoundVideo, result: dict, out: Path) -> dict:
    """A manifest entry for a decoded video; writes its thumbnail."""
    vid = mf.video_id(f.path)
    thumb = f"{mf.THUMBS_DIR}/{vid}.jpg"
    atomic_write(out / thumb, lambda tmp: tmp.write_bytes(result["thumbnail"]))
    return {"id": vid, "path": f.path, "bytes": f.bytes, "mtime_ns": f.mtime_ns, "hash": result["hash"],
            **result["meta"], "frames": result["num_valid"], "thumbnail": thumb, "segment": None,
            "video_id": Path(f.path).stem}  # fmt: skip


def index_store(
    model, store, out: str | Path, settings: IndexSettings, model_info: dict, device="cpu", progress: bool = True
) -> dict:
    """Index a frame store (``tempstop extract``'s output for a split) into ``out``.

    Every item is embedded again (a store is already decoded: this is one pass of the model);
    the videos are the split's ``videos/`` files where they still exist, thumbnails are drawn
    from the stored frames.
    """
    from tempstop.training.evaluation import embed_videos

    t0 = time.perf_counter()
    out = Path(out)
    root = Path(store.source) / "videos" if getattr(store, "source", None) else Path(store.path)
    manifest = mf.new_manifest(str(root.resolve()), "store", model_info, settings.recorded(), model.embed_dim)
    (out / mf.THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    vectors = embed_videos(model, store, torch.device(device), settings.batch_size, progress=progress).numpy()
    files = _store_files(store)
    entries = []
    for i, item in enumerate(store.items):
        frames, mask = store.load(i)
        vid = mf.video_id(item["key"])
        thumb = f"{mf.THUMBS_DIR}/{vid}.jpg"
        atomic_write(out / thumb, lambda tmp, f=frames[mask]: tmp.write_bytes(
            thumbnail_strip(f, settings.thumb_frames, settings.thumb_height)))  # fmt: skip
        rel = files.get(item["video_id"], "")
        entries.append({"id": vid, "path": rel, "bytes": 0, "mtime_ns": 0,
                        "hash": file_hash(Path(store.path) / item["file"]), "duration": None, "fps": None,
                        "width": None, "height": None, "frames": int(mask.sum()), "thumbnail": thumb,
                        "segment": item.get("segment"), "video_id": item["video_id"]})  # fmt: skip
    writer = _ShardWriter(out, manifest, settings.shard_size)
    for start in range(0, len(entries), settings.shard_size):
        writer.add(entries[start : start + settings.shard_size], vectors[start : start + settings.shard_size])
    writer.flush()
    summary = _finish(out, manifest, settings)
    summary.update(found=len(entries), reused=0, embedded=len(entries), removed=0,
                   seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    return summary


def _store_files(store) -> dict[str, str]:
    """video_id -> the video's path under the split's ``videos/`` (from its annotations)."""
    from tempstop.data.annotations import read_annotations

    source = getattr(store, "source", None)
    if not source or not (Path(source) / "annotations.json").is_file():
        return {}
    try:
        records = read_annotations(Path(source) / "annotations.json")
    except Exception:  # the split moved on since extraction: videos are then not served
        return {}
    return {r.video_id: r.video for r in records}


def _finish(out: Path, manifest: dict, settings: IndexSettings) -> dict:
    """Sort, compact, build the vector index over the live rows, write the manifest last."""
    from tempstop import vector_index as vi

    manifest["videos"].sort(key=lambda v: (v["path"], v["id"]))
    _compact(out, manifest, settings.shard_size)
    referenced = {v["thumbnail"] for v in manifest["videos"]}
    for thumb in (out / mf.THUMBS_DIR).glob("*.jpg"):  # of deleted or changed videos
        if f"{mf.THUMBS_DIR}/{thumb.name}" not in referenced:
            thumb.unlink(missing_ok=True)
    vectors = mf.live_embeddings(out, manifest)
    if len(vectors) == 0:  # nothing indexed (yet): a valid, empty index
        (out / mf.VECTORS_FILE).unlink(missing_ok=True)
        manifest["vector_index"] = {"file": None, "rows": 0, "spec": None, "describe": None}
    else:
        spec = vi.choose_index_spec(len(vectors), manifest["dim"], settings.vector_index)
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
    first = _next_shard_number(manifest)
    manifest["shards"] = []
    for k, start in enumerate(range(0, len(vectors), shard_size)):
        manifest["shards"].append(mf.write_shard(out, first + k, vectors[start : start + shard_size]))
    for i, v in enumerate(manifest["videos"]):
        v["shard"], v["row"] = divmod(i, shard_size)
    mf.write_manifest(out, manifest)
    for path in old:
        path.unlink(missing_ok=True)
