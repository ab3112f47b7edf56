"""The ``tempstop-extract`` Prefect flow: extract a dataset's splits shard by shard, locally or on Ray.

    python -m tempstop_pipelines.flows.extract --data data/demo --out outputs/frames \\
        [--split train] [--ray-address ray://head:10001] [--shard-size 1000] [--workers 1]

The driver plans each split (:func:`tempstop.data.extract.plan_split`: what earlier runs
finished is skipped, the rest cut into shards of ``extract.shard_size`` videos), runs one
``extract-shard`` task per shard (:func:`~tempstop.data.extract.extract_shard`: worker
processes with a timeout per video, a journal line per finished video) and writes each split's
index once its shards are done (:func:`~tempstop.data.extract.finish_split`), exactly what
``tempstop extract`` does. Tasks take and return paths and small dicts, never arrays: every
node must see the dataset and the output folder (a shared file system). Without
``ray_address`` the tasks run on local threads; with it, on the Ray cluster through
prefect-ray's ``RayTaskRunner`` (``pip install 'tempstop[ray]'``). A task whose worker dies is
retried, and its retry skips the videos its journal already holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tempstop.data.annotations import find_splits
from tempstop.data.extract import extract_shard, finish_split, plan_split
from tempstop_pipelines.options import project_config

FLOW_NAME = "tempstop-extract"


@task(name="extract-shard", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def shard_task(shard: dict, workers: int, timeout_s: float) -> dict:
    """Extract one shard; returns its result (``id``, ``done``, ``num_valid``, ``failed``)."""
    return extract_shard(shard, workers, timeout_s)


@flow(name=FLOW_NAME, log_prints=True)
def extract_flow(
    data: str, out: str, params: str | None = None, split: str | None = None, shard_size: int | None = None,
    workers: int | None = None,
) -> dict:  # fmt: skip
    """Extract the splits of ``data`` (or only ``split``) into ``out/<split>/`` with the
    ``extract`` and ``model.frames`` settings of ``params`` (default: ./params.yaml if there is
    one, else the defaults); ``shard_size`` and ``workers``
    (decoding processes per task) override ``extract.shard_size`` and ``extract.workers``.
    Returns the summaries of ``tempstop extract`` by split."""
    logger = get_run_logger()
    cfg = project_config(params)
    size = shard_size or cfg.extract.shard_size
    n_workers = cfg.extract.workers if workers is None else workers
    root, target = Path(data), Path(out)
    plans, futures = {}, {}
    for name in [split] if split else find_splits(root):
        plan = plan_split(root / name, target / name, cfg.extract, cfg.model.frames, shard_size=size,
                          datatype=cfg.data.datatype, checks=cfg.validate_)  # fmt: skip
        logger.info("%s: %d videos, %d to extract in %d shard(s)", name, plan.videos,
                    sum(len(s["jobs"]) for s in plan.shards), len(plan.shards))  # fmt: skip
        plans[name] = plan
        futures[name] = [shard_task.submit(s, n_workers, cfg.extract.timeout_s) for s in plan.shards]
    summaries = {}
    for name, plan in plans.items():  # every split's shards run at once; each index when its are done
        summaries[name] = finish_split(plan, [f.result() for f in futures[name]])
        s = summaries[name]
        logger.info("%s: %d extracted, %d already done, %d failed -> %s", name, s["done"], s["skipped"], s["failed"], s["store"])
    return summaries


def run(ray_address: str | None = None, **kw) -> dict:
    """:func:`extract_flow` on local threads, or on the Ray cluster at ``ray_address``."""
    if not ray_address:
        return extract_flow(**kw)
    from prefect_ray import RayTaskRunner  # optional: the `ray` extra

    return extract_flow.with_options(task_runner=RayTaskRunner(address=ray_address))(**kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", required=True, help="dataset root holding split folders")
    parser.add_argument("--out", required=True, help="output root; each split goes to OUT/<split>/")
    parser.add_argument("--params", default=None, help="params file (default: ./params.yaml if present)")
    parser.add_argument("--split", default=None)
    parser.add_argument("--ray-address", default=None, help="Ray cluster (ray://host:10001 or host:6379)")
    parser.add_argument("--shard-size", type=int, default=None, help="videos per task (default: extract.shard_size)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes per task (default: extract.workers)")
    args = parser.parse_args(argv)
    summaries = run(args.ray_address, data=args.data, out=args.out, params=args.params, split=args.split,
                    shard_size=args.shard_size, workers=args.workers)  # fmt: skip
    print(json.dumps({k: {f: v for f, v in s.items() if f != "failures"} for k, s in summaries.items()}, indent=2))
    return 0 if all(s["items"] or not s["videos"] for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
