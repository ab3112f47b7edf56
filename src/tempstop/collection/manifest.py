"""The on-disk layout of a video collection index, and reading / writing it.

::

    INDEX/manifest.json          what is indexed and how (written last, atomically)
    INDEX/shards/<id>.npy        float16 [rows, D] L2-normalised video embeddings, one per shard
    INDEX/thumbs/<id>.jpg        a keyframe strip per video
    INDEX/vectors.faiss          the vector index over the live rows (ids = manifest video rows)

``manifest.json``::

    {"format": "tempstop-collection/1", "root": "<collection folder>", "source": "videos" | "store",
     "model": {...model identity...}, "settings": {...}, "dim": D,
     "shards": [{"file": "shards/<id>.npy", "rows": n}],
     "videos": [{"id", "path", "bytes", "mtime_ns", "hash", "duration", "fps", "width", "height",
                 "frames", "shard", "row", "thumbnail", "segment", "video_id"}],
     "failed": [{"path", "reason"}], "collection_hash", "vector_index": {...}}

A shard is never rewritten: a changed or deleted video only leaves its old row unused, so a
killed run keeps every finished shard, and a re-run embeds only what is new. Rows that no
video points at are compacted away when they outnumber the live ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from tempstop.utils import atomic_write, atomic_write_json

FORMAT = "tempstop-collection/1"
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
THUMBS_DIR = "thumbs"
VECTORS_FILE = "vectors.faiss"
#: A versioned index root (several collection indexes, one per model) names the live one here.
CURRENT = "CURRENT"


class CollectionError(ValueError):
    """A collection index is missing, inconsistent, or does not fit the model; one line."""


def is_collection(path: str | Path) -> bool:
    """A folder holding a collection manifest."""
    return (Path(path) / MANIFEST).is_file()


def resolve_index_dir(path: str | Path) -> Path:
    """The collection folder of ``path``: itself, or the one its ``CURRENT`` file names."""
    path = Path(path)
    if is_collection(path):
        return path
    pointer = path / CURRENT
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        target = path / name
        if "/" in name or name in ("", ".", "..") or not is_collection(target):
            raise CollectionError(f"{pointer}: names {name!r}, which is not a collection index in {path}")
        return target
    raise CollectionError(f"{path}: no collection index here (no {MANIFEST}, no {CURRENT} file)")


def video_id(path: str) -> str:
    """A video's stable id: 16 hex digits of its path inside the collection (URL-safe)."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def new_manifest(root: str, source: str, model: dict, settings: dict, dim: int) -> dict[str, Any]:
    return {"format": FORMAT, "root": root, "source": source, "model": model, "settings": settings,
            "dim": dim, "shards": [], "videos": [], "failed": [], "collection_hash": "",
            "vector_index": None}  # fmt: skip


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json``; :class:`CollectionError` naming the file otherwise."""
    path = Path(index_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CollectionError(f"{path}: not found") from None
    except (OSError, ValueError) as exc:
        raise CollectionError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CollectionError(f"{path}: not a collection manifest (expected format {FORMAT!r})")
    for key in ("root", "model", "settings", "dim", "shards", "videos", "failed"):
        if key not in manifest:
            raise CollectionError(f"{path}: no {key!r}")
    n_rows = [s.get("rows") for s in manifest["shards"]]
    for i, v in enumerate(manifest["videos"]):
        ok = isinstance(v, dict) and isinstance(v.get("shard"), int) and 0 <= v["shard"] < len(n_rows)
        if not ok or not (isinstance(v.get("row"), int) and 0 <= v["row"] < n_rows[v["shard"]]):
            raise CollectionError(f"{path}: videos[{i}] points at no shard row")
    return manifest


def write_manifest(index_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (readers see the old or the new one). Nothing in it
    depends on when it was written: the same collection and model give the same bytes (the
    file's modification time says when)."""
    manifest["collection_hash"] = collection_hash(manifest["videos"])
    atomic_write_json(Path(index_dir) / MANIFEST, manifest)


def collection_hash(videos: list[dict]) -> str:
    """Content hash of the collection: its videos' paths, content hashes and segments."""
    digest = hashlib.sha256()
    for v in sorted(videos, key=lambda v: v["id"]):
        digest.update(f"{v['path']}\0{v['hash']}\0{v.get('segment')}\n".encode())
    return digest.hexdigest()


def write_shard(index_dir: str | Path, name: str, embeddings: np.ndarray) -> dict[str, Any]:
    """Write shard ``name`` (``[rows, D]``, stored float16) atomically; its manifest entry."""
    rel = f"{SHARDS_DIR}/{name}.npy"
    data = np.ascontiguousarray(embeddings, dtype=np.float16)
    atomic_write(Path(index_dir) / rel, lambda tmp: np.save(tmp.open("wb"), data))
    return {"file": rel, "rows": int(data.shape[0])}


def read_shard(index_dir: str | Path, entry: dict[str, Any], dim: int) -> np.ndarray:
    """A shard's embeddings ``[rows, D]`` (float16, memory-mapped)."""
    path = Path(index_dir) / entry["file"]
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CollectionError(f"{path}: unreadable shard ({exc})") from None
    if data.shape != (entry["rows"], dim):
        raise CollectionError(f"{path}: shape {data.shape}, the manifest says ({entry['rows']}, {dim})")
    return data


def live_embeddings(index_dir: str | Path, manifest: dict[str, Any]) -> np.ndarray:
    """float32 ``[len(videos), D]``: row ``i`` is video ``i``'s embedding."""
    shards = [read_shard(index_dir, s, manifest["dim"]) for s in manifest["shards"]]
    out = np.empty((len(manifest["videos"]), manifest["dim"]), dtype=np.float32)
    for i, v in enumerate(manifest["videos"]):
        out[i] = shards[v["shard"]][v["row"]]
    return out
