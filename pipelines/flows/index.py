"""The ``tempstop-index`` Prefect flow: index a video folder shard by shard, locally or on Ray.

    python -m tempstop_pipelines.flows.index --videos ~/videos --out outputs/index/big \\
        --checkpoint models:/tempstop-unified@champion [--ray-address ray://head:10001]

The driver scans the folder and plans the shards (:mod:`tempstop.collection.shards`; a shard
already embedded by an earlier run is skipped). Shard size, batch size, decoding workers and
their timeout come from the ``index`` section of the params (``params``, default params.yaml
where there is one); the flow's parameters of the same names override them. Each shard is two tasks: ``decode-shard``
(CPU: frames, metadata, thumbnails, in worker processes with a timeout per video) and
``embed-shard`` (the model; one GPU where the cluster has them). Tasks take and return paths
and small dicts, never arrays: every node must see the videos and the index folder (a shared
file system). Without ``ray_address`` the same tasks run on local threads; with it, on the
Ray cluster through prefect-ray's ``RayTaskRunner`` (``pip install 'tempstop[ray]'``). A task
whose worker dies is retried. The driver merges the shards' parts in order and builds the
vector index, exactly as ``tempstop index --videos`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tempstop.collection import IndexSettings, build, shards
from tempstop.collection import manifest as mf
from tempstop.inference import model_from_checkpoint, open_model, pick_device
from tempstop_pipelines.options import project_config
from tempstop_pipelines.stages.index import Index, index_config

FLOW_NAME = "tempstop-index"


@functools.lru_cache(maxsize=2)
def _model(checkpoint: str, device: str):
    """The model, loaded once per worker process (a Ray worker runs many embed tasks)."""
    return model_from_checkpoint(checkpoint, device)[0]


@task(name="decode-shard", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def decode_task(root: str, shard: dict, settings: dict, out: str, workers: int, timeout_s: float) -> str:
    """Decode one shard's videos; returns the path of its ``decoded.json``."""
    job = shards.ShardJob(shard["id"], tuple(shard["videos"]))
    return str(shards.decode_shard(root, job, settings, out, workers=workers, timeout_s=timeout_s))


@task(name="embed-shard", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def embed_task(checkpoint: str, out: str, shard_id: str, batch_size: int, decoded: str) -> dict:
    """Embed one decoded shard (``decoded``: only orders this task after its decode)."""
    device = str(pick_device())
    return shards.embed_shard(_model(checkpoint, device), out, shard_id, batch_size, device)


@flow(name=FLOW_NAME, log_prints=True)
def index_flow(
    videos: str, out: str, checkpoint: str, shard_size: int | None = None, batch_size: int | None = None,
    workers: int | None = None, timeout_s: float | None = None, tracking_uri: str | None = None,
    gpus_per_embed: float = 0.0, params: str | None = None,
) -> dict:  # fmt: skip
    """Index ``videos`` into ``out`` with ``checkpoint``; returns the summary of ``tempstop index``."""
    logger, t0 = get_run_logger(), time.perf_counter()
    cfg = project_config(params)
    job = Index(checkpoint=checkpoint, out=out, videos=videos, shard_size=shard_size, batch_size=batch_size,
                workers=workers, timeout_s=timeout_s)  # fmt: skip
    opts = index_config(cfg, job, "flow parameters")
    loaded = open_model(checkpoint, "cpu", tracking_uri)
    settings = IndexSettings.for_model(loaded.model, opts)
    root, target = Path(videos).resolve(), Path(out)
    manifest, todo, known, found = build.plan_update(root, target, settings, loaded.identity, loaded.model.embed_dim)
    jobs = shards.plan_shards(todo, opts.shard_size, loaded.identity["sha256"], settings.recorded())
    logger.info("%d videos, %d to embed in %d shard(s)", len(found), len(todo), len(jobs))
    parts = []
    for shard_job in jobs:  # futures: the task runner runs them in parallel
        shard = {"id": shard_job.id, "videos": list(shard_job.videos)}
        decoded = decode_task.submit(str(root), shard, settings.recorded(), str(target), opts.workers, opts.timeout_s)
        with _resources(gpus_per_embed):
            parts.append(embed_task.submit(str(loaded.path), str(target), shard_job.id, opts.batch_size, decoded))
    for part in parts:  # in plan order: the same manifest whatever finished first
        shards.merge_part(manifest, part.result())
        mf.write_manifest(target, manifest)
    summary = build.counted(build.finish(target, manifest, settings), found, todo, known, t0)
    logger.info("indexed %d videos into %s in %.1f s", summary["videos"], target, summary["seconds"])
    return summary


def _resources(gpus: float):
    """Ray resources of the embed tasks (no-op off Ray)."""
    if not gpus:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options  # optional: the `ray` extra

    return remote_options(num_gpus=gpus)


def run(ray_address: str | None = None, **kw) -> dict:
    """:func:`index_flow` on local threads, or on the Ray cluster at ``ray_address``."""
    if not ray_address:
        return index_flow(**kw)
    from prefect_ray import RayTaskRunner  # optional: the `ray` extra

    return index_flow.with_options(task_runner=RayTaskRunner(address=ray_address))(**kw)


def main(argv: list[str] | None = None) -> int:
    """``python -m tempstop_pipelines.flows.index``: run the flow once."""
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--videos", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--ray-address", default=None, help="Ray cluster (ray://host:10001 or host:6379)")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml if present)")
    parser.add_argument("--shard-size", type=int, default=None, help="videos per shard (default: index.shard_size)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes per decode task (default: index.workers)")  # fmt: skip
    parser.add_argument("--gpus-per-embed", type=float, default=0.0)
    args = parser.parse_args(argv)
    summary = run(args.ray_address, videos=args.videos, out=args.out, checkpoint=args.checkpoint, params=args.params,
                  shard_size=args.shard_size, workers=args.workers, gpus_per_embed=args.gpus_per_embed)  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "vector_index"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
