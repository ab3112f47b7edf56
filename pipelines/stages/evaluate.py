"""Embed every video and query of a split and report text-to-video and video-to-text
retrieval (R@1, R@5, R@10, MdR, MnR). Sentence-level datasets use every caption as a query;
DiDeMo and ActivityNet join a video's captions into one paragraph query.

--data is a dataset root (DIR/<split>/), a split folder, or a frame store; a split that was
never extracted is extracted into the frame cache first (after the annotation checks of
`tempstop validate`), with the frame count and size the checkpoint's model was trained with.
--checkpoint may be a models:/NAME@alias URI of the MLflow registry.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from tempstop.config import ProjectConfig
from tempstop.evaluation import evaluate_store
from tempstop.inference import model_from_checkpoint, pick_device
from tempstop.inference.sources import resolve_checkpoint
from tempstop.utils import atomic_write_json
from tempstop_pipelines.options import ModelJob, add_params_arg, add_tags_arg
from tempstop_pipelines.stages.splits import DATA_ERRORS, open_split
from tempstop_pipelines.tracking.runs import TrackingError, check_tracking, open_tracker, tracking_uri


@dataclass(frozen=True)
class Evaluate(ModelJob):
    """``tempstop evaluate``: the model, the data and where the JSON goes."""

    data: str
    split: str | None = None
    json: str | None = None
    dsl: bool | None = None
    datatype: str | None = None
    batch_size: int | None = None
    cache: str | None = None
    track: bool = True


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop evaluate``."""
    ModelJob.add_arguments(p)
    p.add_argument("--data", required=True, help="dataset root, split folder or frame store")
    p.add_argument("--split", default=None, help="split under a dataset root (default: evaluate.split)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the evaluation JSON here")
    p.add_argument("--dsl", action="store_true", default=None, help="also report dual-softmax re-ranked numbers")
    p.add_argument("--datatype", default=None, help="the dataset type (default: the frame store's, else the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: evaluate.batch_size")
    p.add_argument("--cache", default=None, help="frame cache for raw splits (default: data.frames_cache)")
    p.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow")
    add_params_arg(p)
    add_tags_arg(p)
    p.set_defaults(job=Evaluate, run=run)


def print_table(result: dict, out=None) -> None:
    """Metrics as a small fixed-width table."""
    out = out or sys.stdout
    keys = ("R1", "R5", "R10", "MdR", "MnR")
    print(f"{result['split']}: {result['num_videos']} videos, {result['num_queries']} queries "
          f"({result['datatype']}, {result['level']} level), {result['seconds']:.1f} s", file=out)  # fmt: skip
    print(f"{'':10}" + "".join(f"{k:>8}" for k in ("R@1", "R@5", "R@10", "MdR", "MnR")), file=out)
    for name in ("t2v", "v2t", "t2v_dsl", "v2t_dsl"):
        if name in result:
            print(f"{name:10}" + "".join(f"{result[name][k]:8.1f}" for k in keys), file=out)


def run(params: ProjectConfig, job: Evaluate, tags: dict[str, str] | None = None) -> int:
    """Evaluate; exit 2 with one line when the checkpoint, the data or the tracking store
    cannot be used."""
    track = job.track and params.tracking.enabled
    try:
        if track:
            check_tracking(params)
        result = evaluate(params, job)
    except (*DATA_ERRORS, TrackingError) as exc:
        print(f"tempstop evaluate: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    if job.json:  # a DVC output: the same model and data give the same file (no timing in it)
        atomic_write_json(job.json, {k: v for k, v in result.items() if k != "seconds"})
    if track:
        _log(params, job, result, tags or {})
    return 0


def evaluate(params: ProjectConfig, job: Evaluate) -> dict:
    """The evaluation JSON of ``job.checkpoint`` on ``job.data`` (``params``: what params.yaml
    says; the model, its frame count and size come from the checkpoint)."""
    device = pick_device(job.device)
    # The model and the config it was trained with; not its identity (no hash of the file needed).
    model, trained, _ = model_from_checkpoint(resolve_checkpoint(job.checkpoint, tracking_uri(params)), device)
    store, split_name = open_split(params, trained, model, job.data, job.split, job.cache, job.datatype,
                                   job.progress)  # fmt: skip
    metrics = evaluate_store(
        model, store, device, job.datatype or store.datatype or trained.data.datatype,
        job.batch_size or params.evaluate.batch_size,
        dsl=params.evaluate.dsl if job.dsl is None else job.dsl, dsl_temperature=params.evaluate.dsl_temperature,
        progress=job.progress, gallery=params.evaluate.gallery_queries,
    )  # fmt: skip
    return {"split": split_name, "checkpoint": str(job.checkpoint), "store": str(store.path), **metrics}


def _log(params: ProjectConfig, job: Evaluate, result: dict, tags: dict[str, str]) -> None:
    split_name = result["split"]
    with open_tracker(params, job="evaluate", run_name=f"evaluate-{split_name}", tags=tags) as tracker:
        flat = {f"{split_name}_{d}_{k}": v for d in ("t2v", "v2t", "t2v_dsl", "v2t_dsl") if d in result
                for k, v in result[d].items()}  # fmt: skip
        tracker.log_metrics(flat)
        if job.json:
            tracker.log_artifact(job.json)
