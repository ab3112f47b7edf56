"""Stage `validate`: annotation expectations and video probes for every split of a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..common import add_params_arg, load_params

DEFAULT_REPORT = "reports/validate.json"


def register(sub) -> None:
    """Add the ``validate`` sub-command."""
    p = sub.add_parser(
        "validate",
        help="check annotations (great_expectations) and probe every video",
        description="Validate the splits of a dataset root (folders holding annotations.json). "
        "Prints a report, writes it as JSON, and exits non-zero on any error. With --drop-invalid, "
        "writes <report dir>/<split>.annotations.clean.json without the invalid items instead and "
        "exits 0 if every split keeps at least one item. Source files are never modified.",
    )
    p.add_argument("--data", required=True, help="dataset root holding split folders (e.g. data/demo)")
    p.add_argument("--split", default=None, help="validate only this split (default: every split found)")
    p.add_argument(
        "--report", default=DEFAULT_REPORT, help=f"JSON report to write (default: {DEFAULT_REPORT})"
    )
    p.add_argument(
        "--drop-invalid", action="store_true", help="write cleaned annotation files beside the report"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_params_arg(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Validate, print, write the report (and cleaned files); return the exit status."""
    from tempstop.data.annotations import AnnotationError, find_splits
    from tempstop.data.validate import format_report, report_dict, validate_split, write_json

    cfg = load_params(args).validate_
    root = Path(args.data)
    if not root.is_dir():
        print(f"tempstop validate: {root}: dataset folder not found", file=sys.stderr)
        return 2
    try:
        splits = [args.split] if args.split else find_splits(root)
    except AnnotationError as exc:
        print(f"tempstop validate: {exc}", file=sys.stderr)
        return 2
    if not splits:
        print(f"tempstop validate: {root}: no split folders (with annotations.json) found", file=sys.stderr)
        return 2

    results = [validate_split(root / s, cfg, progress=not args.no_progress) for s in splits]
    print(format_report(results))
    report = Path(args.report)
    write_json(report, report_dict(results))
    print(f"report: {report}")

    if not args.drop_invalid:
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
