"""Stages `index` and `search`: embed a video collection once, then query it with text.

    tempstop index --checkpoint outputs/checkpoints/best_model.pth --data data/demo/test --out outputs/index
    tempstop search --index outputs/index "a red circle moves left, then a blue square moves up" --top-k 5

Without a query, ``search`` reads one query per line from standard input (the model is
loaded once, so each further query costs milliseconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pipelines.common import add_params_arg, load_params


def register(sub) -> None:
    """Add the ``index`` and ``search`` sub-commands."""
    p = sub.add_parser(
        "index",
        help="embed a video collection into a search index",
        description="Embed every video of --data (a frame store, a split folder, or a dataset root "
        "with --split) with a checkpoint's video encoder; write normalised embeddings, video ids, "
        "files and the model config to --out (a .pt file or a folder).",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or models:/NAME@alias")
    p.add_argument("--data", required=True, help="frame store, split folder or dataset root")
    p.add_argument("--split", default=None, help="split under a dataset root (default: evaluate.split)")
    p.add_argument("--out", required=True, help="index file (*.pt) or folder")
    p.add_argument("--float32", action="store_true", help="store float32 embeddings (default float16)")
    p.add_argument("--batch-size", type=int, default=None, help="default: evaluate.batch_size")
    p.add_argument(
        "--cache", default=None, help="frame cache for raw splits (default: training.frames_cache)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--no-progress", action="store_true")
    add_params_arg(p)
    p.set_defaults(func=main_index)

    q = sub.add_parser(
        "search",
        help="rank the videos of an index for a text query",
        description="Encode the query with the index's checkpoint (or --checkpoint) and print the "
        "top-k videos by cosine similarity. No query: read queries from stdin, one per line.",
    )
    q.add_argument("query", nargs="*", help="query text (several words; quote it or not)")
    q.add_argument("--index", required=True, help="index file or folder written by tempstop index")
    q.add_argument("--checkpoint", default=None, help="checkpoint to encode text with (default: the index's)")
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--timings", action="store_true", help="print where the time went")
    q.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    q.set_defaults(func=main_search)


def main_index(args: argparse.Namespace) -> int:
    """Build and save the index; exit 2 when the checkpoint or data cannot be used."""
    import torch

    from pipelines.stages.evaluate import resolve_data
    from pipelines.tracking import TrackingError
    from tempstop.data.extract import ensure_store
    from tempstop.data.store import FrameStore, StoreError
    from tempstop.search import build_index, save_index
    from tempstop.training.checkpoint import CheckpointError, load_model

    params = load_params(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        checkpoint = args.checkpoint
        if checkpoint.startswith(("models:/", "runs:/")):
            from pipelines.tracking import resolve_model_uri

            checkpoint = resolve_model_uri(checkpoint, params)
        model, cfg, _ = load_model(checkpoint, device)
        path, _ = resolve_data(args.data, args.split or params.evaluate.split)
        store = FrameStore(ensure_store(path, args.cache or params.training.frames_cache, cfg.extract))
        index = build_index(
            model,
            store,
            device,
            cfg.to_dict(),
            checkpoint,
            args.batch_size or params.evaluate.batch_size,
            torch.float32 if args.float32 else torch.float16,
            progress=not args.no_progress,
        )
    except (CheckpointError, StoreError, TrackingError, FileNotFoundError) as exc:
        print(f"tempstop index: {exc}", file=sys.stderr)
        return 2
    target = save_index(index, args.out)
    n, d = index["embeddings"].shape
    print(f"indexed {n} videos ({d}-d, {index['embeddings'].dtype}) in {index['seconds']:.1f} s -> {target}")
    return 0


def _print_hits(query: str, hits: list[dict]) -> None:
    print(f"query: {query}")
    for h in hits:
        where = f"  {h['file']}" if h["file"] else ""
        seg = f" [{h['segment'][0]:.1f}-{h['segment'][1]:.1f} s]" if h["segment"] else ""
        print(f"{h['rank']:3d}. {h['score']:.4f}  {h['video_id']}{seg}{where}")


def main_search(args: argparse.Namespace) -> int:
    """Print the top-k videos for the query (or each stdin line)."""
    from tempstop.search import SearchIndexError, VideoSearch
    from tempstop.training.checkpoint import CheckpointError

    t0 = time.perf_counter()
    try:
        engine = VideoSearch.open(args.index, args.checkpoint, args.device)
    except (SearchIndexError, CheckpointError) as exc:
        print(f"tempstop search: {exc}", file=sys.stderr)
        return 2
    queries = [" ".join(args.query)] if args.query else (line.strip() for line in sys.stdin)
    for query in queries:
        if not query:
            continue
        hits = engine.search(query, args.top_k)
        if args.json:
            print(json.dumps({"query": query, "hits": hits}))
        else:
            _print_hits(query, hits)
        if args.timings:
            parts = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in engine.timings.items())
            print(
                f"[{len(engine)} videos; {parts}; total {(time.perf_counter() - t0) * 1000:.0f} ms]",
                file=sys.stderr,
            )
    return 0
