"""Stage `import-dataset`: official MSR-VTT / DiDeMo / ActivityNet / VATEX -> native layout."""

from __future__ import annotations

import argparse

DATATYPES = ("msrvtt", "didemo", "activitynet", "vatex")


def register(sub) -> None:
    """Add the ``import-dataset`` sub-command."""
    p = sub.add_parser(
        "import-dataset",
        help="import an official dataset (annotations + videos) into the native layout",
        description="Convert official annotation files into OUT/<split>/annotations.json and "
        "symlink the videos into OUT/<split>/videos/ (nothing is copied, sources are only read). "
        "Videos are matched by file stem (.mp4 .mkv .webm .avi .m4v .mov, searched recursively); "
        "missing ones are reported and skipped.",
    )
    p.add_argument("--datatype", required=True, choices=DATATYPES)
    p.add_argument("--annotations", required=True, help="folder with the official annotation files")
    p.add_argument("--videos", required=True, help="folder with the video files (searched recursively)")
    p.add_argument("--out", required=True, help="dataset root to write (e.g. data/msrvtt)")
    p.add_argument(
        "--val-from-train",
        type=int,
        default=0,
        metavar="N",
        help="move N training videos (seeded) into a val split, for datasets without one (MSR-VTT: 500)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Import, then print one summary line per split."""
    from tempstop.data.importers import DatasetImportError, import_dataset

    try:
        result = import_dataset(
            args.datatype,
            args.annotations,
            args.videos,
            args.out,
            progress=not args.no_progress,
            val_from_train=args.val_from_train,
        )
    except DatasetImportError as exc:
        raise SystemExit(f"tempstop import-dataset: {exc}") from None
    for split, s in result["splits"].items():
        line = f"{split:>5}: {s['videos']} videos, {s['captions']} captions -> {args.out}/{split}"
        if s["missing"]:
            line += f"  ({s['missing']} missing videos skipped, e.g. {', '.join(s['missing_examples'])})"
        print(line)
    return 0
