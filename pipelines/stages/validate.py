"""Validate the splits of a dataset root (folders holding annotations.json): annotation
expectations (great_expectations) and a probe of every video.

Prints a report, writes it as JSON, and exits non-zero on any error. With --drop-invalid,
writes <report dir>/<split>.annotations.clean.json without the invalid items instead and exits
0 if every split keeps at least one item. Source files are never modified.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tempstop.config import ProjectConfig
from tempstop.data.annotations import AnnotationError, find_splits
from tempstop.data.validate import format_report, report_dict, validate_split, write_json
from tempstop_pipelines.options import ProgressJob, add_params_arg

DEFAULT_REPORT = "reports/validate.json"


@dataclass(frozen=True)
class Validate(ProgressJob):
    """``tempstop validate``: what to check and where the report goes."""

    data: str
    report: str = DEFAULT_REPORT
    split: str | None = None
    drop_invalid: bool = False


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop validate``."""
    p.add_argument("--data", required=True, help="dataset root holding split folders (e.g. data/demo)")
    p.add_argument("--split", default=None, help="validate only this split (default: every split found)")
    p.add_argument("--report", default=DEFAULT_REPORT, help=f"JSON report to write (default: {DEFAULT_REPORT})")
    p.add_argument("--drop-invalid", action="store_true", help="write cleaned annotation files beside the report")
    ProgressJob.add_arguments(p)
    add_params_arg(p)
    p.set_defaults(job=Validate, run=run)


def find_split_names(root: Path, split: str | None, command: str) -> list[str] | None:
    """``[split]``, or every split folder of ``root``; None (after one line on stderr) when
    there is none."""
    if not root.is_dir():
        print(f"tempstop {command}: {root}: dataset folder not found", file=sys.stderr)
        return None
    try:
        splits = [split] if split else find_splits(root)
    except AnnotationError as exc:
        print(f"tempstop {command}: {exc}", file=sys.stderr)
        return None
    if not splits:
        print(f"tempstop {command}: {root}: no split folders (with annotations.json) found", file=sys.stderr)
        return None
    return splits


def run(cfg: ProjectConfig, job: Validate, tags: dict[str, str] | None = None) -> int:
    """Validate, print, write the report (and cleaned files); return the exit status."""
    root = Path(job.data)
    splits = find_split_names(root, job.split, "validate")
    if splits is None:
        return 2
    results = [validate_split(root / s, cfg.validate_, progress=job.progress) for s in splits]
    print(format_report(results))
    report = Path(job.report)
    write_json(report, report_dict(results))
    print(f"report: {report}")
    if not job.drop_invalid:
        return 0 if all(r.ok for r in results) else 1
    status = 0
    for r in results:
        clean = r.clean_items()
        out = report.parent / f"{r.split}.annotations.clean.json"
        write_json(out, clean)
        print(f"{r.split}: {len(clean)} of {r.items} items kept -> {out}")
        if not clean:
            status = 1
    return status
