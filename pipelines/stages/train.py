"""Train the unified TempMe-STOP model (also behind ``python train_unified_model.py``).

Trains on training.train_data_path and validates every epoch on training.val_data_path
(default: the data.train_split and data.val_split folders under data.root; frame stores, or
split folders, extracted into data.frames_cache first), writing checkpoints, best_model.pth
(best validation t2v R@1), history.json, config.json and TensorBoard logs to
training.checkpoint_dir. Multi-GPU: torchrun --nproc_per_node N $(which tempstop) train ...

Reads the config (params.yaml, or a JSON/YAML file such as the user's guide
``{"training": {...}}``), applies the command-line overrides and hands the config to
:func:`tempstop_pipelines.training.run.run_training`: raw split folders are extracted once into
``data.frames_cache``, the tracking store is checked before any work, every epoch and the
best checkpoint go to MLflow and TensorBoard. Under torchrun every process trains (DDP);
only rank 0 writes files and talks to MLflow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tempstop.config import TRAINING_MODES, ProjectConfig
from tempstop.data.frame_cache import ensure_store
from tempstop.data.store import is_store
from tempstop.training.distributed import DistInfo, barrier, init_distributed
from tempstop.utils import atomic_write_json
from tempstop_pipelines.options import (
    ProgressJob,
    add_params_arg,
    add_tags_arg,
    load_params,
    report_failures,
    run_tags,
)
from tempstop_pipelines.training.run import error_message, run_training, training_errors


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop train`` and ``train_unified_model.py`` (the same)."""
    p.add_argument(
        "--mode", choices=TRAINING_MODES, default=None, help="training mode (overrides training.mode)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides training.seed)")
    p.add_argument(
        "--resume", default=None, metavar="PATH", help="continue from checkpoint_epoch_N.pth (full state)"
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="initialise the weights from a checkpoint (weights only)",
    )
    p.add_argument("--checkpoint-dir", default=None, help="overrides training.checkpoint_dir")
    p.add_argument("--epochs", type=int, default=None, help="overrides training.num_epochs")
    p.add_argument(
        "--summary", default=None, metavar="FILE", help="also write the run summary (best metrics) as JSON"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ProgressJob.add_arguments(p)
    add_params_arg(p)
    add_tags_arg(p)


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop train``."""
    add_train_args(p)
    p.set_defaults(main=main)


def config_from_args(args: argparse.Namespace) -> ProjectConfig:
    """The config file plus ``--set`` plus the dedicated options (``--mode`` ...)."""
    cfg = load_params(args)
    over = {}
    if args.mode:
        over["training.mode"] = args.mode
    if args.seed is not None:
        over["training.seed"] = args.seed
    if args.checkpoint_dir:
        over["training.checkpoint_dir"] = args.checkpoint_dir
    if args.epochs is not None:
        over["training.num_epochs"] = args.epochs
    return cfg.with_overrides(over, "command line") if over else cfg


def frame_stores(cfg: ProjectConfig, info: DistInfo, progress: bool = True) -> ProjectConfig:
    """``cfg`` with its training and validation data as frame stores: a raw split folder is
    extracted into ``data.frames_cache`` (:func:`tempstop.data.frame_cache.ensure_store`, with
    the annotation checks of ``validate``) by the main process, once; the others wait and
    reuse it. Every video that failed is named on stderr."""

    paths = {"training.train_data_path": cfg.train_data(), "training.val_data_path": cfg.val_data()}
    raw = {k: p for k, p in paths.items() if not is_store(p) and (Path(p) / "annotations.json").is_file()}
    if not raw:
        return cfg
    stores = {}
    for turn in ("main", "others"):  # the main process extracts; then the others find the cache
        if (turn == "main") == info.is_main:
            for key, path in raw.items():
                stores[key], summary = _ensure(cfg, path, progress)
                if summary is not None:
                    report_failures(path, summary["failures"])
        barrier()
    return cfg.with_overrides({k: str(v) for k, v in stores.items()})


def _ensure(cfg: ProjectConfig, path: str, progress: bool):
    return ensure_store(
        path, cfg.data.frames_cache, cfg.extract, cfg.model.frames, datatype=cfg.data.datatype,
        checks=cfg.validate_, progress=progress,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """Train; exit 2 with a one-line message when a check stops the run (data path, sizes,
    resume file, tracking store, too many non-finite losses)."""

    cfg = config_from_args(args)
    try:
        cfg = frame_stores(cfg, init_distributed(args.device), args.progress)
        summary = run_training(
            cfg, resume=args.resume, init_from=args.init_from, tags=run_tags(args), device=args.device,
            progress=args.progress,
        )  # fmt: skip
    except training_errors() as exc:
        print(f"tempstop train: {error_message(exc)}", file=sys.stderr)
        return 2
    if summary is None:  # not the main process of a torchrun launch
        return 0
    if args.summary:
        atomic_write_json(args.summary, summary)
    best = summary["best_checkpoint"]
    result = (
        f"best validation t2v R@1 {summary['best_metric']:.1f} at epoch {summary['best_epoch']} -> {best}"
        if best
        else "no epoch had a finite validation R@1: no best_model.pth"
    )
    print(
        f"done: {summary['epochs']} epochs, {summary['steps']} steps in {summary['seconds']:.0f} s; {result}"
    )
    return 0
