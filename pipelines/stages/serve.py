"""The search service and its web page over a collection index.

    tempstop serve --index outputs/index            # http://127.0.0.1:8000

--index is a collection index (`tempstop index` writes one) or a folder whose CURRENT file
names the live one (what `tempstop reindex` and the re-index flow keep up to date); a changed
index is swapped in while the service runs, without dropping a query. The model is the one
the index was built with (its checkpoint or registry version).
"""

from __future__ import annotations

import argparse
import sys

import uvicorn

from tempstop.collection import CollectionError
from tempstop.inference import CheckpointError
from tempstop_pipelines.serve.app import create_app
from tempstop_pipelines.serve.engine import EngineHolder, load_engine


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop serve``."""
    p.add_argument("--index", required=True, help="collection index folder (or a folder with a CURRENT file)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--checkpoint", default=None, help="the model, if not the one the index names (must be the same)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--watch", type=float, default=2.0, help="seconds between checks for a new index (0: never)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI for models:/ sources (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    """Open the index with its model and serve it until interrupted."""
    kw = {"checkpoint": args.checkpoint, "device": args.device, "tracking_uri": args.tracking_uri}
    try:
        engine = load_engine(args.index, **kw)
    except (CollectionError, CheckpointError, FileNotFoundError) as exc:
        print(f"tempstop serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(EngineHolder(args.index, engine, **kw), watch_interval_s=args.watch or None)
    print(f"serving {len(engine.search)} videos of {engine.search.dir} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
