"""The frame store: pre-extracted frames that training, evaluation and search read.

Layout (docs/ARCHITECTURE.md)::

    <store>/index.json          {"version": 1, "frames": T, "size": S, "source", "datatype",
                                 "items": [{"key", "video_id", "file", "captions",
                                            "num_valid", "segment"}], "failed": [...],
                                 "video_sha1": {video_id: SHA-1 of the video file}}
    <store>/arrays/<key>.npy    uint8 [T, S, S, 3]; frames past num_valid are zero padding

Every file is written atomically (temporary file + rename), so a reader never sees half an
array or half an index, and an interrupted extraction leaves only whole files behind.
``source`` is the split folder the store was extracted from, relative to the store folder
(absolute in stores of earlier versions): the index, like every file of a finished store,
holds nothing that depends on where or when it was written (it is a DVC output).
:attr:`FrameStore.source` gives it as an absolute path.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from tempstop.utils import atomic_write_json, first_line
from tempstop.utils import remove_stale_temporaries as remove_stale

INDEX_FILE = "index.json"
ARRAYS_DIR = "arrays"
STORE_VERSION = 1

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]+$")


class StoreError(ValueError):
    """A frame store is missing or inconsistent; the message names the file (and key)."""


def is_store(path: str | Path) -> bool:
    """True if ``path`` is a folder holding a frame store index."""
    return (Path(path) / INDEX_FILE).is_file()


def array_relpath(key: str) -> str:
    """Store-relative file of an item's array."""
    return f"{ARRAYS_DIR}/{key}.npy"


def save_array(path: str | Path, frames: np.ndarray) -> None:
    """Write a uint8 ``[T, S, S, 3]`` array as ``.npy``, atomically.

    The bytes go to a hidden temporary beside the target (named by process id, so concurrent
    writers never share one), which is then renamed over it. This is the per-video cost that
    extraction adds to decoding, hence raw ``os.write`` calls instead of ``np.save`` on a
    ``mkstemp`` file (half the time for small arrays).
    """
    path = Path(path)
    frames = np.ascontiguousarray(frames)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(frames))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            _write_all(fd, header.getvalue(), memoryview(frames).cast("B"))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_all(fd: int, *chunks: bytes | memoryview) -> None:
    """Write every chunk, in one system call when the kernel takes it all (the usual case)."""
    views = [memoryview(c).cast("B") for c in chunks]
    written = os.writev(fd, views)
    for view in views:
        if written >= len(view):
            written -= len(view)
            continue
        view, written = view[written:], 0  # a partial write (rare): finish with plain writes
        while view:
            view = view[os.write(fd, view) :]


def remove_stale_temporaries(store_dir: str | Path) -> int:
    """Delete temporaries left by a killed writer (``.*.tmp`` in the store and ``arrays/``);
    returns how many."""
    store_dir = Path(store_dir)
    return len(remove_stale(store_dir)) + len(remove_stale(store_dir / ARRAYS_DIR))


def write_index(store_dir: str | Path, index: dict[str, Any]) -> Path:
    """Validate and write ``index.json`` atomically; returns its path."""
    path = Path(store_dir) / INDEX_FILE
    validate_index(index, str(path))
    atomic_write_json(path, index)
    return path


def read_index(path: str | Path) -> dict[str, Any]:
    """Read and validate ``<store>/index.json`` (``path`` is the store or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_FILE
    if not path.is_file():
        raise StoreError(f"{path}: frame store index not found")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: corrupt frame store index (not valid JSON: {exc})") from None
    except RecursionError:
        raise StoreError(f"{path}: corrupt frame store index (nested too deeply)") from None
    validate_index(index, str(path))
    return index


def validate_index(index: Any, where: str) -> None:
    """Check the index structure; raise :class:`StoreError` naming ``where`` and the item."""
    if not isinstance(index, dict):
        raise StoreError(f"{where}: index must be a JSON object, got {type(index).__name__}")
    if index.get("version") != STORE_VERSION:
        raise StoreError(f"{where}: unsupported store version {index.get('version')!r} (expected 1)")
    for key in ("frames", "size"):
        value = index.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StoreError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    items = index.get("items")
    if not isinstance(items, list):
        raise StoreError(f"{where}: 'items' must be a list")
    if not isinstance(index.get("failed", []), list):
        raise StoreError(f"{where}: 'failed' must be a list")
    digests = index.get("video_sha1", {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise StoreError(f"{where}: 'video_sha1' must map video ids to strings")
    seen: set[str] = set()
    for i, item in enumerate(items):
        _validate_item(item, index["frames"], f"{where}: items[{i}]")
        if item["key"] in seen:
            raise StoreError(f"{where}: items[{i}]: duplicate key {item['key']!r}")
        seen.add(item["key"])


def _validate_item(item: Any, frames: int, where: str) -> None:
    if not isinstance(item, dict):
        raise StoreError(f"{where}: must be an object")
    for field, kind in (("key", str), ("video_id", str), ("file", str), ("captions", list)):
        if not isinstance(item.get(field), kind):
            raise StoreError(f"{where}: '{field}' must be a {kind.__name__}, got {item.get(field)!r}")
    if not _SAFE_KEY.match(item["key"]):
        raise StoreError(f"{where}: key {item['key']!r} is not file-name safe")
    if item["file"] != array_relpath(item["key"]):
        raise StoreError(f"{where}: 'file' must be {array_relpath(item['key'])!r}, got {item['file']!r}")
    if not all(isinstance(c, str) for c in item["captions"]):
        raise StoreError(f"{where}: 'captions' must be strings")
    n = item.get("num_valid")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= frames:
        raise StoreError(f"{where}: 'num_valid' must be an integer in [0, {frames}], got {n!r}")
    seg = item.get("segment")
    if seg is not None and not (
        isinstance(seg, list) and len(seg) == 2 and all(isinstance(x, (int, float)) for x in seg)
    ):
        raise StoreError(f"{where}: 'segment' must be null or [start, end], got {seg!r}")


def _absolute_source(store_dir: Path, source: Any) -> str | None:
    """The index's ``source`` (relative to the store folder, or absolute) as an absolute path;
    symlinks resolved, as the relative path was made between resolved folders."""
    if not isinstance(source, str) or not source:
        return None
    return source if os.path.isabs(source) else str((store_dir / source).resolve())


class FrameStore:
    """Read-only access to a frame store folder.

    ``len(store)``, ``store.items`` (the index items), ``store.frames`` (T), ``store.size`` (S),
    ``store.source`` (the absolute path of the split folder it was extracted from, or ``None``),
    ``store.load(i) -> (uint8 [T, S, S, 3], bool [T])`` where the mask marks real frames.
    The index is validated on open; an array is checked when loaded.
    """

    def __init__(self, path: str | Path, mmap: bool = False) -> None:
        self.path = Path(path)
        self.index = read_index(self.path)
        self.items: list[dict[str, Any]] = self.index["items"]
        self.frames: int = self.index["frames"]
        self.size: int = self.index["size"]
        self.failed: list[dict[str, Any]] = self.index.get("failed", [])
        self.source: str | None = _absolute_source(self.path, self.index.get("source"))
        self.datatype: str | None = self.index.get("datatype")
        # mmap keeps memory flat when many DataLoader workers read large stores.
        self._mmap_mode = "r" if mmap else None

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"FrameStore({str(self.path)!r}, items={len(self)}, frames={self.frames}, size={self.size})"

    def check_arrays(self) -> None:
        """Raise :class:`StoreError` naming the first item whose array file is missing or
        shorter than its frames (0 bytes, cut off), and how many are; one ``stat`` per item,
        so a bad file stops a run at its start rather than in the middle of an epoch."""
        need = self.frames * self.size * self.size * 3  # uint8 bytes, without the .npy header
        bad = []
        for item in self.items:
            path = self.path / item["file"]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                bad.append(f"{path}: array of item {item['key']!r} is missing")
                continue
            if size <= need:
                bad.append(f"{path}: array of item {item['key']!r} has {size} bytes, less than its frames")
        if bad:
            more = f" ({len(bad)} of {len(self)} arrays are bad)" if len(bad) > 1 else ""
            raise StoreError(bad[0] + more)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames of item ``i`` as uint8 ``[T, S, S, 3]`` and its validity mask bool ``[T]``."""
        item = self.items[i]
        path = self.path / item["file"]
        try:
            frames = np.load(path, mmap_mode=self._mmap_mode, allow_pickle=False)
        except FileNotFoundError:
            raise StoreError(f"{path}: array of item {item['key']!r} is missing") from None
        except EOFError:  # np.load of an empty file
            raise StoreError(f"{path}: array of item {item['key']!r} is empty (0 bytes)") from None
        except (ValueError, OSError) as exc:
            raise StoreError(f"{path}: array of item {item['key']!r} is unreadable: {first_line(exc)}") from None
        expected = (self.frames, self.size, self.size, 3)
        if frames.shape != expected or frames.dtype != np.uint8:
            raise StoreError(
                f"{path}: item {item['key']!r} has {frames.dtype} {frames.shape}, expected uint8 {expected}"
            )
        mask = np.arange(self.frames) < item["num_valid"]
        return frames, mask
