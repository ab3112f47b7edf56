"""The ``tempstop-reindex`` Prefect flow: embed the served collection with the new champion.

``tempstop promote`` emits the event ``tempstop.champion.moved`` when it moves the ``champion``
alias (with a Prefect API configured); the ``reindex-on-promotion`` deployment of prefect.yaml
is triggered by it and runs this flow on a worker: the collection is embedded with the new
version into ``INDEX/v<N>``, then ``INDEX/CURRENT`` points at it, and every ``tempstop serve
--index INDEX`` swaps to it without dropping a query.

    python -m tempstop_pipelines.flows.reindex --index outputs/index --model models:/tempstop-unified@champion
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

FLOW_NAME = "tempstop-reindex"


@task(name="reindex", cache_policy=NO_CACHE, log_prints=True)
def reindex_task(index: str, model: str, videos: str | None, tracking_uri: str | None) -> dict:
    """Load ``model`` and re-embed the collection into a new version of ``index``."""
    import torch

    from tempstop.collection import IndexSettings
    from tempstop.collection.versions import reindex
    from tempstop.loading import model_identity
    from tempstop.training.checkpoint import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path, info = model_identity(model, tracking_uri)
    net, cfg, _ = load_model(path, device)
    settings = IndexSettings(frames=cfg.model.frames, size=getattr(net, "image_size", cfg.extract.size))
    summary = reindex(index, net, info, settings, videos, device=device, progress=False)
    get_run_logger().info(
        "%s: CURRENT -> %s (was %s), %d videos, %d embedded", index, summary["version"], summary["previous"],
        summary["videos"], summary["embedded"],
    )  # fmt: skip
    return {k: summary[k] for k in ("version", "previous", "videos", "embedded", "reused", "failed", "seconds")}


@flow(name=FLOW_NAME, log_prints=True)
def reindex_flow(
    index: str = "outputs/index",
    model: str = "models:/tempstop-unified@champion",
    videos: str | None = None,
    tracking_uri: str | None = None,
    workdir: str | None = None,
) -> dict:
    """Embed the collection of ``index`` (or ``videos``) with ``model`` and make it current.

    Args:
        index: the versioned index root a service serves (``tempstop serve --index``).
        model: checkpoint or registry URI; the deployment passes the promoted version.
        videos: the folder to index (default: the one the current version covers).
        tracking_uri: MLflow URI for ``models:/`` (default: ``$MLFLOW_TRACKING_URI``, else
            the project's ``sqlite:///mlflow.db``).
        workdir: project directory to run in (default: the current one).
    """
    if workdir:
        os.chdir(workdir)
    return reindex_task(index, model, videos, tracking_uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.reindex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--index", default="outputs/index")
    parser.add_argument("--model", default="models:/tempstop-unified@champion")
    parser.add_argument("--videos", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(reindex_flow(index=args.index, model=args.model, videos=args.videos), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
