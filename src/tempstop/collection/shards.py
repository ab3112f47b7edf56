"""A collection is indexed in shards: plan them, decode one, embed one, merge it.

The three steps take and give paths, never arrays, so they run the same way in this process,
in worker processes or as tasks on a Ray cluster (``tempstop_pipelines.flows.index_ray``):

- :func:`plan_shards` cuts the videos to embed into shards of ``shard_size``; a shard's id is
  a hash of its videos (path, size, mtime), the model and the settings, so a re-run plans the
  same shards and finds the work already done;
- :func:`decode_shard` (CPU) samples every video's frames in worker processes with a timeout,
  writes ``work/<id>/frames.npy`` and ``decoded.json`` (metadata, failures) and the thumbnails;
- :func:`embed_shard` (GPU where there is one) embeds the decoded frames into
  ``shards/<id>.npy`` and writes ``work/<id>/part.json``, the shard's part of the manifest.

A step whose output exists is skipped: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tempstop.collection import manifest as mf
from tempstop.collection.decode import decode_for_index
from tempstop.collection.scan import FoundVideo
from tempstop.data.transforms import frames_to_tensor
from tempstop.data.workers import WorkerError, map_with_timeout
from tempstop.utils import atomic_write, atomic_write_json

WORK_DIR = "work"


@dataclass(frozen=True)
class ShardJob:
    """The videos of one shard (``path``, ``bytes``, ``mtime_ns`` each) and its id."""

    id: str
    videos: tuple[dict, ...]


def plan_shards(todo: list[FoundVideo], shard_size: int, model_sha: str, settings: dict) -> list[ShardJob]:
    """Shards of at most ``shard_size`` videos, in path order; ids stable across runs."""
    jobs = []
    for start in range(0, len(todo), shard_size):
        videos = tuple({"path": f.path, "bytes": f.bytes, "mtime_ns": f.mtime_ns} for f in todo[start : start + shard_size])
        key = json.dumps([model_sha, settings, videos], sort_keys=True).encode()
        jobs.append(ShardJob(hashlib.sha1(key).hexdigest()[:16], videos))
    return jobs


def work_dir(out: str | Path, shard: str) -> Path:
    return Path(out) / WORK_DIR / shard


def decode_shard(
    root: str | Path, job: ShardJob, settings: dict, out: str | Path, workers: int = 2, timeout_s: float = 120.0,
    progress: bool = False,
) -> Path:  # fmt: skip
    """Decode the shard's videos (``settings``: ``frames``, ``size``, ``thumb_frames``,
    ``thumb_height``); returns ``work/<id>/decoded.json`` (written last)."""
    work = work_dir(out, job.id)
    done = work / "decoded.json"
    if done.is_file():
        return done
    work.mkdir(parents=True, exist_ok=True)
    (Path(out) / mf.THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [{"path": str(Path(root) / v["path"]), "video": v, **settings} for v in job.videos]
    order = {v["path"]: i for i, v in enumerate(job.videos)}
    decoded, failed = [], []
    results = map_with_timeout(decode_for_index, jobs, workers, timeout_s, f"decode shard {job.id[:8]}",
                               progress=progress, unit="video", preload=("tempstop.collection.decode",))  # fmt: skip
    for task, result in results:
        video = task["video"]
        if isinstance(result, WorkerError):
            failed.append({"path": video["path"], "reason": str(result)})
        else:
            decoded.append((order[video["path"]], _entry(video, result, out), result["frames"]))
    decoded.sort(key=lambda d: d[0])  # completion order -> path order
    frames = np.stack([d[2] for d in decoded]) if decoded else np.zeros((0,), np.uint8)
    atomic_write(work / "frames.npy", lambda tmp: np.save(tmp.open("wb"), frames))
    atomic_write_json(done, {"videos": [d[1] for d in decoded], "failed": sorted(failed, key=lambda f: f["path"])})
    return done


def _entry(video: dict, result: dict, out: str | Path) -> dict:
    """A manifest entry for a decoded video; writes its thumbnail."""
    vid = mf.video_id(video["path"])
    thumb = f"{mf.THUMBS_DIR}/{vid}.jpg"
    atomic_write(Path(out) / thumb, lambda tmp: tmp.write_bytes(result["thumbnail"]))
    return {"id": vid, **video, "hash": result["hash"], **result["meta"], "frames": result["num_valid"],
            "thumbnail": thumb, "segment": None, "video_id": Path(video["path"]).stem}  # fmt: skip


@torch.no_grad()
def _embed(model, frames: np.ndarray, masks: np.ndarray, device) -> np.ndarray:
    """``[B, T, S, S, 3]`` uint8 frames -> ``[B, D]`` float32 embeddings."""
    video = frames_to_tensor(torch.from_numpy(np.array(frames)).to(device))  # a copy: shards are memory-mapped  # [B, T, 3, S, S]
    return model.encode_video(video, torch.from_numpy(masks).to(device)).float().cpu().numpy()


def embed_shard(model, out: str | Path, shard: str, batch_size: int = 32, device="cpu") -> dict:
    """Embed a decoded shard into ``shards/<id>.npy``; returns (and writes) its manifest part
    ``{"shard": {"file", "rows"} | None, "videos": [...], "failed": [...]}``."""
    work = work_dir(out, shard)
    part_file = work / "part.json"
    if part_file.is_file():
        return json.loads(part_file.read_text())
    decoded = json.loads((work / "decoded.json").read_text())
    videos = decoded["videos"]
    entry = None
    if videos:
        frames = np.load(work / "frames.npy", mmap_mode="r")  # [n, T, S, S, 3]
        t = frames.shape[1]
        vectors = []
        for start in range(0, len(videos), batch_size):
            chunk = videos[start : start + batch_size]
            masks = np.stack([np.arange(t) < v["frames"] for v in chunk])
            vectors.append(_embed(model, frames[start : start + len(chunk)], masks, device))
        entry = mf.write_shard(out, shard, np.concatenate(vectors))
    part = {"shard": entry, "videos": videos, "failed": decoded["failed"]}
    atomic_write_json(part_file, part)
    (work / "frames.npy").unlink(missing_ok=True)  # the embeddings are what stays
    return part


def merge_part(manifest: dict, part: dict) -> None:
    """Append a shard's part to the manifest (its videos point at the new shard's rows)."""
    if part["shard"] is not None:
        manifest["shards"].append(part["shard"])
        number = len(manifest["shards"]) - 1
        manifest["videos"] += [{**v, "shard": number, "row": row} for row, v in enumerate(part["videos"])]
    manifest["failed"] += part["failed"]
