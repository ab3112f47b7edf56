"""Embed a video collection once, so that `tempstop search` and `tempstop serve` can query it.

    tempstop index --checkpoint outputs/stop/best_model.pth --videos ~/my_videos --out outputs/index
    tempstop index --checkpoint models:/tempstop-unified@champion --data data/demo --split test --out outputs/index

--videos indexes every video under a folder (mp4, mkv, webm, avi, mov, m4v; no annotations
needed), incrementally: a re-run embeds only new or changed files and drops deleted ones.
--data indexes a dataset split (its frame store, extracted first if needed; what the
pipeline's `index` stage does with the test split). Either way the index is a folder (layout:
tempstop.collection.manifest). Shards, batches, decoding workers and the vector index come
from the `index` section of the params; the options below override them for one run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from tempstop.collection import CollectionError, IndexSettings, index_store, index_videos
from tempstop.config import IndexConfig, ProjectConfig
from tempstop.inference import open_model, pick_device
from tempstop_pipelines.options import ModelJob, add_params_arg
from tempstop_pipelines.stages.splits import DATA_ERRORS, open_split
from tempstop_pipelines.tracking.runs import tracking_uri

#: Job fields that override the key of the `index` section of the same name for one run
#: (a job without one of them leaves that key as the params say).
INDEX_OPTIONS = ("shard_size", "batch_size", "workers", "timeout_s", "vector_index", "keep_versions")


@dataclass(frozen=True, kw_only=True)
class IndexingJob(ModelJob):
    """A job that embeds a collection (``tempstop index``, ``reindex``), with overrides of the
    ``index`` section for this run (None: the params' value)."""

    workers: int | None = None
    timeout_s: float | None = None
    batch_size: int | None = None

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        ModelJob.add_arguments(p)
        p.add_argument("--workers", type=int, default=None, help="decoding processes (default: index.workers)")
        p.add_argument("--timeout", dest="timeout_s", type=float, default=None,
                       help="seconds a video may take to decode (default: index.timeout_s)")  # fmt: skip
        p.add_argument("--batch-size", type=int, default=None, help="videos per model batch (default: index.batch_size)")


@dataclass(frozen=True)
class Index(IndexingJob):
    """``tempstop index``: the videos (a folder) or data (a split) and the index folder."""

    out: str
    videos: str | None = None
    data: str | None = None
    split: str | None = None
    cache: str | None = None
    shard_size: int | None = None
    vector_index: str | None = None


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop index``."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="a folder of videos, searched recursively")
    source.add_argument("--data", help="frame store, split folder or dataset root (with --split)")
    p.add_argument("--split", default=None, help="split under a dataset root (default: evaluate.split)")
    p.add_argument("--out", required=True, help="the index folder (created or updated)")
    IndexingJob.add_arguments(p)
    p.add_argument("--shard-size", type=int, default=None, help="videos per shard file (default: index.shard_size)")
    p.add_argument("--vector-index", default=None, help="vector index type (default: index.vector_index)")
    p.add_argument("--cache", default=None, help="frame cache for raw splits (default: data.frames_cache)")
    add_params_arg(p)
    p.set_defaults(job=Index, run=run)


def index_config(cfg: ProjectConfig, job: Any, source: str = "command line") -> IndexConfig:
    """The ``index`` section with the overrides ``job`` gives (its :data:`INDEX_OPTIONS`
    attributes that are not None), validated as params are."""
    section = cfg.index
    given = {f"index.{key}": getattr(job, key) for key in INDEX_OPTIONS if getattr(job, key, None) is not None}
    return cfg.with_overrides(given, source).index if given else section


def run(cfg: ProjectConfig, job: Index, tags: dict[str, str] | None = None) -> int:
    """Build or update the index; exit 2 with one line when the checkpoint or data cannot be used."""
    device = pick_device(job.device)
    opts = index_config(cfg, job)
    try:
        loaded = open_model(job.checkpoint, device, tracking_uri(cfg))
        if job.videos:
            settings = IndexSettings.for_model(loaded.model, opts)
            summary = index_videos(loaded.model, job.videos, job.out, settings, loaded.identity, device, job.progress)
        else:  # the store holds what gets embedded (open_split checked it fits the model)
            store, _ = open_split(cfg, loaded.config, loaded.model, job.data, job.split, job.cache, None, job.progress)
            settings = IndexSettings(store.frames, store.size, opts)
            summary = index_store(loaded.model, store, job.out, settings, loaded.identity, device, job.progress)
    except (*DATA_ERRORS, CollectionError, ValueError) as exc:
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
