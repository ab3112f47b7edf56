"""Official dataset annotations -> the native layout (docs/design.md §5), without copying videos.

Each importer (:mod:`tempstop.data.official_formats`, re-exported here) parses the official
files into :class:`VideoRecord` lists per split; this module then finds every video by file stem
under the videos folder (recursively, common video extensions), symlinks it as
``<out>/<split>/videos/<video_id><ext>`` and writes ``<out>/<split>/annotations.json`` plus
``<out>/dataset.json`` (datatype and sources).

Sources are only read. Videos that cannot be found are reported (count and first ids) and
left out; malformed annotation files raise :class:`DatasetImportError` naming the file and
the entry. Reimporting into the same folder updates links and removes stale ones.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from tqdm import tqdm

from tempstop.data.annotations import ANNOTATIONS_FILE, VIDEOS_DIR, VideoRecord, write_annotations
from tempstop.data.official_formats import (
    DIDEMO_SEGMENT_S,
    MAX_EXAMPLES,
    PARSERS,
    VIDEO_EXTENSIONS,
    DatasetImportError,
    parse_activitynet,
    parse_didemo,
    parse_msrvtt,
    parse_vatex,
    stem_candidates,
)
from tempstop.utils import atomic_write_json

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"

# The formats' names stay importable from here (the CLI and tests import them so).
__all__ = [
    "DATASET_FILE", "DIDEMO_SEGMENT_S", "PARSERS", "VIDEO_EXTENSIONS", "DatasetImportError", "VideoIndex",
    "carve_val", "import_dataset", "link_split", "parse_activitynet", "parse_didemo", "parse_msrvtt",
    "parse_vatex", "resolve_videos", "stem_candidates",
]  # fmt: skip


# ---- videos ------------------------------------------------------------------------------
class VideoIndex:
    """Video files under a folder (recursive), looked up by stem."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetImportError(f"{self.root}: videos folder not found")
        rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
        self.by_stem: dict[str, Path] = {}
        self.duplicates = 0
        for dirpath, dirs, names in os.walk(self.root, followlinks=True):
            dirs.sort()  # a stem found twice resolves the same way on every run
            for name in sorted(names):
                stem, ext = os.path.splitext(name)
                if ext.lower() not in rank:
                    continue
                old = self.by_stem.get(stem)
                self.duplicates += old is not None
                if old is None or rank[ext.lower()] < rank[old.suffix.lower()]:
                    self.by_stem[stem] = Path(dirpath) / name
        if self.duplicates:
            log.warning(
                "%s: %d video stems occur more than once; using the first by extension "
                "order %s, then folder order",
                self.root,
                self.duplicates,
                VIDEO_EXTENSIONS,
            )

    def __len__(self) -> int:
        return len(self.by_stem)

    def find(self, stems: list[str]) -> Path | None:
        """The first stem that has a file."""
        for stem in stems:
            if stem in self.by_stem:
                return self.by_stem[stem]
        return None


def _safe_name(video_id: str) -> str:
    return video_id.replace("/", "_").replace("\\", "_")


def _link(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` (absolute), replacing an old link atomically."""
    target = Path(os.path.abspath(target))
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.exists() and not link.is_symlink():
        log.info("%s: a real file is already there; kept", link)
        return
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def resolve_videos(
    datatype: str, records: list[VideoRecord], index: VideoIndex
) -> tuple[list[tuple[VideoRecord, Path]], list[str]]:
    """Pair each record with its source file; returns ``(found, missing video ids)``."""
    found, missing = [], []
    for rec in records:
        source = index.find(stem_candidates(datatype, rec.video_id))
        if source is None:
            missing.append(rec.video_id)
        else:
            found.append((rec, source))
    return found, missing


def link_split(
    found: list[tuple[VideoRecord, Path]], split_dir: Path, progress: bool = True
) -> list[VideoRecord]:
    """Symlink the videos of one split and write its annotations.json; returns the records."""
    videos_dir = split_dir / VIDEOS_DIR
    videos_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    for rec, source in tqdm(found, desc=f"link {split_dir.name}", unit="video", disable=not progress):
        rec.video = _safe_name(rec.video_id) + source.suffix.lower()
        _link(source, videos_dir / rec.video)
        kept.append(rec)
    names = {r.video for r in kept}
    for path in videos_dir.iterdir():  # links of an earlier import that no longer apply
        if path.is_symlink() and path.name not in names:
            path.unlink()
    write_annotations(split_dir / ANNOTATIONS_FILE, kept)
    return kept


def carve_val(splits: dict[str, list[VideoRecord]], n: int, seed: int = 0) -> None:
    """Move ``n`` training videos (chosen by seed) into a new ``val`` split, in place.

    MSR-VTT ships only train (9k) and test (1k-A); model selection must not use test, so a
    validation split is carved from train instead.
    """
    if n <= 0:
        return
    if "val" in splits:
        raise DatasetImportError("this dataset already has a val split; --val-from-train is not needed")
    train = splits.get("train", [])
    if n >= len(train):
        raise DatasetImportError(f"--val-from-train {n}: only {len(train)} training videos")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:n])
    splits["val"] = [r for i, r in enumerate(train) if i in chosen]
    splits["train"] = [r for i, r in enumerate(train) if i not in chosen]


def import_dataset(
    datatype: str,
    annotations: str | Path,
    videos: str | Path,
    out: str | Path,
    progress: bool = True,
    val_from_train: int = 0,
) -> dict:
    """Import an official dataset into ``out`` (native layout, symlinked videos).

    ``val_from_train`` moves that many training videos (seeded) into a ``val`` split, for
    datasets without one (MSR-VTT).

    Returns ``{"datatype", "splits": {split: {videos, captions, missing, missing_examples}}}``.
    """
    if datatype not in PARSERS:
        raise DatasetImportError(f"unknown datatype {datatype!r} (choose from {sorted(PARSERS)})")
    ann_dir, vid_dir, out = Path(annotations), Path(videos), Path(out)
    if not ann_dir.is_dir():
        raise DatasetImportError(f"{ann_dir}: annotations folder not found")
    # Inside the videos folder our own links would be indexed as sources on a reimport.
    if out.resolve() == ann_dir.resolve() or vid_dir.resolve() in (out.resolve(), *out.resolve().parents):
        raise DatasetImportError(f"--out {out} is or lies in a source folder; choose another place")
    splits = PARSERS[datatype](ann_dir)
    carve_val(splits, val_from_train)
    index = VideoIndex(vid_dir)
    log.info("%s: %d video files under %s", datatype, len(index), vid_dir)
    resolved = {split: resolve_videos(datatype, recs, index) for split, recs in splits.items()}
    if not any(found for found, _ in resolved.values()):  # checked before anything is written
        examples = next(missing[:MAX_EXAMPLES] for _, missing in resolved.values() if missing)
        raise DatasetImportError(
            f"{vid_dir}: none of the annotated videos was found (looked for stems such as "
            f"{examples} with extensions {', '.join(VIDEO_EXTENSIONS)})"
        )
    summary = {}
    for split, (found, missing) in resolved.items():
        kept = link_split(found, out / split, progress)
        if missing:
            log.warning(
                "%s: %d of %d videos not found under %s, skipped (e.g. %s)",
                split, len(missing), len(splits[split]), vid_dir, missing[:MAX_EXAMPLES],
            )  # fmt: skip
        summary[split] = {
            "videos": len(kept),
            "captions": sum(len(r.captions) for r in kept),
            "missing": len(missing),
            "missing_examples": missing[:MAX_EXAMPLES],
        }
    result = {"datatype": datatype, "splits": summary}
    atomic_write_json(
        out / DATASET_FILE,
        {**result, "source": {"annotations": os.path.abspath(ann_dir), "videos": os.path.abspath(vid_dir)},
         "created_by": "tempstop import-dataset"},
    )  # fmt: skip
    return result
