"""Index the videos with --checkpoint (e.g. models:/tempstop-unified@champion after a
promotion) into INDEX/<version> (v<N> for a registry version, sha-<hash> for a file), then point
INDEX/CURRENT at it atomically: a running `tempstop serve --index INDEX` swaps to it without
dropping a query. The videos default to the folder the current version covers; the versions
kept, the decoding workers and batches come from the `index` section of the params.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from tempstop.collection import CollectionError, IndexSettings
from tempstop.collection.versions import reindex
from tempstop.config import ProjectConfig
from tempstop.inference import CheckpointError, open_model, pick_device
from tempstop_pipelines.options import add_params_arg
from tempstop_pipelines.stages.index import IndexingJob, index_config
from tempstop_pipelines.tracking.runs import tracking_uri


@dataclass(frozen=True)
class Reindex(IndexingJob):
    """``tempstop reindex``: the versioned index root, the videos, the versions to keep."""

    index: str
    videos: str | None = None
    keep_versions: int | None = None


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop reindex``."""
    p.add_argument("--index", required=True, help="the versioned index root (holds CURRENT)")
    p.add_argument("--videos", default=None, help="folder to index (default: the current version's)")
    p.add_argument("--keep", dest="keep_versions", type=int, default=None,
                   help="versions kept, the live one included (default: index.keep_versions)")  # fmt: skip
    IndexingJob.add_arguments(p)
    add_params_arg(p)
    p.set_defaults(job=Reindex, run=run)


def reindex_collection(cfg: ProjectConfig, job: Reindex) -> dict:
    """Embed the collection with the job's model into a new version and make it current;
    returns :func:`tempstop.collection.versions.reindex`'s summary."""
    device = pick_device(job.device)
    opts = index_config(cfg, job)
    loaded = open_model(job.checkpoint, device, tracking_uri(cfg))
    settings = IndexSettings.for_model(loaded.model, opts)
    return reindex(job.index, loaded.model, loaded.identity, settings, job.videos, device, job.progress)


def run(cfg: ProjectConfig, job: Reindex, tags: dict[str, str] | None = None) -> int:
    """A new index version for the model, then CURRENT; exit 2 with one line on bad input."""
    try:
        summary = reindex_collection(cfg, job)
    except (CheckpointError, CollectionError, FileNotFoundError, ValueError) as exc:
        print(f"tempstop reindex: {exc}", file=sys.stderr)
        return 2
    removed = f"; removed {', '.join(summary['removed_versions'])}" if summary["removed_versions"] else ""
    print(
        f"{job.index}: CURRENT -> {summary['version']} (was {summary['previous']}); {summary['videos']} videos "
        f"({summary['embedded']} embedded, {summary['reused']} unchanged, {len(summary['failed'])} failed) in "
        f"{summary['seconds']:.1f} s{removed}"
    )
    return 0
