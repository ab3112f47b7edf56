"""Stage `plots` (not implemented yet)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("plots", help="(not implemented yet)")
    p.set_defaults(func=main)


def main(args) -> int:
    raise SystemExit("tempstop plots: not implemented yet")
