"""Finding the videos of a folder, and keeping every path inside it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: File extensions indexed (case-insensitive).
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


@dataclass(frozen=True)
class FoundVideo:
    """A video file of the collection: its path relative to the root and its stat stamp."""

    path: str  # POSIX, relative to the root
    bytes: int
    mtime_ns: int


def scan_videos(root: str | Path) -> list[FoundVideo]:
    """Every video under ``root`` (recursively), sorted by path.

    Hidden files and folders (``.name``) are skipped; symbolic links are followed only when
    they resolve inside ``root``, so nothing outside the collection is ever indexed or served.
    """
    root = Path(root).resolve()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.lower().endswith(VIDEO_SUFFIXES):
                continue
            path = Path(folder) / name
            try:
                real = path.resolve(strict=True)
                stat = real.stat()
            except OSError:
                continue  # a dangling link or a file deleted while scanning
            if not real.is_relative_to(root) or not real.is_file():
                continue
            found.append(FoundVideo(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(found, key=lambda v: v.path)


def inside(root: str | Path, rel: str) -> Path | None:
    """The file ``root/rel`` if it lies inside ``root`` (links resolved), else None."""
    root = Path(root).resolve()
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\0" in rel:
        return None
    try:
        real = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_relative_to(root) and real.is_file() else None


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """BLAKE2b-128 of the file's bytes (hex): a video's content hash."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
