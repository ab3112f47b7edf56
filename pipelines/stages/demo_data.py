"""Stage `demo-data`: generate the two-event moving-shapes benchmark (DESIGN section 6)."""

from __future__ import annotations

import argparse

from ..common import add_params_arg


def register(sub) -> None:
    """Add the ``demo-data`` sub-command."""
    p = sub.add_parser(
        "demo-data",
        help="generate the moving-shapes demo dataset",
        description="Generate the two-event moving-shapes benchmark into OUT/{train,val,test}/ "
        "(params: the `demo` section, e.g. --set demo.train_quadruples=10). Rerunning with the "
        "same params skips clips that are already up to date.",
    )
    p.add_argument("--out", required=True, help="dataset root to write (e.g. data/demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_params_arg(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Generate the dataset and print a one-line summary per split."""
    from tempstop.data.demo import generate_demo

    from ..common import load_params

    cfg = load_params(args).demo
    try:
        summary = generate_demo(args.out, cfg, progress=not args.no_progress)
    except ValueError as exc:  # impossible sizes: the message names the param
        raise SystemExit(f"tempstop demo-data: {exc}") from None
    for split, clips in summary["splits"].items():
        print(f"{split:>5}: {clips} clips ({clips // 4} quadruples) in {args.out}/{split}")
    print(
        f"wrote {summary['written']} clips, {summary['skipped']} already up to date, "
        f"{summary['seconds']:.1f} s"
    )
    return 0
