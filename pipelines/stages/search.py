"""Stages `index` and `search`: embed a video collection once, then query it with text.

    tempstop index --checkpoint outputs/stop/best_model.pth --videos ~/my_videos --out outputs/index
    tempstop index --checkpoint models:/tempstop-unified@champion --data data/demo --split test --out outputs/index
    tempstop search --index outputs/index "a red circle moves left, then a blue square moves up" --top-k 5

``--videos`` indexes every video under a folder (mp4, mkv, webm, avi, mov, m4v; no
annotations needed), incrementally: a re-run embeds only new or changed files and drops deleted
ones. ``--data`` indexes a dataset split (its frame store, extracted first if needed). Either
way the index is a folder (layout: ``tempstop.collection.manifest``) that ``tempstop serve``
serves. Without a query, ``search`` reads one query per line from standard input (the model is
loaded once, so each further query costs milliseconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..common import add_params_arg, load_params


def register(sub) -> None:
    """Add the ``index`` and ``search`` sub-commands."""
    p = sub.add_parser(
        "index",
        help="embed a folder of videos (or a dataset split) into a search index",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or models:/NAME@alias")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="a folder of videos, searched recursively")
    source.add_argument("--data", help="frame store, split folder or dataset root (with --split)")
    p.add_argument("--split", default=None, help="split under a dataset root (default: evaluate.split)")
    p.add_argument("--out", required=True, help="the index folder (created or updated)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (--videos)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a video may take to decode (--videos)")
    p.add_argument("--batch-size", type=int, default=None, help="videos per model batch (default: evaluate.batch_size)")
    p.add_argument("--shard-size", type=int, default=1000, help="videos per shard file")
    p.add_argument("--vector-index", default=None, help="vector index type (default: by collection size)")
    p.add_argument("--cache", default=None, help="frame cache for raw splits (default: data.frames_cache)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--no-progress", action="store_true")
    add_params_arg(p)
    p.set_defaults(func=main_index)

    q = sub.add_parser(
        "search",
        help="rank the videos of an index for a text query",
        description="Encode the query with the index's model and print the top-k videos by cosine "
        "similarity. No query: read queries from stdin, one per line.",
    )
    q.add_argument("query", nargs="*", help="query text (several words; quote it or not)")
    q.add_argument("--index", required=True, help="index folder written by tempstop index")
    q.add_argument("--checkpoint", default=None, help="the index's model from another place (must be the same)")
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--min-duration", type=float, default=None, help="only videos at least this long (s)")
    q.add_argument("--max-duration", type=float, default=None, help="only videos at most this long (s)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--timings", action="store_true", help="print where the time went")
    q.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    q.set_defaults(func=main_search)

    r = sub.add_parser(
        "reindex",
        help="embed a collection with another model into a new index version and make it current",
        description="Index the videos with --checkpoint (e.g. models:/tempstop-unified@champion after a "
        "promotion) into INDEX/<version> (v<N> for a registry version, sha-<hash> for a file), then point "
        "INDEX/CURRENT at it atomically: a running `tempstop serve --index INDEX` swaps to it without "
        "dropping a query. The videos default to the folder the current version covers.",
    )
    r.add_argument("--index", required=True, help="the versioned index root (holds CURRENT)")
    r.add_argument("--checkpoint", required=True, help="checkpoint file or models:/NAME@alias")
    r.add_argument("--videos", default=None, help="folder to index (default: the current version's)")
    r.add_argument("--keep", type=int, default=2, help="versions kept, the live one included (default 2)")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--timeout", type=float, default=120.0)
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--device", choices=["cpu", "cuda"], default=None)
    r.add_argument("--no-progress", action="store_true")
    add_params_arg(r)
    r.set_defaults(func=main_reindex)


def main_index(args: argparse.Namespace) -> int:
    """Build or update the index; exit 2 with one line when the checkpoint or data cannot be used."""
    import torch

    from tempstop.collection import CollectionError, IndexSettings, index_store, index_videos
    from tempstop.data.extract import ExtractError
    from tempstop.data.store import StoreError
    from tempstop.loading import model_identity
    from tempstop.training.checkpoint import CheckpointError, load_model

    from ..tracking import tracking_uri

    params = load_params(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        path, info = model_identity(args.checkpoint, tracking_uri(params))
        model, cfg, _ = load_model(path, device)
        store = None if args.videos else _open_split(args, params, cfg)
        settings = IndexSettings(
            frames=store.frames if store else cfg.model.frames,
            size=store.size if store else getattr(model, "image_size", cfg.extract.size),
            shard_size=args.shard_size, batch_size=args.batch_size or params.evaluate.batch_size,
            workers=args.workers, timeout_s=args.timeout, vector_index=args.vector_index,
        )  # fmt: skip
        progress = not args.no_progress
        if store is None:
            summary = index_videos(model, args.videos, args.out, settings, info, device, progress)
        else:
            summary = index_store(model, store, args.out, settings, info, device, progress)
    except (CheckpointError, StoreError, CollectionError, ExtractError, FileNotFoundError, ValueError) as exc:
        print(f"tempstop index: {exc}", file=sys.stderr)
        return 2
    for failure in summary["failed"]:
        print(f"  failed: {failure['path']}: {failure['reason']}", file=sys.stderr)
    print(
        f"indexed {summary['videos']} videos ({summary['embedded']} embedded, {summary['reused']} unchanged, "
        f"{summary['removed']} removed, {len(summary['failed'])} failed) in {summary['seconds']:.1f} s -> "
        f"{summary['index']} ({summary['vector_index']['type'] if summary['vector_index'] else 'empty'})"
    )
    return 0


def main_reindex(args: argparse.Namespace) -> int:
    """A new index version for the model, then CURRENT; exit 2 with one line on bad input."""
    import torch

    from tempstop.collection import CollectionError, IndexSettings
    from tempstop.collection.versions import reindex
    from tempstop.loading import model_identity
    from tempstop.training.checkpoint import CheckpointError, load_model

    from ..tracking import tracking_uri

    params = load_params(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        path, info = model_identity(args.checkpoint, tracking_uri(params))
        model, cfg, _ = load_model(path, device)
        settings = IndexSettings(
            frames=cfg.model.frames, size=getattr(model, "image_size", cfg.extract.size),
            batch_size=args.batch_size or params.evaluate.batch_size, workers=args.workers, timeout_s=args.timeout,
        )  # fmt: skip
        summary = reindex(args.index, model, info, settings, args.videos, args.keep, device, not args.no_progress)
    except (CheckpointError, CollectionError, FileNotFoundError, ValueError) as exc:
        print(f"tempstop reindex: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.index}: CURRENT -> {summary['version']} (was {summary['previous']}); {summary['videos']} videos "
        f"({summary['embedded']} embedded, {summary['reused']} unchanged, {len(summary['failed'])} failed) in "
        f"{summary['seconds']:.1f} s" + (f"; removed {', '.join(summary['removed_versions'])}" if summary["removed_versions"] else "")
    )
    return 0


def _open_split(args, params, cfg):
    """The frame store of ``--data`` (a split folder is extracted into the frame cache first,
    after the annotation checks of ``tempstop validate``)."""
    from tempstop.data.extract import ensure_store
    from tempstop.data.store import FrameStore

    from ..common import report_failures
    from .evaluate import resolve_data

    path, _ = resolve_data(args.data, args.split or params.evaluate.split)
    store, extracted = ensure_store(
        path, args.cache or params.data.frames_cache, cfg.extract, cfg.model.frames,
        datatype=cfg.data.datatype, checks=params.validate_, progress=not args.no_progress,
    )  # fmt: skip
    if extracted:
        report_failures(path, extracted["failures"])
    return FrameStore(store)


def main_search(args: argparse.Namespace) -> int:
    """Print the top-k videos for the query (or each stdin line)."""
    from tempstop.collection import MAX_TOP_K, CollectionError, Filters, open_collection
    from tempstop.training.checkpoint import CheckpointError

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
