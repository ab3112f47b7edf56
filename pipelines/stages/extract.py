"""Stage `extract`: decode, sample, resize and store the frames of every split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..common import add_params_arg, load_params, report_failures


def register(sub) -> None:
    """Add the ``extract`` sub-command."""
    p = sub.add_parser(
        "extract",
        help="pre-extract uniformly sampled frames into frame stores (OUT/<split>/)",
        description="Decode model.frames frames per video (per caption segment with "
        "extract.per_segment), uniformly in time, resized and centre-cropped to extract.size, "
        "into OUT/<split>/index.json + arrays/. The annotations first pass the annotation checks of "
        "`tempstop validate` (a split with an error is refused, naming every problem). Resumable: "
        "finished videos are skipped. Videos that fail are named, listed under 'failed' in the "
        "index, and the rest go on.",
    )
    p.add_argument("--data", required=True, help="dataset root holding split folders (e.g. data/demo)")
    p.add_argument("--out", required=True, help="output root; each split goes to OUT/<split>/")
    p.add_argument("--split", default=None, help="extract only this split (default: every split found)")
    p.add_argument("--annotations", default=None, help="annotation file to use instead (needs --split)")
    p.add_argument("--summary", default=None, help="also write the per-split summaries to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_params_arg(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Extract each split; exit 1 if a split with videos produced no item."""
    from tempstop.data.annotations import AnnotationError, find_splits
    from tempstop.data.extract import ExtractError, extract_split
    from tempstop.data.store import StoreError
    from tempstop.utils import atomic_write_json

    cfg = load_params(args)
    root, out = Path(args.data), Path(args.out)
    if args.annotations and not args.split:
        print("tempstop extract: --annotations needs --split", file=sys.stderr)
        return 2
    try:
        splits = [args.split] if args.split else find_splits(root)
    except (AnnotationError, FileNotFoundError) as exc:
        print(f"tempstop extract: {exc}", file=sys.stderr)
        return 2
    if not splits:
        print(f"tempstop extract: {root}: no split folders (with annotations.json) found", file=sys.stderr)
        return 2

    summaries, status = {}, 0
    for split in splits:
        try:
            s = extract_split(
                root / split, out / split, cfg.extract, cfg.model.frames, progress=not args.no_progress,
                datatype=cfg.data.datatype, annotations=args.annotations, checks=cfg.validate_,
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
    if args.summary:
        atomic_write_json(args.summary, summaries)
    return status
