"""What a training run leaves in ``checkpoint_dir`` (main process only).

::

    checkpoint_dir/
      config.json                 the whole configuration of the run
      checkpoint_epoch_{N}.pth    full state (model, optimiser, scheduler, scaler, RNG, sampler,
                                  history): every ``save_every`` epochs and at the end
      best_model.pth              weights + config + metrics of the best validation t2v R@1
      history.json                one row per epoch (docs/ARCHITECTURE.md)
      logs/                       TensorBoard: losses, learning rate per group, gradient norm, R@K

Every file is written atomically (a reader never sees half a file).
"""

from __future__ import annotations

import math
from pathlib import Path

from tempstop.training import checkpoint as ckpt_io
from tempstop.utils import atomic_write_json

BEST = "best_model.pth"


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}.pth"


def write_epoch(
    out_dir: Path, state: dict, full_state: dict | None, history: list[dict], improved: bool
) -> None:
    """Checkpoint (``full_state`` given), best model (``improved``) and history of one epoch.

    ``state`` is the weights-only part (config, model, epoch, metrics ...); ``full_state``
    adds the optimiser, scheduler, scaler, RNG and sampler states for resuming.
    """
    if full_state is not None:
        ckpt_io.save_checkpoint(out_dir / checkpoint_name(state["epoch"]), {**state, **full_state})
    if improved:
        ckpt_io.save_checkpoint(out_dir / BEST, state)
    atomic_write_json(out_dir / "history.json", history)


def tensorboard(out_dir: Path, step: int):
    """A SummaryWriter on ``out_dir/logs``; on resume, events after ``step`` are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out_dir / "logs"), purge_step=step or None)


def log_epoch(writer, row: dict, step: int) -> None:
    """An epoch's numbers under ``val/``, ``lr/`` and ``epoch/`` (x axis: optimiser steps)."""
    if writer is None:
        return
    for key, value in row.items():
        if isinstance(value, (int, float)) and key not in ("epoch", "step") and math.isfinite(value):
            group = "lr" if key.startswith("lr_") else "val" if key.startswith("val_") else "epoch"
            writer.add_scalar(f"{group}/{key}", value, step)
    writer.flush()


def summary_line(row: dict, num_epochs: int, improved: bool) -> str:
    """The one line printed per epoch."""
    return (
        f"epoch {row['epoch']}/{num_epochs} [{row['phase']}] "
        f"train {row['train_loss']:.4f} (tempme {row['tempme_loss']:.4f}, stop {row['stop_loss']:.4f}) "
        f"val {row['val_loss']:.4f} | t2v R@1 {row['val_t2v_R1']:.1f} R@5 {row['val_t2v_R5']:.1f} "
        f"R@10 {row['val_t2v_R10']:.1f} MdR {row['val_t2v_MdR']:.1f} | v2t R@1 {row['val_v2t_R1']:.1f} | "
        f"lr {row['lr_tempme']:.2e}/{row['lr_stop']:.2e}/{row['lr_backbone']:.2e} "
        f"grad {row['grad_norm']:.3f} | {row['epoch_seconds']:.1f}s" + ("  *best*" if improved else "")
    )


def run_summary(
    out_dir: Path, history: list[dict], epoch: int, step: int, best_epoch: int, best_metric: float
) -> dict:
    """What ``train()`` returns: run length, best epoch and its validation metrics, files."""
    best = next((r for r in history if r["epoch"] == best_epoch), {})
    last = out_dir / checkpoint_name(epoch)
    return {
        "epochs": epoch,
        "steps": step,
        "best_epoch": best_epoch,
        "best_metric": best_metric,
        **{f"best_{k}": v for k, v in best.items() if k.startswith("val_")},
        "best_checkpoint": str(out_dir / BEST),
        "last_checkpoint": str(last) if last.is_file() else None,
    }
