"""The great_expectations suites behind ``tempstop validate``.

Annotations are flattened into pandas frames, one row per item (``items``), per caption
(``captions``) and per probed video (``videos``); each frame is validated by a suite of
GX 1.x expectations in an ephemeral context, and every unexpected row is mapped back to the
item it came from. A column is ``None`` where a check does not apply to a row (the caption
length of a non-string caption, the file of an unsafe path): GX column-map expectations skip
nulls, so each defect is reported once, by the check that names it best.

Each expectation carries ``meta={"check": name}``; :mod:`tempstop.data.validate` turns a failing
row into a reason. Importing this module imports GX (~3 s; every caller runs a suite).

The context is configured here (analytics and progress bars off, stores in memory); the
process environment is the program's: the ``tempstop`` command sets every telemetry switch,
``GX_ANALYTICS_ENABLED=false`` included, at start (``tempstop_pipelines.env.telemetry_off``),
and its logging shows other libraries' loggers from WARNING on (GX logs ~200 INFO lines while
importing).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

# A video path is unsafe when absolute (POSIX or drive letter), uses backslashes or has a
# ".." component. Same rule as tempstop.data.video.unsafe_path_reason, as a regex for GX.
UNSAFE_PATH_REGEX = r"^(?:/|[A-Za-z]:)|\\|(?:^|/)\.\.(?:/|$)|\x00"

Row = dict[str, Any]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "str", bool: "bool", int: "int", float: "float"}.get(
        type(value), type(value).__name__
    )


# ---- flattening -------------------------------------------------------------------------
def item_rows(raw: list, file_exists: Callable[[str], bool]) -> list[Row]:
    """One row per annotation item; ``file_exists(rel)`` checks ``videos/<rel>``."""
    rows = []
    for i, item in enumerate(raw):
        obj = item if isinstance(item, dict) else {}
        vid = obj.get("video_id") if "video_id" in obj else None
        video = obj.get("video") or (f"{vid}.mp4" if isinstance(vid, str) and vid else None)
        caps = obj.get("captions")
        safe = isinstance(video, str) and not re.search(UNSAFE_PATH_REGEX, video)
        rows.append(
            {
                "row": i,
                "item_type": _type_name(item),
                "video_id_type": _type_name(vid) if isinstance(item, dict) else None,
                "video_id": vid if isinstance(vid, str) else None,
                # Only an explicit "video" can have the wrong type; the default is a string.
                "video_type": _type_name(obj["video"]) if obj.get("video") not in (None, "") else None,
                "video": video if isinstance(video, str) else None,
                "file_exists": file_exists(video) if safe and video.strip() else None,
                "captions_type": _type_name(caps) if isinstance(item, dict) else None,
                "n_captions": float(len(caps)) if isinstance(caps, list) else None,
                "timestamps_ok": timestamps_ok(obj.get("timestamps"), caps) if "timestamps" in obj else None,
            }
        )
    return rows


def timestamps_ok(ts: Any, caps: Any) -> bool | None:
    """``timestamps``: null, or one ``[start, end]`` per caption with ``0 <= start < end``."""
    if ts is None:
        return None
    if not isinstance(ts, list) or not isinstance(caps, list) or len(ts) != len(caps):
        return False
    for pair in ts:
        if not (isinstance(pair, list) and len(pair) == 2):
            return False
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair):
            return False
        if not 0 <= pair[0] < pair[1]:
            return False
    return True


def caption_rows(raw: list) -> list[Row]:
    """One row per caption of every item whose ``captions`` is a list."""
    rows = []
    for i, item in enumerate(raw):
        caps = item.get("captions") if isinstance(item, dict) else None
        if not isinstance(caps, list):
            continue
        for k, cap in enumerate(caps):
            text = cap if isinstance(cap, str) else None
            blank = text is None or not text.strip()
            rows.append(
                {
                    "row": i,
                    "caption_index": k,
                    "caption_type": _type_name(cap),
                    "caption": text,
                    "words": None if blank else float(len(text.split())),
                }
            )
    return rows


# ---- suites -----------------------------------------------------------------------------
Expectation = tuple[str, str, dict]  # (check name, GX expectation class, its kwargs)


def _item_suite(cfg: Any) -> list[Expectation]:
    in_set = "ExpectColumnValuesToBeInSet"
    return [
        ("item_type", in_set, {"column": "item_type", "value_set": ["object"]}),
        ("video_id_type", in_set, {"column": "video_id_type", "value_set": ["str"]}),
        ("video_id_blank", "ExpectColumnValuesToMatchRegex", {"column": "video_id", "regex": r"\S"}),
        ("video_id_unique", "ExpectColumnValuesToBeUnique", {"column": "video_id"}),
        ("video_type", in_set, {"column": "video_type", "value_set": ["str"]}),
        ("video_path", "ExpectColumnValuesToNotMatchRegex", {"column": "video", "regex": UNSAFE_PATH_REGEX}),
        ("file_exists", in_set, {"column": "file_exists", "value_set": [True]}),
        ("captions_type", in_set, {"column": "captions_type", "value_set": ["list"]}),
        ("n_captions", "ExpectColumnValuesToBeBetween",
         {"column": "n_captions", "min_value": 1, "max_value": cfg.max_captions}),
        ("timestamps", in_set, {"column": "timestamps_ok", "value_set": [True]}),
    ]  # fmt: skip


def _caption_suite(cfg: Any) -> list[Expectation]:
    return [
        ("caption_type", "ExpectColumnValuesToBeInSet", {"column": "caption_type", "value_set": ["str"]}),
        ("caption_blank", "ExpectColumnValuesToMatchRegex", {"column": "caption", "regex": r"\S"}),
        ("caption_words", "ExpectColumnValuesToBeBetween",
         {"column": "words", "min_value": cfg.min_caption_words, "max_value": cfg.max_caption_words}),
    ]  # fmt: skip


def _video_suite(cfg: Any) -> list[Expectation]:
    between = "ExpectColumnValuesToBeBetween"
    return [
        ("frames", between, {"column": "frames", "min_value": 1}),
        ("fps", between, {"column": "fps", "min_value": cfg.min_fps, "max_value": cfg.max_fps}),
        ("short_side", between, {"column": "short_side", "min_value": cfg.min_side}),
        ("long_side", between, {"column": "long_side", "max_value": cfg.max_side}),
    ]


_SUITES: dict[str, Callable[[Any], list[Expectation]]] = {
    "items": _item_suite,
    "captions": _caption_suite,
    "videos": _video_suite,
}


def _suite(frame: str, cfg: Any) -> list[Expectation]:
    """``(check name, expectation class, kwargs)`` of each expectation on ``frame``."""
    if frame not in _SUITES:
        raise ValueError(f"unknown frame {frame!r}")
    return _SUITES[frame](cfg)


@lru_cache(maxsize=1)
def _context() -> Any:
    """One ephemeral GX context per process (nothing written to disk, no analytics: the context's
    own setting, whatever the environment says)."""
    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suite(frame: str, rows: list[Row], cfg: Any) -> dict[str, list[int]]:
    """Validate ``rows`` against the ``frame`` suite: ``{check: [positions of bad rows]}``.

    Changes no process state: GX's analytics are off in its context's config; environment
    switches such as ``GX_ANALYTICS_ENABLED`` are the program's to set (the ``tempstop`` CLI
    sets them at start, see the module docstring)."""
    if not rows:
        return {}
    df = pd.DataFrame(rows)
    ctx = _context()
    name = f"tempstop-{frame}"
    try:
        source = ctx.data_sources.get(name)
    except (KeyError, ValueError, LookupError):
        source = ctx.data_sources.add_pandas(name)
    if name in [a.name for a in source.assets]:
        batch_def = source.get_asset(name).get_batch_definition(name)
    else:
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    suite = gx.ExpectationSuite(name=name)
    for check, cls, kwargs in _suite(frame, cfg):
        suite.add_expectation(getattr(gx.expectations, cls)(**kwargs, meta={"check": check}))
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failures: dict[str, list[int]] = {}
    for res in result.results:
        check = res.expectation_config.meta["check"]
        info = res.exception_info or {}
        if info.get("raised_exception"):
            raise RuntimeError(
                f"great_expectations failed on check {check!r}: {info.get('exception_message')}"
            )
        if not res.success:
            failures[check] = [int(i) for i in res.result.get("unexpected_index_list") or []]
    return failures


def timed_suite(frame: str, rows: list[Row], cfg: Any, timings: dict[str, float]) -> dict[str, list[int]]:
    """:func:`run_suite`, adding its wall time (and the GX context's creation) to ``timings``."""
    t0 = time.perf_counter()
    if _context.cache_info().currsize == 0:
        _context()
        timings["gx_setup_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
    out = run_suite(frame, rows, cfg)
    timings["gx_validate_s"] = round(timings.get("gx_validate_s", 0.0) + time.perf_counter() - t0, 3)
    return out
