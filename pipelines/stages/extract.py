"""Decode model.frames frames per video (per caption segment with extract.per_segment),
uniformly in time, resized and centre-cropped to extract.size, into OUT/<split>/index.json +
arrays/.

The annotations first pass the annotation checks of `tempstop validate` (a split with an error
is refused, naming every problem). Resumable: finished videos are skipped. Videos that fail
are named, listed under 'failed' in the index, and the rest go on.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tempstop.config import ProjectConfig
from tempstop.data.annotations import AnnotationError
from tempstop.data.extract import ExtractError, extract_split
from tempstop.data.store import StoreError
from tempstop.utils import atomic_write_json
from tempstop_pipelines.options import ProgressJob, add_params_arg, report_failures
from tempstop_pipelines.stages.validate import find_split_names


@dataclass(frozen=True)
class Extract(ProgressJob):
    """``tempstop extract``: the dataset root, the output root and which split."""

    data: str
    out: str
    split: str | None = None
    annotations: str | None = None
    summary: str | None = None


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop extract``."""
    p.add_argument("--data", required=True, help="dataset root holding split folders (e.g. data/demo)")
    p.add_argument("--out", required=True, help="output root; each split goes to OUT/<split>/")
    p.add_argument("--split", default=None, help="extract only this split (default: every split found)")
    p.add_argument("--annotations", default=None, help="annotation file to use instead (needs --split)")
    p.add_argument("--summary", default=None, help="also write the per-split summaries to this JSON file")
    ProgressJob.add_arguments(p)
    add_params_arg(p)
    p.set_defaults(job=Extract, run=run)


def run(cfg: ProjectConfig, job: Extract, tags: dict[str, str] | None = None) -> int:
    """Extract each split; exit 1 if a split with videos produced no item."""
    root, out = Path(job.data), Path(job.out)
    if job.annotations and not job.split:
        print("tempstop extract: --annotations needs --split", file=sys.stderr)
        return 2
    splits = find_split_names(root, job.split, "extract")
    if splits is None:
        return 2
    summaries, status = {}, 0
    for split in splits:
        try:
            s = extract_split(
                root / split, out / split, cfg.extract, cfg.model.frames, progress=job.progress,
                datatype=cfg.data.datatype, annotations=job.annotations, checks=cfg.validate_,
            )  # fmt: skip
        except (AnnotationError, ExtractError, StoreError) as exc:
            print(f"tempstop extract: {split}: {exc}", file=sys.stderr)
            return 2
        summaries[split] = s
        rate = f", {s['videos_per_s']:.1f} videos/s" if s["done"] else ""
        print(
            f"{split}: {s['videos']} videos: {s['done']} extracted, {s['skipped']} already done, "
            f"{s['failed']} failed; {s['items']} items in {s['seconds']:.1f} s{rate} -> {s['store']}"
        )
        report_failures(root / split, s["failures"], sys.stdout)
        if s["videos"] and not s["items"]:
            status = 1
    if job.summary:
        atomic_write_json(job.summary, summaries)
    return status
