"""Stage `evaluate`: retrieval metrics of a checkpoint on a split.

``--data`` is a dataset root (``DIR/<split>/``), a split folder, or a frame store; a split
that was never extracted is extracted into the frame cache first (after the annotation checks
of ``tempstop validate``), with the frame count and size the checkpoint's model was trained
with. ``--checkpoint`` may be a ``models:/NAME@alias`` URI of the MLflow registry.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..common import add_params_arg, add_tags_arg, load_params


def register(sub) -> None:
    """Add the ``evaluate`` sub-command."""
    p = sub.add_parser(
        "evaluate",
        help="t2v / v2t R@1, R@5, R@10, MdR, MnR of a checkpoint on a split",
        description="Embed every video and query of a split and report text-to-video and "
        "video-to-text retrieval. Sentence-level datasets use every caption as a query; DiDeMo "
        "and ActivityNet join a video's captions into one paragraph query.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or models:/NAME@alias")
    p.add_argument("--data", required=True, help="dataset root, split folder or frame store")
    p.add_argument("--split", default=None, help="split under a dataset root (default: evaluate.split)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the evaluation JSON here")
    p.add_argument(
        "--dsl", action="store_true", default=None, help="also report dual-softmax re-ranked numbers"
    )
    p.add_argument(
        "--datatype",
        default=None,
        help="override the dataset type (default: the frame store's, else the checkpoint's)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: evaluate.batch_size")
    p.add_argument("--cache", default=None, help="frame cache for raw splits (default: data.frames_cache)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true")
    add_params_arg(p)
    add_tags_arg(p)
    p.set_defaults(func=main)


def resolve_data(data: str | Path, split: str) -> tuple[Path, str]:
    """``(path of a store or split folder, split name)`` for a root / split folder / store."""
    from tempstop.data.store import is_store

    data = Path(data)
    if is_store(data) or (data / "annotations.json").is_file():
        return data, data.name
    candidate = data / split
    if is_store(candidate) or (candidate / "annotations.json").is_file():
        return candidate, split
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such folder")
    raise FileNotFoundError(
        f"{data}: not a frame store, a split folder, or a dataset root with a '{split}' split"
    )


def print_table(result: dict, out=None) -> None:
    """Metrics as a small fixed-width table."""
    out = out or sys.stdout
    keys = ("R1", "R5", "R10", "MdR", "MnR")
    print(
        f"{result['split']}: {result['num_videos']} videos, {result['num_queries']} queries "
        f"({result['datatype']}, {result['level']} level), {result['seconds']:.1f} s",
        file=out,
    )
    print(f"{'':10}" + "".join(f"{k:>8}" for k in ("R@1", "R@5", "R@10", "MdR", "MnR")), file=out)
    for name in ("t2v", "v2t", "t2v_dsl", "v2t_dsl"):
        if name in result:
            print(f"{name:10}" + "".join(f"{result[name][k]:8.1f}" for k in keys), file=out)


def main(args: argparse.Namespace) -> int:
    """Evaluate; exit 2 when the checkpoint or the data cannot be used."""
    import torch

    from tempstop.data.annotations import AnnotationError
    from tempstop.data.extract import ExtractError
    from tempstop.data.store import StoreError
    from tempstop.training.checkpoint import CheckpointError
    from tempstop.utils import atomic_write_json

    from ..tracking import TrackingError, check_tracking

    params = load_params(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    track = not args.no_track and params.tracking.enabled
    try:
        if track:
            check_tracking(params)
        result = _evaluate(args, params, device)
    except (
        CheckpointError,
        StoreError,
        TrackingError,
        AnnotationError,
        ExtractError,
        FileNotFoundError,
    ) as exc:
        print(f"tempstop evaluate: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    if args.json:
        atomic_write_json(args.json, result)
    if track:
        _log(params, args, result)
    return 0


def _evaluate(args: argparse.Namespace, params, device) -> dict:
    """The evaluation JSON of ``--checkpoint`` on ``--data`` (params: what params.yaml says;
    the model, its frame count and size come from the checkpoint)."""
    from tempstop.data.extract import ensure_store
    from tempstop.data.store import FrameStore, StoreError
    from tempstop.training.checkpoint import load_model
    from tempstop.training.evaluation import evaluate_store
    from tempstop.training.setup import model_input

    from ..common import report_failures
    from ..registry import resolve_model_uri

    model, trained, _ = load_model(resolve_model_uri(args.checkpoint, params), device)
    path, split_name = resolve_data(args.data, args.split or params.evaluate.split)
    datatype_hint = args.datatype or trained.data.datatype
    store_path, extracted = ensure_store(
        path, args.cache or params.data.frames_cache, trained.extract, trained.model.frames,
        datatype=datatype_hint, checks=params.validate_, progress=not args.no_progress,
    )  # fmt: skip
    if extracted:
        report_failures(path, extracted["failures"])
    store = FrameStore(store_path)
    store.check_arrays()
    frames, size = model_input(model)
    if size is not None and store.size != size:
        raise StoreError(f"{store.path}: {store.size} px frames, but the model takes {size} px")
    if frames is not None and store.frames != frames:
        raise StoreError(f"{store.path}: {store.frames} frames per video, but the model takes {frames}")
    metrics = evaluate_store(
        model,
        store,
        device,
        args.datatype or store.datatype or trained.data.datatype,
        args.batch_size or params.evaluate.batch_size,
        dsl=params.evaluate.dsl if args.dsl is None else args.dsl,
        dsl_temperature=params.evaluate.dsl_temperature,
        progress=not args.no_progress,
        gallery=params.evaluate.gallery_queries,
    )
    return {"split": split_name, "checkpoint": str(args.checkpoint), "store": str(store.path), **metrics}


def _log(params, args: argparse.Namespace, result: dict) -> None:
    from ..common import run_tags
    from ..tracking import open_tracker

    split_name = result["split"]
    with open_tracker(
        params, job="evaluate", run_name=f"evaluate-{split_name}", tags=run_tags(args)
    ) as tracker:
        flat = {f"{split_name}_{d}_{k}": v for d in ("t2v", "v2t", "t2v_dsl", "v2t_dsl") if d in result
                for k, v in result[d].items()}  # fmt: skip
        tracker.log_metrics(flat)
        if args.json:
            tracker.log_artifact(args.json)
