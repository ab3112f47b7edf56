"""The native annotation format (docs/design.md §5).

A split folder holds ``videos/`` and ``annotations.json``: a JSON list of items
``{"video_id": str, "video": str, "captions": [str, ...], "timestamps": [[s, e], ...]}``
(``video`` defaults to ``<video_id>.mp4``; ``timestamps`` is optional, one per caption).

This module only reads and writes that format. Deep checks (types of every field, file
presence, probes of the videos) are the validation stage's job; here a structurally broken
file raises :class:`AnnotationError` naming the file and the item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tempstop.utils import atomic_write_json

ANNOTATIONS_FILE = "annotations.json"
VIDEOS_DIR = "videos"


class AnnotationError(ValueError):
    """An annotation file cannot be used; the message names the file and item."""


@dataclass
class VideoRecord:
    """One video of a split and its captions."""

    video_id: str
    captions: list[str]
    video: str = ""
    timestamps: list[list[float]] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.video:
            self.video = f"{self.video_id}.mp4"

    def to_json(self) -> dict:
        out = {"video_id": self.video_id, "video": self.video, "captions": list(self.captions)}
        if self.timestamps is not None:
            out["timestamps"] = [list(map(float, t)) for t in self.timestamps]
        out.update(self.extra)
        return out


def split_paths(split_dir: str | Path) -> tuple[Path, Path]:
    """Return ``(annotations.json, videos/)`` of a split folder."""
    split_dir = Path(split_dir)
    return split_dir / ANNOTATIONS_FILE, split_dir / VIDEOS_DIR


def find_splits(root: str | Path) -> list[str]:
    """Names of the split folders under a dataset root (those holding annotations.json)."""
    root = Path(root)
    if (root / ANNOTATIONS_FILE).is_file():
        raise AnnotationError(
            f"{root}: this is a split folder, not a dataset root; pass its parent "
            f"({root.parent}) and --split {root.name}"
        )
    return sorted(p.name for p in root.iterdir() if (p / ANNOTATIONS_FILE).is_file())


def read_raw(path: str | Path) -> list:
    """Parse an annotations.json into its raw JSON list (no per-item checks)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: malformed JSON: {exc}") from None
    except RecursionError:  # json gives up on deep nesting with a RecursionError
        raise AnnotationError(f"{path}: nested too deeply to be an annotation list") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(raw, list):
        raise AnnotationError(f"{path}: top level must be a JSON list, got {type(raw).__name__}")
    return raw


_KNOWN = {"video_id", "video", "captions", "timestamps"}


def record_from_json(item: object, where: str) -> VideoRecord:
    """Build a :class:`VideoRecord` from one raw item; ``where`` names it in errors."""
    if not isinstance(item, dict):
        raise AnnotationError(f"{where}: item must be an object, got {type(item).__name__}")
    vid = item.get("video_id")
    if not isinstance(vid, str) or not vid:
        raise AnnotationError(f"{where}: 'video_id' must be a non-empty string, got {vid!r}")
    caps = item.get("captions")
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
        raise AnnotationError(f"{where} (video_id={vid}): 'captions' must be a non-empty list of strings")
    video = item.get("video", "")
    if not isinstance(video, str):
        raise AnnotationError(f"{where} (video_id={vid}): 'video' must be a string")
    ts = item.get("timestamps")
    if ts is not None and (not isinstance(ts, list) or len(ts) != len(caps)):
        raise AnnotationError(f"{where} (video_id={vid}): 'timestamps' needs one [start, end] per caption")
    extra = {k: v for k, v in item.items() if k not in _KNOWN}
    return VideoRecord(video_id=vid, captions=caps, video=video, timestamps=ts, extra=extra)


def read_annotations(split_dir: str | Path) -> list[VideoRecord]:
    """Read a split's annotations.json into records; raises on the first broken item."""
    ann_path, _ = split_paths(split_dir)
    raw = read_raw(ann_path)
    return [record_from_json(item, f"{ann_path}: item {i}") for i, item in enumerate(raw)]


def write_annotations(path: str | Path, records: list[VideoRecord]) -> None:
    """Write records as an annotations.json, atomically."""
    atomic_write_json(path, [r.to_json() for r in records])
