"""Import an official dataset (MSR-VTT, DiDeMo, ActivityNet Captions, VATEX) into the native
layout: its annotation files become OUT/<split>/annotations.json and its videos are symlinked
into OUT/<split>/videos/ (nothing is copied, sources are only read). Videos are matched by
file stem (.mp4 .mkv .webm .avi .m4v .mov, searched recursively); missing ones are reported
and skipped.
"""

from __future__ import annotations

import argparse
import sys

from tempstop.data.importers import PARSERS, DatasetImportError, import_dataset
from tempstop_pipelines.options import ProgressJob


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop import-dataset``."""
    p.add_argument("--datatype", required=True, choices=tuple(PARSERS))
    p.add_argument("--annotations", required=True, help="folder with the official annotation files")
    p.add_argument("--videos", required=True, help="folder with the video files (searched recursively)")
    p.add_argument("--out", required=True, help="dataset root to write (e.g. data/msrvtt)")
    p.add_argument("--val-from-train", type=int, default=0, metavar="N",
                   help="move N training videos (seeded) into a val split, for datasets without one (MSR-VTT: 500)")  # fmt: skip
    ProgressJob.add_arguments(p)
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    """Import, then print one summary line per split."""
    try:
        result = import_dataset(args.datatype, args.annotations, args.videos, args.out, progress=args.progress,
                                val_from_train=args.val_from_train)  # fmt: skip
    except DatasetImportError as exc:
        print(f"tempstop import-dataset: {exc}", file=sys.stderr)
        return 2
    for split, s in result["splits"].items():
        line = f"{split:>5}: {s['videos']} videos, {s['captions']} captions -> {args.out}/{split}"
        if s["missing"]:
            line += f"  ({s['missing']} missing videos skipped, e.g. {', '.join(s['missing_examples'])})"
        print(line)
    return 0
