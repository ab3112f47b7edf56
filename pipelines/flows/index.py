"""The ``tempstop-index`` Prefect flow: index a video folder shard by shard, locally or on Ray.

    python -m tempstop_pipelines.flows.index --videos ~/videos --out outputs/index/big \\
        --checkpoint models:/tempstop-unified@champion [--ray-address ray://head:10001]

The driver scans the folder and plans the shards (:mod:`tempstop.collection.shards`; a shard
already embedded by an earlier run is skipped). Each shard is two tasks: ``decode-shard``
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
import functools
import json
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

FLOW_NAME = "tempstop-index"


@functools.lru_cache(maxsize=2)
def _model(checkpoint: str, device: str):
    """The model, loaded once per worker process (a Ray worker runs many embed tasks)."""
    from tempstop.training.checkpoint import load_model

    return load_model(checkpoint, device)[0]


@task(name="decode-shard", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def decode_task(root: str, shard: dict, settings: dict, out: str, workers: int, timeout_s: float) -> str:
    """Decode one shard's videos; returns the path of its ``decoded.json``."""
    from tempstop.collection.shards import ShardJob, decode_shard

    job = ShardJob(shard["id"], tuple(shard["videos"]))
    return str(decode_shard(root, job, settings, out, workers=workers, timeout_s=timeout_s))


@task(name="embed-shard", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def embed_task(checkpoint: str, out: str, shard_id: str, batch_size: int, decoded: str) -> dict:
    """Embed one decoded shard (``decoded``: only orders this task after its decode)."""
    import torch

    from tempstop.collection.shards import embed_shard

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return embed_shard(_model(checkpoint, device), out, shard_id, batch_size, device)


@flow(name=FLOW_NAME, log_prints=True)
def index_flow(
    videos: str, out: str, checkpoint: str, shard_size: int = 1000, batch_size: int = 32, workers: int = 1,
    timeout_s: float = 120.0, tracking_uri: str | None = None, gpus_per_embed: float = 0.0,
) -> dict:  # fmt: skip
    """Index ``videos`` into ``out`` with ``checkpoint``; returns the summary of ``tempstop index``."""
    from tempstop.collection import IndexSettings, build, shards
    from tempstop.collection import manifest as mf
    from tempstop.loading import model_identity
    from tempstop.training.checkpoint import load_model

    logger, t0 = get_run_logger(), time.perf_counter()
    path, info = model_identity(checkpoint, tracking_uri)
    model, cfg, _ = load_model(path)
    settings = IndexSettings(frames=cfg.model.frames, size=getattr(model, "image_size", cfg.extract.size),
                             shard_size=shard_size, batch_size=batch_size, workers=workers, timeout_s=timeout_s)  # fmt: skip
    root, target = Path(videos).resolve(), Path(out)
    manifest, todo, known, found = build.plan_update(root, target, settings, info, model.embed_dim)
    jobs = shards.plan_shards(todo, shard_size, info["sha256"], settings.recorded())
    logger.info("%d videos, %d to embed in %d shard(s)", len(found), len(todo), len(jobs))
    parts = []
    for job in jobs:  # futures: the task runner runs them in parallel
        shard = {"id": job.id, "videos": list(job.videos)}
        decoded = decode_task.submit(str(root), shard, settings.recorded(), str(target), workers, timeout_s)
        with _resources(gpus_per_embed):
            parts.append(embed_task.submit(str(path), str(target), job.id, batch_size, decoded))
    for part in parts:  # in plan order: the same manifest whatever finished first
        shards.merge_part(manifest, part.result())
        mf.write_manifest(target, manifest)
    summary = build.counted(build.finish(target, manifest, settings), found, todo, known, t0)
    logger.info("indexed %d videos into %s in %.1f s", summary["videos"], target, summary["seconds"])
    return summary


def _resources(gpus: float):
    """Ray resources of the embed tasks (no-op off Ray)."""
    import contextlib

    if not gpus:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_gpus=gpus)


def run(ray_address: str | None = None, **kw) -> dict:
    """:func:`index_flow` on local threads, or on the Ray cluster at ``ray_address``."""
    if not ray_address:
        return index_flow(**kw)
    from prefect_ray import RayTaskRunner

    return index_flow.with_options(task_runner=RayTaskRunner(address=ray_address))(**kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--videos", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--ray-address", default=None, help="Ray cluster (ray://host:10001 or host:6379)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes per decode task")
    parser.add_argument("--gpus-per-embed", type=float, default=0.0)
    args = parser.parse_args(argv)
    summary = run(args.ray_address, videos=args.videos, out=args.out, checkpoint=args.checkpoint,
                  shard_size=args.shard_size, workers=args.workers, gpus_per_embed=args.gpus_per_embed)  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "vector_index"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
