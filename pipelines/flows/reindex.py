"""The ``tempstop-reindex`` Prefect flow: embed the served collection with the new champion.

``tempstop promote`` emits the event ``tempstop.champion.moved`` when it moves the ``champion``
alias (with a Prefect API configured); the ``reindex-on-promotion`` deployment of prefect.yaml
is triggered by it and runs this flow on a worker: the collection is embedded with the new
version into ``INDEX/v<N>``, then ``INDEX/CURRENT`` points at it, and every ``tempstop serve
--index INDEX`` swaps to it without dropping a query. The task is ``tempstop reindex``'s own
stage function with a typed job; the ``index`` section of the params (``params``, default
params.yaml in the working directory) says how.

    python -m tempstop_pipelines.flows.reindex --index outputs/serving --model models:/tempstop-unified@champion
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tempstop_pipelines.options import project_config
from tempstop_pipelines.stages.reindex import Reindex, reindex_collection

FLOW_NAME = "tempstop-reindex"


#: What the flow run returns of the reindex summary.
RESULT_KEYS = ("version", "previous", "videos", "embedded", "reused", "failed", "seconds")


@task(name="reindex", cache_policy=NO_CACHE, log_prints=True)
def reindex_task(job: Reindex, params: str | None, tracking_uri: str | None) -> dict:
    """Re-embed the collection into a new version of ``job.index`` with ``job.checkpoint``."""
    cfg = project_config(params, {"tracking.uri": tracking_uri} if tracking_uri else None, "flow parameters")
    summary = reindex_collection(cfg, job)
    get_run_logger().info("%s: CURRENT -> %s (was %s), %d videos, %d embedded", job.index, summary["version"],
                          summary["previous"], summary["videos"], summary["embedded"])  # fmt: skip
    return {k: summary[k] for k in RESULT_KEYS}


@flow(name=FLOW_NAME, log_prints=True)
def reindex_flow(
    index: str = "outputs/serving",
    model: str = "models:/tempstop-unified@champion",
    videos: str | None = None,
    tracking_uri: str | None = None,
    workdir: str | None = None,
    params: str | None = None,
) -> dict:
    """Embed the collection of ``index`` (or ``videos``) with ``model`` and make it current.

    Args:
        index: the versioned index root a service serves (``tempstop serve --index``).
        model: checkpoint or registry URI; the deployment passes the promoted version.
        videos: the folder to index (default: the one the current version covers).
        tracking_uri: MLflow URI for ``models:/`` (default: ``$MLFLOW_TRACKING_URI``, else the
            params' ``tracking.uri``).
        workdir: project directory to run in (default: the current one).
        params: params file (default: params.yaml in the project directory, if any).

    Returns the new version, the previous one and what was embedded.
    """
    if workdir:
        os.chdir(workdir)
    return reindex_task(Reindex(index=index, checkpoint=model, videos=videos, progress=False), params, tracking_uri)


def main(argv: list[str] | None = None) -> int:
    """``python -m tempstop_pipelines.flows.reindex``: run the flow once."""
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.reindex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--index", default="outputs/serving")
    parser.add_argument("--model", default="models:/tempstop-unified@champion")
    parser.add_argument("--videos", default=None)
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(reindex_flow(index=args.index, model=args.model, videos=args.videos, params=args.params), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
