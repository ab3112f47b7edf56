"""Encode the query with the index's model and print the top-k videos by cosine similarity.

    tempstop search --index outputs/index "a red circle moves left, then a blue square moves up" --top-k 5

Without a query, read one query per line from standard input: the model is loaded once, so
each further query costs milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tempstop.collection import MAX_TOP_K, CollectionError, Filters, open_collection
from tempstop.inference import CheckpointError


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop search``."""
    p.add_argument("query", nargs="*", help="query text (several words; quote it or not)")
    p.add_argument("--index", required=True, help="index folder written by tempstop index")
    p.add_argument("--checkpoint", default=None, help="the index's model from another place (must be the same)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--min-duration", type=float, default=None, help="only videos at least this long (s)")
    p.add_argument("--max-duration", type=float, default=None, help="only videos at most this long (s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timings", action="store_true", help="print where the time went")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    """Print the top-k videos for the query (or each stdin line)."""
    t0 = time.perf_counter()
    if not 1 <= args.top_k <= MAX_TOP_K:
        print(f"tempstop search: --top-k must be 1..{MAX_TOP_K}", file=sys.stderr)
        return 2
    try:
        engine = open_collection(args.index, args.checkpoint, args.device)
    except (CollectionError, CheckpointError, FileNotFoundError) as exc:
        print(f"tempstop search: {exc}", file=sys.stderr)
        return 2
    filters = Filters(min_duration=args.min_duration, max_duration=args.max_duration)
    queries = [" ".join(args.query)] if args.query else (line.strip() for line in sys.stdin)
    for query in queries:
        if not query:
            continue
        hits = engine.search([query], args.top_k, filters)[0]
        if args.json:
            print(json.dumps({"query": query, "hits": hits}))
        else:
            _print_hits(query, hits, engine)
        if args.timings:
            parts = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in engine.timings.items())
            print(f"[{len(engine)} videos; {parts}; total {(time.perf_counter() - t0) * 1000:.0f} ms]", file=sys.stderr)
    return 0


def _print_hits(query: str, hits: list[dict], engine) -> None:
    print(f"query: {query}")
    root = engine.manifest["root"]
    for h in hits:
        seg = f" [{h['segment'][0]:.1f}-{h['segment'][1]:.1f} s]" if h.get("segment") else ""
        where = f"  {root}/{h['path']}" if h["path"] else ""
        print(f"{h['rank']:3d}. {h['score']:.4f}  {h['video_id']}{seg}{where}")
