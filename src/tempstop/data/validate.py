"""Validation of a split: annotation expectations (great_expectations) and video probes.

:func:`validate_split` never raises on bad data: every defect becomes a problem
``{"split", "video_id", "file", "reason", "severity", "row", "check"}`` (plus
``caption_index`` for a caption), where ``file`` is the file to look at (the annotation file
for annotation defects, the video for video defects) and ``row`` the item's position in
annotations.json. A file that cannot be read as a JSON list is one whole-file problem with
``video_id = None``. Severity ``error`` makes the split unusable as is; ``warning`` is advice.

Each video is probed (opened, first and last frame decoded) in a worker process with a
timeout, because decord can hang forever on a file that over-reports its frame count.
The source data is only read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tempstop.config import ValidateConfig
from tempstop.data import expectations as ex
from tempstop.data.annotations import AnnotationError, read_raw, split_paths
from tempstop.data.video import probe_video, unsafe_path_reason
from tempstop.data.workers import TaskTimeout, map_with_timeout
from tempstop.utils import atomic_write_text


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_split`; ``ok`` is true when there is no error."""

    split: str
    annotations: str
    items: int
    problems: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    raw: list | None = field(default=None, repr=False)

    @property
    def errors(self) -> list[dict]:
        return [p for p in self.problems if p["severity"] == "error"]

    @property
    def warnings(self) -> list[dict]:
        return [p for p in self.problems if p["severity"] == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def clean_items(self) -> list:
        """The annotation items without errors: bad items dropped, bad captions removed.

        A caption-level error removes that caption (and its timestamp); an item left with
        no caption is dropped; a whole-file error leaves nothing.
        """
        if self.raw is None or any(p["row"] is None for p in self.errors):
            return []
        bad_rows = {p["row"] for p in self.errors if p.get("caption_index") is None}
        bad_caps: dict[int, set[int]] = {}
        for p in self.errors:
            if p.get("caption_index") is not None:
                bad_caps.setdefault(p["row"], set()).add(p["caption_index"])
        clean = []
        for i, item in enumerate(self.raw):
            if i in bad_rows:
                continue
            drop = bad_caps.get(i, set())
            if drop:
                item = dict(item)
                keep = [k for k in range(len(item["captions"])) if k not in drop]
                if not keep:
                    continue
                item["captions"] = [item["captions"][k] for k in keep]
                if item.get("timestamps") is not None:
                    item["timestamps"] = [item["timestamps"][k] for k in keep]
            clean.append(item)
        return clean

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "annotations": self.annotations,
            "items": self.items,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "valid_items": len(self.clean_items()),
            "ok": self.ok,
        }
        # No timings here (format_report prints them): the report is a DVC dependency of frame
        # extraction, and wall times in it made every run's report differ, so a checkout that
        # pulled the frames from a DVC remote extracted them again.


# ---- reasons ----------------------------------------------------------------------------
def _item_reason(
    check: str, row: dict, item: Any, first_use: dict[str, int], cfg: ValidateConfig
) -> str | None:
    obj = item if isinstance(item, dict) else {}
    if check == "item_type":
        return f"item is not a JSON object (got {row['item_type']})"
    if check == "video_id_type":
        if row["video_id_type"] == "null":
            return "video_id is missing or null"
        return f"video_id must be a string (got {row['video_id_type']} {obj.get('video_id')!r})"
    if check == "video_id_blank":
        return "video_id is empty"
    if check == "video_id_unique":
        first = first_use[row["video_id"]]
        return None if first == row["row"] else f"duplicate video_id (first used by item {first})"
    if check == "video_type":
        return f"'video' must be a string (got {row['video_type']})"
    if check == "video_path":
        return unsafe_path_reason(row["video"]) or "unsafe video path"
    if check == "file_exists":
        return f"video file not found: videos/{row['video']}"
    if check == "captions_type":
        if row["captions_type"] == "null":
            return "'captions' is missing"
        return f"'captions' must be a list of strings (got {row['captions_type']})"
    if check == "n_captions":
        n = int(row["n_captions"])
        return (
            "'captions' is an empty list" if n == 0 else f"{n} captions (allowed at most {cfg.max_captions})"
        )
    if check == "timestamps":
        return "'timestamps' must be null or one [start, end] per caption with 0 <= start < end"
    raise KeyError(check)


def _caption_reason(check: str, row: dict, cfg: ValidateConfig) -> str:
    k = row["caption_index"]
    if check == "caption_type":
        return f"caption {k} is not a string (got {row['caption_type']})"
    if check == "caption_blank":
        return f"caption {k} is empty or blank"
    if check == "caption_words":
        words = int(row["words"])
        return f"caption {k} has {words} words (allowed {cfg.min_caption_words}..{cfg.max_caption_words})"
    raise KeyError(check)


def _video_reason(check: str, row: dict, cfg: ValidateConfig) -> str:
    if check == "frames":
        return "video has no frames"
    if check == "fps":
        return f"frame rate {row['fps']:.3g} fps outside [{cfg.min_fps:g}, {cfg.max_fps:g}]"
    if check == "short_side":
        return f"frame size {row['width']}x{row['height']}: short side below {cfg.min_side}"
    if check == "long_side":
        return f"frame size {row['width']}x{row['height']}: long side above {cfg.max_side}"
    raise KeyError(check)


def _json_id(value: Any) -> Any:
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


# ---- the split --------------------------------------------------------------------------
def validate_split(
    split_dir: str | Path,
    cfg: ValidateConfig,
    *,
    probe_fn: Callable[[str], dict] = probe_video,
    progress: bool = True,
) -> ValidationResult:
    """Check a split folder's annotations and videos; see the module docstring.

    ``probe_fn(path) -> {"frames", "fps", "width", "height", "duration"}`` runs in worker
    processes (it must be a module-level function); tests inject a slow one.
    """
    split_dir = Path(split_dir)
    ann_path, videos_dir = split_paths(split_dir)
    result, rows, ids = _check_annotations(split_dir, ann_path, cfg)
    if rows:
        _probe_videos(result, rows, ids, result.raw, videos_dir, cfg, probe_fn, progress, _adder(result))
    _sort(result)
    return result


def check_annotations(
    split_dir: str | Path, cfg: ValidateConfig, annotations: str | Path | None = None
) -> list[dict]:
    """The annotation checks of :func:`validate_split`, without probing videos: the problems
    of ``annotations`` (default ``<split>/annotations.json``). A missing video file is left
    out: extraction reports each video it cannot read."""
    split_dir = Path(split_dir)
    ann_path = Path(annotations) if annotations else split_paths(split_dir)[0]
    result, _, _ = _check_annotations(split_dir, ann_path, cfg, skip={"file_exists"})
    _sort(result)
    return result.problems


def format_problem(p: dict) -> str:
    """One problem as one line: ``item 3 (video_id v3): caption 0 is empty or blank``."""
    where = "file" if p["row"] is None else f"item {p['row']}"
    vid = "" if p["video_id"] is None else f" (video_id {p['video_id']})"
    return f"{where}{vid}: {p['reason']}"


def _adder(result: ValidationResult) -> Callable[..., None]:
    def add(
        row: int | None, vid: Any, file: str, reason: str, check: str, severity: str = "error", **extra: Any
    ) -> None:
        result.problems.append(
            {"split": result.split, "video_id": _json_id(vid), "file": file, "reason": reason,
             "severity": severity, "row": row, "check": check, **extra}
        )  # fmt: skip

    return add


def _sort(result: ValidationResult) -> None:
    result.problems.sort(
        key=lambda p: (p["row"] if p["row"] is not None else -1, p.get("caption_index") or 0)
    )


def _check_annotations(
    split_dir: Path, ann_path: Path, cfg: ValidateConfig, skip: set[str] = frozenset()
) -> tuple[ValidationResult, list[dict], list[Any]]:
    """Read ``ann_path`` and run the item and caption suites: the result (problems so far),
    the item rows and each item's reported id (no rows when the file is unusable)."""
    videos_dir = split_paths(split_dir)[1]
    result = ValidationResult(split=split_dir.name, annotations=str(ann_path), items=0)
    add = _adder(result)
    try:
        raw = read_raw(ann_path)
    except AnnotationError as exc:
        add(None, None, str(ann_path), str(exc).removeprefix(f"{ann_path}: "), "annotations_file")
        return result, [], []
    result.raw, result.items = raw, len(raw)
    if not raw:
        add(None, None, str(ann_path), "annotation file holds no items", "annotations_file")
        return result, [], []

    rows = ex.item_rows(raw, lambda rel: (videos_dir / rel).is_file())
    first_use: dict[str, int] = {}
    for r in rows:
        if r["video_id"] is not None:
            first_use.setdefault(r["video_id"], r["row"])
    ids = [_json_id(_raw_id(item)) for item in raw]  # what the report names each item by
    for check, positions in ex.timed_suite("items", rows, cfg, result.timings).items():
        if check in skip:
            continue
        for pos in positions:
            reason = _item_reason(check, rows[pos], raw[pos], first_use, cfg)
            if reason is not None:
                file = str(videos_dir / rows[pos]["video"]) if check == "file_exists" else str(ann_path)
                add(pos, ids[pos], file, reason, check)

    caps = ex.caption_rows(raw)
    for check, positions in ex.timed_suite("captions", caps, cfg, result.timings).items():
        for pos in positions:
            r = caps[pos]
            add(r["row"], ids[r["row"]], str(ann_path), _caption_reason(check, r, cfg), check,
                caption_index=r["caption_index"])  # fmt: skip
    return result, rows, ids


def _raw_id(item: Any) -> Any:
    return item.get("video_id") if isinstance(item, dict) else None


def _probe_videos(result, rows, ids, raw, videos_dir, cfg, probe_fn, progress, add) -> None:
    """Probe each distinct video file once, in workers; add video and segment problems."""
    by_path: dict[str, list[int]] = {}  # video file (as reported) -> annotation rows using it
    for r in rows:
        if r["file_exists"] and r["video_id"] is not None:
            by_path.setdefault(str(videos_dir / r["video"]), []).append(r["row"])
    # Workers fork from a server that keeps the working folder it started in: absolute paths.
    absolute = {os.path.abspath(p): p for p in by_path}
    t0 = time.perf_counter()
    probed: list[dict] = []
    preload = ("numpy", "decord", "tempstop.data.video")  # imported once, by the fork server
    probes = map_with_timeout(
        probe_fn, list(absolute), cfg.workers, cfg.timeout_s, f"probe {result.split}",
        progress=progress, preload=preload, unit="video",
    )  # fmt: skip
    for abs_path, out in probes:
        path = absolute[abs_path]
        if isinstance(out, Exception):
            reason = _probe_reason(out, abs_path, cfg)
            for row in by_path[path]:
                add(row, ids[row], path, reason, "probe")
            continue
        for row in by_path[path]:
            probed.append({"row": row, "path": path, **out})
    result.timings["probe_s"] = round(time.perf_counter() - t0, 3)

    vrows = [
        dict(p, short_side=float(min(p["width"], p["height"])), long_side=float(max(p["width"], p["height"])))
        for p in probed
    ]
    for check, positions in ex.timed_suite("videos", vrows, cfg, result.timings).items():
        for pos in positions:
            v = vrows[pos]
            add(v["row"], ids[v["row"]], v["path"], _video_reason(check, v, cfg), check)
    for v in vrows:  # segments that start after the end of the video select no frame
        ts = raw[v["row"]].get("timestamps")
        if rows[v["row"]]["timestamps_ok"] and v["duration"] > 0:
            for k, (start, end) in enumerate(ts):
                if start >= v["duration"]:
                    reason = (
                        f"segment {k} [{start:g}, {end:g}] starts after the video ends ({v['duration']:g} s)"
                    )
                    add(v["row"], ids[v["row"]], v["path"], reason, "segment", "warning", caption_index=k)


def _probe_reason(err: Exception, path: str, cfg: ValidateConfig) -> str:
    if isinstance(err, TaskTimeout):
        return f"probe timed out after {cfg.timeout_s:g} s (decord can hang on a file whose header over-reports its frames)"
    text = str(err).removeprefix("VideoError: ").removeprefix(f"{path}: ")
    return text


# ---- reports ----------------------------------------------------------------------------
def report_dict(results: list[ValidationResult]) -> dict:
    """The JSON report: overall status, one summary per split, every problem."""
    return {
        "ok": all(r.ok for r in results),
        "splits": {r.split: r.to_dict() for r in results},
        "problems": [p for r in results for p in r.problems],
    }


def format_report(results: list[ValidationResult], limit: int = 50) -> str:
    """A readable report: one line per split, then up to ``limit`` problems per split."""
    lines = []
    for r in results:
        status = "OK" if r.ok else "FAILED"
        gx = r.timings.get("gx_validate_s", 0.0) + r.timings.get("gx_setup_s", 0.0)
        lines.append(
            f"{r.split}: {status}  {r.items} items, {len(r.errors)} errors, {len(r.warnings)} warnings "
            f"(expectations {gx:.1f} s, probes {r.timings.get('probe_s', 0.0):.1f} s)"
        )
        for p in r.problems[:limit]:
            vid = "-" if p["video_id"] is None else p["video_id"]
            where = f"item {p['row']}" if p["row"] is not None else "file"
            lines.append(f"  {p['severity'].upper():7} {vid!s:20} {where:9} {p['reason']}  [{p['file']}]")
        if len(r.problems) > limit:
            lines.append(f"  ... {len(r.problems) - limit} more in the JSON report")
    return "\n".join(lines)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write (reports, cleaned annotation files)."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
