"""Official dataset annotations -> the native layout (DESIGN section 5), without copying videos.

Each importer parses the official files into :class:`VideoRecord` lists per split; the common
part then finds every video by file stem under the videos folder (recursively, common video
extensions), symlinks it as ``<out>/<split>/videos/<video_id><ext>`` and writes
``<out>/<split>/annotations.json`` plus ``<out>/dataset.json`` (datatype and sources).

Sources are only read. Videos that cannot be found are reported (count and first ids) and
left out; malformed annotation files raise :class:`DatasetImportError` naming the file and
the entry. Reimporting into the same folder updates links and removes stale ones.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempstop.data.annotations import ANNOTATIONS_FILE, VIDEOS_DIR, VideoRecord, write_annotations
from tempstop.utils import atomic_write_json

log = logging.getLogger(__name__)

#: Searched in this order when one stem has several files.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".m4v", ".mov")
DIDEMO_SEGMENT_S = 5.0
DATASET_FILE = "dataset.json"
_EXAMPLES = 5


class DatasetImportError(ValueError):
    """Official annotations cannot be imported; the message names the file and entry."""


# ---- reading helpers -------------------------------------------------------------------
def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetImportError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetImportError(f"{path}: malformed JSON: {exc}") from None


def _load_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetImportError(f"{path}: annotation file not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetImportError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        return list(reader)


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise DatasetImportError(f"{where}: {key!r} must be a string, got {value!r}")
    return value.strip()


def _captions(values: Any, where: str, key: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise DatasetImportError(f"{where}: {key!r} must be a non-empty list of strings")
    return [_text(v, where, key) for v in values]


def _present(ann_dir: Path, files: dict[str, str], datatype: str) -> dict[str, Path]:
    """The split files that exist (at least one must)."""
    found = {split: ann_dir / name for split, name in files.items() if (ann_dir / name).is_file()}
    if not found:
        raise DatasetImportError(
            f"{ann_dir}: no {datatype} annotation file found (expected one of {sorted(files.values())})"
        )
    return found


# ---- the four official formats ---------------------------------------------------------
def parse_msrvtt(ann_dir: Path) -> dict[str, list[VideoRecord]]:
    """MSR-VTT: train = the 9k list with all its captions; test = 1k-A, one sentence each."""
    data_path = ann_dir / "MSRVTT_data.json"
    data = _load_json(data_path)
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list):
        raise DatasetImportError(f"{data_path}: expected an object with a 'sentences' list")
    by_video: dict[str, list[str]] = {}
    for i, s in enumerate(sentences):
        where = f"{data_path}: sentences[{i}]"
        if not isinstance(s, dict):
            raise DatasetImportError(f"{where}: expected an object")
        vid = _text(s.get("video_id"), where, "video_id")
        by_video.setdefault(vid, []).append(_text(s.get("caption"), where, "caption"))

    train_path = ann_dir / "MSRVTT_train.9k.csv"
    train, no_caption = [], []
    seen = set()
    for row in _load_csv(train_path, ("video_id",)):
        vid = row["video_id"].strip()
        if vid in seen:
            continue
        seen.add(vid)
        if vid in by_video:
            train.append(VideoRecord(vid, by_video[vid]))
        else:
            no_caption.append(vid)
    if no_caption:
        log.warning(
            "%s: %d video(s) have no sentence in %s, skipped (e.g. %s)",
            train_path, len(no_caption), data_path.name, no_caption[:_EXAMPLES],
        )  # fmt: skip
    test_path = ann_dir / "MSRVTT_JSFUSION_test.csv"
    test: dict[str, VideoRecord] = {}
    for i, row in enumerate(_load_csv(test_path, ("video_id", "sentence"))):
        where = f"{test_path}: row {i + 2}"  # +2: 1-based, after the header
        vid, sentence = _text(row["video_id"], where, "video_id"), _text(row["sentence"], where, "sentence")
        test.setdefault(vid, VideoRecord(vid, [])).captions.append(sentence)
    return {"train": train, "test": list(test.values())}


def _didemo_video_id(name: str) -> str:
    """DiDeMo names a video by file (``xxx.mov``) or bare id; the id is the stem."""
    suffix = os.path.splitext(name)[1].lower()
    return name[: -len(suffix)] if suffix in VIDEO_EXTENSIONS + (".3gp", ".mpg") else name


def _didemo_span(times: Any, where: str) -> list[float]:
    """Consensus (most frequent, earliest on ties) annotator segment, in seconds."""
    ok = isinstance(times, list) and times
    ok = ok and all(
        isinstance(t, list) and len(t) == 2 and all(isinstance(v, int) for v in t) and 0 <= t[0] <= t[1]
        for t in times
    )
    if not ok:
        raise DatasetImportError(f"{where}: 'times' must be a non-empty list of [start, end] segment indices")
    start, end = Counter(map(tuple, times)).most_common(1)[0][0]
    return [start * DIDEMO_SEGMENT_S, (end + 1) * DIDEMO_SEGMENT_S]


def parse_didemo(ann_dir: Path) -> dict[str, list[VideoRecord]]:
    """DiDeMo: moments grouped by video; captions = descriptions, 5 s segments -> seconds."""
    files = {s: f"{s}_data.json" for s in ("train", "val", "test")}
    out = {}
    for split, path in _present(ann_dir, files, "DiDeMo").items():
        entries = _load_json(path)
        if not isinstance(entries, list):
            raise DatasetImportError(f"{path}: top level must be a list of moments")
        videos: dict[str, VideoRecord] = {}
        for i, e in enumerate(entries):
            where = f"{path}: entry {i}"
            if not isinstance(e, dict):
                raise DatasetImportError(f"{where}: expected an object")
            where += f" (annotation_id={e.get('annotation_id')})" if "annotation_id" in e else ""
            vid = _didemo_video_id(_text(e.get("video"), where, "video"))
            rec = videos.setdefault(vid, VideoRecord(vid, [], timestamps=[]))
            rec.captions.append(_text(e.get("description"), where, "description"))
            rec.timestamps.append(_didemo_span(e.get("times"), where))
        out[split] = list(videos.values())
    return out


def parse_activitynet(ann_dir: Path) -> dict[str, list[VideoRecord]]:
    """ActivityNet Captions: train.json -> train, val_1.json -> val (timestamps in seconds)."""
    out = {}
    for split, path in _present(ann_dir, {"train": "train.json", "val": "val_1.json"}, "ActivityNet").items():
        data = _load_json(path)
        if not isinstance(data, dict):
            raise DatasetImportError(f"{path}: top level must be an object keyed by video id")
        records = []
        for vid, entry in data.items():
            where = f"{path}: video {vid!r}"
            if not isinstance(entry, dict):
                raise DatasetImportError(f"{where}: expected an object")
            duration = entry.get("duration")
            if not isinstance(duration, (int, float)) or duration <= 0:
                raise DatasetImportError(f"{where}: 'duration' must be a positive number, got {duration!r}")
            caps = _captions(entry.get("sentences"), where, "sentences")
            spans = entry.get("timestamps")
            if not isinstance(spans, list) or len(spans) != len(caps):
                raise DatasetImportError(f"{where}: 'timestamps' needs one [start, end] per sentence")
            stamps = []
            for k, span in enumerate(spans):
                if not (
                    isinstance(span, list)
                    and len(span) == 2
                    and all(isinstance(v, (int, float)) for v in span)
                ):
                    raise DatasetImportError(f"{where}: timestamps[{k}] must be [start, end], got {span!r}")
                # Some official spans run past the end or are reversed: order and clamp them.
                s, e = sorted(min(max(float(v), 0.0), float(duration)) for v in span)
                stamps.append([s, e])
            records.append(VideoRecord(vid, caps, timestamps=stamps, extra={"duration": float(duration)}))
        out[split] = records
    return out


def parse_vatex(ann_dir: Path) -> dict[str, list[VideoRecord]]:
    """VATEX: English captions (enCap) of the training and validation files."""
    files = {"train": "vatex_training_v1.0.json", "val": "vatex_validation_v1.0.json"}
    out = {}
    for split, path in _present(ann_dir, files, "VATEX").items():
        entries = _load_json(path)
        if not isinstance(entries, list):
            raise DatasetImportError(f"{path}: top level must be a list of videos")
        records = []
        for i, e in enumerate(entries):
            where = f"{path}: entry {i}"
            if not isinstance(e, dict):
                raise DatasetImportError(f"{where}: expected an object")
            vid = _text(e.get("videoID"), where, "videoID")
            records.append(VideoRecord(vid, _captions(e.get("enCap"), f"{where} ({vid})", "enCap")))
        out[split] = records
    return out


PARSERS: dict[str, Callable[[Path], dict[str, list[VideoRecord]]]] = {
    "msrvtt": parse_msrvtt,
    "didemo": parse_didemo,
    "activitynet": parse_activitynet,
    "vatex": parse_vatex,
}


def stem_candidates(datatype: str, video_id: str) -> list[str]:
    """File stems that may hold a video, most likely first (downloads name files variously)."""
    names = [video_id]
    if datatype == "activitynet":  # "v_<ytid>" ids; files with or without the prefix
        names.append(video_id[2:] if video_id.startswith("v_") else f"v_{video_id}")
    elif datatype == "vatex":  # "<ytid>_<start>_<end>"; some downloads keep only the ytid
        names.append(video_id.rsplit("_", 2)[0])
    return names


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
    from tqdm import tqdm

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
        examples = next(missing[:_EXAMPLES] for _, missing in resolved.values() if missing)
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
                split, len(missing), len(splits[split]), vid_dir, missing[:_EXAMPLES],
            )  # fmt: skip
        summary[split] = {
            "videos": len(kept),
            "captions": sum(len(r.captions) for r in kept),
            "missing": len(missing),
            "missing_examples": missing[:_EXAMPLES],
        }
    result = {"datatype": datatype, "splits": summary}
    atomic_write_json(
        out / DATASET_FILE,
        {**result, "source": {"annotations": os.path.abspath(ann_dir), "videos": os.path.abspath(vid_dir)},
         "created_by": "tempstop import-dataset"},
    )  # fmt: skip
    return result
