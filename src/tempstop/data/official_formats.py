"""The four official annotation formats (MSR-VTT, DiDeMo, ActivityNet Captions, VATEX), each
parsed into :class:`VideoRecord` lists per split; :mod:`tempstop.data.importers` then finds the
videos and writes the native layout (docs/design.md §5).

A malformed file raises :class:`DatasetImportError` naming the file and the entry.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempstop.data.annotations import VideoRecord

log = logging.getLogger(__name__)

#: Searched in this order when one stem has several files.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".m4v", ".mov")
DIDEMO_SEGMENT_S = 5.0
MAX_EXAMPLES = 5  # ids quoted in a warning or an error


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
            train_path, len(no_caption), data_path.name, no_caption[:MAX_EXAMPLES],
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
