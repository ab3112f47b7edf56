"""Stage `train`: train the unified model (also behind ``python train_unified_model.py``).

Reads the config (params.yaml, or a JSON/YAML file such as the user's guide
``{"training": {...}}``), applies the command-line overrides, checks that the tracking store
is reachable, trains, and logs every epoch plus the best checkpoint to MLflow. Under torchrun
every process trains (DDP); only rank 0 writes files and talks to MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipelines.common import add_params_arg, load_params

MODES = ["joint", "tempme_only", "stop_only", "sequential"]


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop train`` and ``train_unified_model.py`` (the same)."""
    p.add_argument("--mode", choices=MODES, default=None, help="training mode (overrides training.mode)")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_params_arg(p)


def register(sub) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser(
        "train",
        help="train the unified TempMe-STOP model (joint, tempme_only, stop_only, sequential)",
        description="Train on training.train_data_path, validate every epoch on training.val_data_path "
        "(frame stores, or split folders extracted into training.frames_cache first) and write "
        "checkpoints, best_model.pth (best validation t2v R@1), history.json, config.json and "
        "TensorBoard logs to training.checkpoint_dir. Multi-GPU: torchrun --nproc_per_node N "
        "$(which tempstop) train ...",
    )
    add_train_args(p)
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace):
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
    return cfg.with_overrides(over) if over else cfg


class TrackerCallback:
    """Sends each epoch's metrics to the tracker (x axis: epoch)."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.tracker.log_metrics(
            {k: v for k, v in metrics.items() if k not in ("epoch", "phase")}, step=epoch
        )


def main(args: argparse.Namespace) -> int:
    """Train; exit 2 with a one-line message when a check stops the run (data path, sizes,
    resume file, tracking store, too many non-finite losses)."""
    from pipelines.tracking import TrackingError, check_tracking, open_tracker
    from tempstop.data.store import StoreError
    from tempstop.training.checkpoint import CheckpointError
    from tempstop.training.distributed import cleanup
    from tempstop.training.setup import TrainingError
    from tempstop.training.trainer import UnifiedModelTrainer
    from tempstop.utils import atomic_write_json

    cfg = config_from_args(args)
    main_process = int(os.environ.get("RANK", "0")) == 0
    t = cfg.training
    try:
        if main_process:
            check_tracking(cfg)
        trainer = UnifiedModelTrainer(
            cfg,
            resume=args.resume,
            init_from=args.init_from,
            device=args.device,
            progress=not args.no_progress,
        )
        run_name = f"{t.mode}-seed{t.seed}"
        if not main_process:
            trainer.train()
            return 0
        with open_tracker(cfg, job="train", run_name=run_name) as tracker:
            trainer.callbacks.append(TrackerCallback(tracker))
            summary = trainer.train()
            best = Path(summary["best_checkpoint"])
            history = Path(t.checkpoint_dir) / "history.json"
            if history.is_file():
                tracker.log_artifact(history)
            if best.is_file():
                best_metrics = {
                    k.removeprefix("best_"): v for k, v in summary.items() if k.startswith("best_val_")
                }
                summary["registered_version"] = tracker.register_checkpoint(best, best_metrics)
    except (TrainingError, CheckpointError, StoreError, TrackingError, FileNotFoundError) as exc:
        print(f"tempstop train: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    if args.summary:
        atomic_write_json(args.summary, summary)
    print(
        f"done: {summary['epochs']} epochs, {summary['steps']} steps in {summary['seconds']:.0f} s; best validation "
        f"t2v R@1 {summary['best_metric']:.1f} at epoch {summary['best_epoch']} -> {summary['best_checkpoint']}"
    )
    return 0
